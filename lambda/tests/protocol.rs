//! The protocol computes what single-process SGD computes.

mod common;

use common::*;
use lml_kernel::approx::{assert_close, Approximation};
use lml_kernel::optim::{LrSchedule, Sgd};
use lml_kernel::standardize::{FeatureStats, Standardized};
use lml_kernel::trainer::{FeatureSource, InMemoryFeatures, Trainer};
use lml_lambda::event::JobId;
use lml_lambda::progress::{JobStatus, LocalProgress, ProgressStore};
use lml_lambda::services::{SystemClock, TickClock};
use lml_lambda::LocalRuntime;
use serde_json::json;

/// The job's sizes and seed; every optimiser setting is the default
/// (standardised features, the kernel's SGD, a cosine schedule).
fn hyper(batch: usize, epochs: u64) -> serde_json::Value {
    json!({"batch": batch, "micro_batch": 3, "epochs": epochs, "seed": 7})
}

/// N-worker gradient-sum rounds are large-batch SGD steps: same examples per
/// step (the round's), same update, the same standardisation and learning
/// rate schedule; only the summation order differs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gradient_sum_equals_large_batch_sgd() {
    let (x, y) = blobs(61, 12, 3, 1);
    for workers in [1, 2, 3, 5] {
        let dir = temp_root();
        write_features(dir.path(), "train", &x, &y);
        let rt = LocalRuntime::start(dir.path(), SystemClock, local_config());
        run_job(&rt, "gs", workers, spec("train", hyper(4, 2))).await;

        let data = InMemoryFeatures { features: x.clone(), labels: y.to_vec() };
        let steps = 2 * 61usize.div_ceil(workers * 4) as u64;
        let mut t = Trainer::new(3, 12, Sgd::default(), workers * 4, 7)
            .unwrap()
            .with_schedule(LrSchedule::default(), steps)
            .with_stats(FeatureStats::compute_all(&data).unwrap())
            .unwrap();
        for e in 0..2 {
            t.epoch(&data, e, |_, _| {}).unwrap();
        }
        let (k, p) = final_params(dir.path(), "gs");
        assert_eq!(k, steps, "{workers} workers: rounds");
        let what = format!("{workers} workers: weight");
        assert_close(&what, p.head.weight.view(), t.head.weight.mapv(f64::from).view(), Approximation::Close);
        assert_close("bias", p.head.bias.view(), t.head.bias.mapv(f64::from).view(), Approximation::Close);
        assert_close(
            "momentum",
            p.velocity.weight.view(),
            t.velocity.weight.mapv(f64::from).view(),
            Approximation::Close,
        );

        let progress = LocalProgress::new(dir.path()).load(&JobId::new("gs").unwrap()).await.unwrap();
        assert_eq!(progress.rounds.len() as u64, steps);
        assert_eq!(progress.job.as_ref().unwrap().status, JobStatus::Finished);
        for (k, done) in &progress.done {
            assert_eq!(done.len(), workers, "round {k}: finished workers");
        }
        let seen: usize = progress.rounds.values().filter(|r| r.epoch == 0).map(|r| r.train.examples).sum();
        assert_eq!(seen, 61, "an epoch covers every example once");
    }
}

/// Model averaging with one worker is plain SGD with the worker's batch;
/// with several it is the example-weighted mean of independent local runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_averaging_matches_a_direct_computation() {
    let (x, y) = blobs(40, 6, 3, 2);
    let data = InMemoryFeatures { features: x.clone(), labels: y.to_vec() };
    for workers in [1usize, 3] {
        let dir = temp_root();
        write_features(dir.path(), "train", &x, &y);
        let rt = LocalRuntime::start(dir.path(), SystemClock, local_config());
        let mut h = hyper(3, 1);
        h["sync"] = json!("model-average");
        h["local_steps"] = json!(2);
        h["micro_batch"] = json!(1);
        run_job(&rt, "ma", workers, spec("train", h)).await;
        let jd = lml_lambda::layout::JobDir::new(dir.path(), &JobId::new("ma").unwrap());
        let cfg = jd.read_config().unwrap();
        let stats = FeatureStats::compute_all(&data).unwrap();
        let standardized = Standardized::new(&data, &stats).unwrap();

        // Direct: every round, each worker runs its steps from the shared
        // start on standardised features with the round's learning rate; the
        // next start is the example-weighted mean (f64) of the local models
        // and momentum buffers.
        let mut global = lml_lambda::compute::Params::init(3, 6);
        for k in 0..cfg.total_rounds {
            let sgd = Sgd::default().at_step(LrSchedule::Cosine, k, cfg.total_rounds);
            let mut sum: Vec<ndarray::ArrayD<f64>> = Vec::new();
            let mut count = 0usize;
            for w in 0..workers {
                let slice = cfg.worker_slice(k, w);
                let mut local = global.clone();
                for batch in slice.chunks(3) {
                    let (bx, by) = standardized.batch(batch).unwrap();
                    let g = local.head.gradient(bx.view(), &by).unwrap();
                    local.head.apply(&g, &sgd, &mut local.velocity).unwrap();
                }
                let parts = [
                    local.head.weight.view().into_dyn(),
                    local.head.bias.view().into_dyn(),
                    local.velocity.weight.view().into_dyn(),
                    local.velocity.bias.view().into_dyn(),
                ];
                let weighted: Vec<_> = parts.iter().map(|t| t.mapv(|v| f64::from(v) * slice.len() as f64)).collect();
                if sum.is_empty() {
                    sum = weighted;
                } else {
                    sum.iter_mut().zip(weighted).for_each(|(s, w)| *s += &w);
                }
                count += slice.len();
            }
            let mean = |i: usize| sum[i].mapv(|v| (v / count as f64) as f32);
            global.head.weight = mean(0).into_dimensionality().unwrap();
            global.head.bias = mean(1).into_dimensionality().unwrap();
            global.velocity.weight = mean(2).into_dimensionality().unwrap();
            global.velocity.bias = mean(3).into_dimensionality().unwrap();
        }
        let (k, p) = final_params(dir.path(), "ma");
        assert_eq!(k, cfg.total_rounds);
        let f = |a: &ndarray::Array2<f32>| a.mapv(f64::from);
        let what = format!("{workers} workers: weight");
        assert_close(&what, p.head.weight.view(), f(&global.head.weight).view(), Approximation::Close);
        assert_close("momentum", p.velocity.weight.view(), f(&global.velocity.weight).view(), Approximation::Close);
    }
}

/// A job on generated learnable data reaches a stated held-out accuracy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converges_on_learnable_data() {
    let dir = temp_root();
    let (x, y) = blobs(1200, 32, 5, 3);
    write_features(
        dir.path(),
        "train",
        &x.slice(ndarray::s![..1000, ..]).to_owned(),
        &y.slice(ndarray::s![..1000]).to_owned(),
    );
    write_features(
        dir.path(),
        "test",
        &x.slice(ndarray::s![1000.., ..]).to_owned(),
        &y.slice(ndarray::s![1000..]).to_owned(),
    );
    let rt = LocalRuntime::start(dir.path(), SystemClock, local_config());
    let mut s = spec("train", json!({"batch": 25, "micro_batch": 25, "epochs": 5}));
    s["eval"] = json!({"features": "features/test_features.npy", "labels": "features/test_y.npy"});
    run_job(&rt, "conv", 4, s).await;
    let p = LocalProgress::new(dir.path()).load(&JobId::new("conv").unwrap()).await.unwrap();
    let job = p.job.unwrap();
    let eval = job.eval.expect("evaluated at the end");
    assert_eq!(eval.examples, 200);
    assert!(eval.accuracy >= 0.9, "held-out accuracy {} after 5 epochs", eval.accuracy);
    let evals = p.rounds.values().filter(|r| r.eval.is_some()).count();
    assert_eq!(evals, 5, "evaluated at every epoch end");
    let first = p.rounds.values().next().unwrap().train.loss;
    assert!(job.eval.unwrap().loss < first / 2.0, "loss fell from {first}");
}

/// A short time limit makes workers continue themselves; the result is the
/// same bits as without continuations, and the records count them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuations_change_nothing() {
    let (x, y) = blobs(48, 8, 3, 4);
    let mut results = Vec::new();
    for limit in [None, Some(40u64)] {
        let dir = temp_root();
        write_features(dir.path(), "train", &x, &y);
        let mut cfg = local_config();
        cfg.enforce_time_limit = false;
        let mut h = hyper(12, 2);
        h["micro_batch"] = json!(2);
        if let Some(l) = limit {
            // Virtual clock: every reading is 10 ms later; 40 ms budget with
            // 10 ms safety leaves room for about one micro-batch per invocation.
            cfg.time_limit_ms = l;
            h["time_limit_ms"] = json!(l);
            h["safety_ms"] = json!(10);
        }
        let rt = LocalRuntime::start(dir.path(), TickClock::new(1_000_000, 10), cfg);
        run_job(&rt, "cont", 2, spec("train", h)).await;
        let p = LocalProgress::new(dir.path()).load(&JobId::new("cont").unwrap()).await.unwrap();
        let continuations: u64 = p.workers.values().map(|w| w.continuations).sum();
        if limit.is_some() {
            assert!(continuations >= 8, "only {continuations} continuations");
        } else {
            assert_eq!(continuations, 0);
        }
        results.push(final_params(dir.path(), "cont"));
    }
    assert_eq!(results[0], results[1], "continuations changed the result");
}

/// The continuation saves of a one-round job say how far each invocation
/// got: their cursors rise, stay inside the slice, are numbered 1, 2, … and
/// are as many as the worker record's continuations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_saves_record_each_invocations_progress() {
    let (x, y) = blobs(24, 8, 3, 5);
    let dir = temp_root();
    write_features(dir.path(), "train", &x, &y);
    let mut cfg = local_config();
    cfg.enforce_time_limit = false;
    cfg.time_limit_ms = 40;
    // One round of 12 micro-batches of 2; a 40 ms budget on a clock that
    // advances 10 ms a reading leaves room for a few micro-batches an invocation.
    let h = json!({"batch": 24, "micro_batch": 2, "epochs": 1, "time_limit_ms": 40, "safety_ms": 10});
    let rt = LocalRuntime::start(dir.path(), TickClock::new(1_000_000, 10), cfg);
    run_job(&rt, "saves", 1, spec("train", h)).await;
    let job = JobId::new("saves").unwrap();
    let p = LocalProgress::new(dir.path()).load(&job).await.unwrap();
    let continuations = p.workers[&(0, 0)].continuations;
    let jd = lml_lambda::layout::JobDir::new(dir.path(), &job);
    let saves = lml_lambda::compute::continuation_saves(&jd, 0, 0).unwrap();
    assert!(continuations >= 2, "only {continuations} continuations");
    assert_eq!(saves.len() as u64, continuations);
    for (i, s) in saves.iter().enumerate() {
        assert_eq!(s.seq, i as u64 + 1);
        assert!(s.cursor >= 1 && s.cursor < 12, "save {i}: cursor {}", s.cursor);
        assert_eq!(s.count, 2 * s.cursor, "save {i}: examples so far");
    }
    assert!(saves.windows(2).all(|w| w[0].cursor < w[1].cursor), "{saves:?}");
    assert!(lml_lambda::compute::continuation_saves(&jd, 0, 1).unwrap().is_empty());
}

/// Workers that run images through the frozen VGG19 at every step (the
/// seed's way) train the same head as workers reading cached features.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_through_vgg19_match_cached_features() {
    use lml_kernel::{Cut, Vgg19};
    let dir = temp_root();
    let root = dir.path();
    let (images, labels) = write_images(root, 12, 5);
    let vgg = Vgg19::open(root.join("vgg"), 32, Cut::Pool5).unwrap();
    let features = vgg.features(images.view()).unwrap();
    write_features(root, "cached", &features, &labels);

    let rt = LocalRuntime::start(root, SystemClock, local_config());
    let mut h = hyper(3, 1);
    h["data"] = json!({"images": "images.npy", "labels": "labels.npy", "weights": "vgg", "input_size": 32,
                       "cut": "pool5", "forward": "every-step"});
    run_job(&rt, "images", 2, h).await;
    run_job(&rt, "cached", 2, spec("cached", hyper(3, 1))).await;
    let (ka, a) = final_params(root, "images");
    let (kb, b) = final_params(root, "cached");
    assert_eq!((ka, a.head.weight.dim()), (kb, (3, 512)));
    assert_close("weight", a.head.weight.view(), b.head.weight.mapv(f64::from).view(), Approximation::Close);
}

/// The held-out split has a class the training split lacks: the head has a
/// row for it (classes = largest label of both + 1, or the class list's
/// length), so evaluation and `resume` work, and the names travel with the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_out_class_the_training_split_lacks_is_a_class_of_the_head() {
    use lml_lambda::services::Invocation;
    let (x, y) = blobs(240, 8, 9, 11);
    let (train, test): (Vec<usize>, Vec<usize>) = (0..240).partition(|&i| i < 180 && y[i] != 8);
    assert!(test.iter().any(|&i| y[i] == 8) && train.iter().all(|&i| y[i] < 8));
    let pick = |idx: &[usize]| (x.select(ndarray::Axis(0), idx), y.select(ndarray::Axis(0), idx));
    for class_list in [None, Some(10usize)] {
        let dir = temp_root();
        let (tx, ty) = pick(&train);
        let (ex, ey) = pick(&test);
        write_features(dir.path(), "train", &tx, &ty);
        write_features(dir.path(), "test", &ex, &ey);
        if let Some(n) = class_list {
            let names: String = (0..n).map(|c| format!("class-{c}\n")).collect();
            std::fs::write(dir.path().join("features/classes.txt"), names).unwrap();
        }
        let mut s = spec("train", json!({"batch": 16, "epochs": 2}));
        s["eval"] = json!({"features": "features/test_features.npy", "labels": "features/test_y.npy"});

        // Round 0's workers run, then every invocation dies before the combine.
        let (svc, rec) = manual(dir.path());
        let start = json!({"start": true, "workers": 2, "job": "j", "spec": s});
        lml_lambda::handle(&svc, &start, &Invocation::default()).await.unwrap();
        for e in rec.events() {
            lml_lambda::handle(&svc, &e.to_json(), &Invocation::default()).await.unwrap();
        }
        let jd = lml_lambda::layout::JobDir::new(dir.path(), &JobId::new("j").unwrap());
        let cfg = jd.read_config().unwrap();
        assert_eq!(cfg.classes, class_list.unwrap_or(9), "class list {class_list:?}");
        assert_eq!(cfg.class_names.len(), class_list.unwrap_or(0));

        // Resumed on a runtime, it runs to the end, evaluating at each epoch.
        let rt = LocalRuntime::start(dir.path(), SystemClock, local_config());
        rt.invoke_payload(lml_lambda::Event::Resume { job: JobId::new("j").unwrap() }.to_json()).unwrap();
        rt.idle().await;
        assert!(rt.dead_letters().is_empty(), "{:?}", rt.dead_letters());
        let p = LocalProgress::new(dir.path()).load(&JobId::new("j").unwrap()).await.unwrap();
        let job = p.job.unwrap();
        assert_eq!(job.status, JobStatus::Finished);
        assert_eq!(job.classes, cfg.classes);
        assert_eq!(job.class_names.first().map(String::as_str), class_list.map(|_| "class-0"));
        let eval = job.eval.expect("evaluated");
        assert_eq!(eval.examples, test.len());
        assert_eq!(p.rounds.values().filter(|r| r.eval.is_some()).count(), 2, "one evaluation per epoch");
    }
}

/// The failure mode: raw features at ×100 with the old defaults
/// (lr 0.003, 4 × 32, no weight decay, constant rate) diverge. The job ends
/// as failed after the first diverged round with a reason that says what to
/// change; the defaults train the same data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diverging_job_fails_with_a_reason_that_says_what_to_change() {
    // All-positive like fc7 (a ReLU after a shared offset), ×100.
    let (x, y) = blobs(400, 64, 10, 12);
    let x = x.mapv(|v| (v + 1.0).max(0.0) * 100.0);
    let dir = temp_root();
    write_features(dir.path(), "train", &x, &y);
    let rt = LocalRuntime::start(dir.path(), SystemClock, local_config());
    let old = json!({"batch": 32, "epochs": 3, "lr": 0.003, "weight_decay": 0.0, "schedule": "constant",
                     "standardize": false});
    run_job(&rt, "old", 4, spec("train", old)).await;
    let p = LocalProgress::new(dir.path()).load(&JobId::new("old").unwrap()).await.unwrap();
    let job = p.job.unwrap();
    assert_eq!(job.status, JobStatus::Failed);
    let reason = job.reason.unwrap();
    assert!(reason.contains("diverged") && reason.contains("--no-standardize") && reason.contains("--lr"), "{reason}");
    let failed_at = job.rounds_done.unwrap();
    assert!(failed_at < job.total_rounds, "ended at round {failed_at} of {}", job.total_rounds);
    assert!(reason.contains(&format!("at round {}", failed_at - 1)), "{reason}");
    assert_eq!(p.rounds.len() as u64, failed_at, "no round after the diverged one");
    let jd = lml_lambda::layout::JobDir::new(dir.path(), &JobId::new("old").unwrap());
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(jd.final_json()).unwrap()).unwrap();
    assert_eq!(summary["status"], "failed");
    let out = rt.call(&lml_lambda::Event::Resume { job: JobId::new("old").unwrap() }.to_json()).await.unwrap();
    assert!(matches!(out, lml_lambda::Outcome::Skipped(_)), "{out:?}");

    run_job(&rt, "new", 4, spec("train", json!({"batch": 32, "epochs": 3}))).await;
    let p = LocalProgress::new(dir.path()).load(&JobId::new("new").unwrap()).await.unwrap();
    let job = p.job.unwrap();
    assert_eq!(job.status, JobStatus::Finished, "{:?}", job.reason);
    let last = p.rounds.values().last().unwrap().train;
    assert!(last.loss < 1.0, "the defaults train the same data: last loss {}", last.loss);
}
