//! The protocol's own costs, for the head on cached features (4096 → 10):
//!
//! * `round_tail/tree/N`: the time from the last worker's result to the
//!   next parameters being published — that worker's `log2 N` merges up the
//!   reduction tree, then reading the one root, the update and publishing
//!   the parameters. This is what stays nearly flat as N grows.
//! * `round_tail/flat_sum/N`: the same with the seed's combine, which reads
//!   and sums all N worker gradients itself (what its paper measured growing
//!   with N).
//! * `combine_role/N`: the whole combine role once the tree is complete
//!   (also the progress record, pruning, ending or invoking the next round).
//! * `job_rounds`: a whole job of gradient-sum rounds (4 workers × batch 64)
//!   on the local runtime, fsyncs included: rounds per second.
//!
//! The round-tail benchmarks run on tmpfs (`/dev/shm`) when there is one, so
//! they measure the protocol's reads, sums and writes rather than this VM's
//! disk flushes; on EFS every file operation adds network latency, which the
//! tree pays `O(log N)` times on the critical path and the flat sum `O(N)`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lml_kernel::npy::write_npy_atomic;
use lml_lambda::compute::{self, Params};
use lml_lambda::event::JobId;
use lml_lambda::layout::{publish_bundle, read_bundle, JobDir};
use lml_lambda::progress::LocalProgress;
use lml_lambda::services::{Invocation, RecordingInvoker, Services, SystemClock};
use lml_lambda::{handle, LocalConfig, LocalRuntime};
use ndarray::{Array1, Array2};
use rand::{Rng, SeedableRng};
use serde_json::json;

const CLASSES: usize = 10;
const DIM: usize = 4096;

fn scratch(name: &str) -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { lml_benches::target_dir() };
    let dir = base.join(format!("lml-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_features(root: &Path, n: usize) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let x = Array2::from_shape_simple_fn((n, DIM), || rng.random_range(0.0f32..1.0));
    let y = Array1::from_shape_fn(n, |i| (i % CLASSES) as u32);
    std::fs::create_dir_all(root.join("f")).unwrap();
    write_npy_atomic(root.join("f/train_features.npy"), &x).unwrap();
    write_npy_atomic(root.join("f/train_y.npy"), &y).unwrap();
}

type Manual = Services<Arc<RecordingInvoker>, LocalProgress, SystemClock>;

/// A started one-round job of `n` workers whose workers 0..n-1 have
/// published and reduced; returns the last worker's leaf, ready to publish.
fn prepared_round(svc: &Manual, rt: &tokio::runtime::Runtime, job: &str, n: usize) -> JobDir {
    let start = json!({"start": true, "workers": n, "job": job, "spec": {
        "data": {"features": "f/train_features.npy", "labels": "f/train_y.npy"},
        "batch": 8, "rounds": 1, "classes": CLASSES}});
    rt.block_on(handle(svc, &start, &Invocation::default())).unwrap();
    let jd = JobDir::new(&svc.root, &JobId::new(job).unwrap());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(n as u64);
    for w in 0..n {
        let gw = Array2::from_shape_simple_fn((CLASSES, DIM), || rng.random_range(-1.0f32..1.0));
        let gb = Array1::from_shape_simple_fn(CLASSES, || rng.random_range(-1.0f32..1.0));
        let meta = json!({"lo": w, "hi": w + 1, "loss_sum": 2.3 * 8.0, "correct": 1, "count": 8,
                          "compute_ms": 10, "continuations": 0});
        let t = [("head.weight", gw.view().into_dyn()), ("head.bias", gb.view().into_dyn())];
        publish_bundle(&jd.sum(0, w, w + 1), &t, &meta).unwrap();
        if w + 1 < n {
            compute::reduce_up(&jd, 0, w, n, &lml_lambda::services::NoFaults).unwrap();
        }
    }
    jd
}

/// `iters` fresh rounds of `n` workers, each prepared untimed, of which
/// `timed` (given the round's folder) is what is measured.
fn timed_rounds(
    iters: u64,
    svc: &Manual,
    rt: &tokio::runtime::Runtime,
    job: &mut u64,
    n: usize,
    mut timed: impl FnMut(&JobDir) -> Duration,
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        *job += 1;
        let jd = prepared_round(svc, rt, &format!("t{job}"), n);
        total += timed(&jd);
        let _ = std::fs::remove_dir_all(&jd.dir);
    }
    total
}

fn round_tail(c: &mut Criterion) {
    let root = scratch("tail");
    write_features(&root, 64 * 8);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let svc: Manual =
        Services::new(&root, Arc::new(RecordingInvoker::default()), LocalProgress::new(&root), SystemClock, 1);
    let mut g = c.benchmark_group("round_tail");
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    let mut job = 0;
    for n in [2usize, 4, 8, 16, 32, 64] {
        g.bench_function(format!("tree/{n}"), |b| {
            b.iter_custom(|iters| {
                timed_rounds(iters, &svc, &rt, &mut job, n, |jd| {
                    let cfg = jd.read_config().unwrap();
                    let t = Instant::now();
                    assert!(compute::reduce_up(jd, 0, n - 1, n, &lml_lambda::services::NoFaults).unwrap());
                    let reduced = compute::read_root(jd, &cfg, 0).unwrap();
                    let (base, _) = Params::read(&jd.params(0)).unwrap();
                    let next = compute::apply(&cfg, 0, &base, &reduced, &jd.dir).unwrap();
                    next.publish(&jd.params(1), &json!({"round": 1})).unwrap();
                    t.elapsed()
                })
            })
        });
        g.bench_function(format!("combine_role/{n}"), |b| {
            b.iter_custom(|iters| {
                timed_rounds(iters, &svc, &rt, &mut job, n, |jd| {
                    assert!(compute::reduce_up(jd, 0, n - 1, n, &lml_lambda::services::NoFaults).unwrap());
                    let combine = json!({"combine": true, "workers": n, "job": jd.job.as_str(), "round": 0});
                    let t = Instant::now();
                    rt.block_on(handle(&svc, &combine, &Invocation::default())).unwrap();
                    t.elapsed()
                })
            })
        });
        g.bench_function(format!("flat_sum/{n}"), |b| {
            b.iter_custom(|iters| {
                timed_rounds(iters, &svc, &rt, &mut job, n, |jd| {
                    let cfg = jd.read_config().unwrap();
                    let t = Instant::now();
                    // The seed's combine: read every worker's gradient, sum, update, publish.
                    let mut sum = read_bundle(&jd.sum(0, 0, 1)).unwrap();
                    for w in 1..n {
                        let b = read_bundle(&jd.sum(0, w, w + 1)).unwrap();
                        for (name, t) in sum.tensors.iter_mut() {
                            *t += &b.tensors[name];
                        }
                    }
                    let (base, _) = Params::read(&jd.params(0)).unwrap();
                    let reduced = compute::Reduced {
                        bundle: sum,
                        stats: lml_kernel::trainer::Evaluation { loss_sum: 0.0, correct: 0, count: 8 * n },
                        compute_ms: 0,
                    };
                    let next = compute::apply(&cfg, 0, &base, &reduced, &jd.dir).unwrap();
                    next.publish(&jd.params(1), &json!({"round": 1})).unwrap();
                    t.elapsed()
                })
            })
        });
    }
    g.finish();
    let _ = std::fs::remove_dir_all(&root);
}

fn job_rounds(c: &mut Criterion) {
    let root = lml_benches::target_dir().join("bench-protocol-job");
    let _ = std::fs::remove_dir_all(&root);
    write_features(&root, 4 * 64 * 5);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut g = c.benchmark_group("job_rounds");
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(5));
    let rounds = 20u64;
    g.throughput(Throughput::Elements(rounds));
    let mut job = 0;
    g.bench_function("gradient_sum_4x64_4096x10", |b| {
        b.iter(|| {
            job += 1;
            rt.block_on(async {
                let local =
                    LocalRuntime::start(&root, SystemClock, LocalConfig { memory_mb: 1769, ..LocalConfig::default() });
                let start = json!({"start": true, "workers": 4, "job": format!("j{job}"), "spec": {
                    "data": {"features": "f/train_features.npy", "labels": "f/train_y.npy"},
                    "batch": 64, "micro_batch": 64, "rounds": rounds, "lr": 0.001}});
                local.invoke_payload(start).unwrap();
                local.idle().await;
                assert!(local.dead_letters().is_empty());
            });
            let _ = std::fs::remove_dir_all(root.join("jobs").join(format!("j{job}")));
        })
    });
    g.finish();
}

criterion_group!(benches, round_tail, job_rounds);
criterion_main!(benches);
