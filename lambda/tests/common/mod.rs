//! Shared fixtures: learnable data written as `.npy` under a storage root,
//! and running a job to its end on the local runtime.
#![allow(dead_code)]

use std::path::Path;

use lml_kernel::npy::write_npy_atomic;
use lml_lambda::compute::Params;
use lml_lambda::event::{Event, JobId, StartEvent};
use lml_lambda::layout::JobDir;
use lml_lambda::services::Clock;
use lml_lambda::{LocalConfig, LocalRuntime};
use ndarray::{Array1, Array2};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `n` examples of `dim` features in `classes` Gaussian clusters (unit
/// noise around class means of norm ~3): learnable, not trivially.
pub fn blobs(n: usize, dim: usize, classes: usize, seed: u64) -> (Array2<f32>, Array1<u32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let means =
        Array2::from_shape_fn((classes, dim), |_| rng.random_range(-1.0f32..1.0) * 3.0 / (dim as f32).sqrt() * 1.7);
    let mut x = Array2::<f32>::zeros((n, dim));
    let mut y = Array1::<u32>::zeros(n);
    for i in 0..n {
        let c = rng.random_range(0..classes);
        y[i] = c as u32;
        for j in 0..dim {
            // Sum of uniforms: roughly Gaussian, unit-ish variance.
            let noise: f32 = (0..3).map(|_| rng.random_range(-1.0f32..1.0)).sum::<f32>() / 3.0f32.sqrt() * 0.6;
            x[[i, j]] = means[[c, j]] + noise;
        }
    }
    (x, y)
}

/// Writes `features/{name}_features.npy` and `features/{name}_y.npy` under `root`.
pub fn write_features(root: &Path, name: &str, x: &Array2<f32>, y: &Array1<u32>) {
    std::fs::create_dir_all(root.join("features")).unwrap();
    write_npy_atomic(root.join(format!("features/{name}_features.npy")), x).unwrap();
    write_npy_atomic(root.join(format!("features/{name}_y.npy")), y).unwrap();
}

/// The spec JSON for cached features `name` under `features/`, merged with `extra`.
pub fn spec(name: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut s = serde_json::json!({
        "data": {"features": format!("features/{name}_features.npy"), "labels": format!("features/{name}_y.npy")},
    });
    for (k, v) in extra.as_object().unwrap() {
        s[k] = v.clone();
    }
    s
}

/// The start event of `job` with the spec JSON `spec` (parsed and validated as an event's would be).
pub fn start_event(job: &str, workers: usize, spec: serde_json::Value) -> Event {
    let spec = lml_lambda::JobSpec::from_json(&spec).unwrap();
    Event::Start(StartEvent { job: JobId::new(job).unwrap(), workers, spec })
}

/// The parameters of the job's last published round, and that round.
pub fn final_params(root: &Path, job: &str) -> (u64, Params) {
    let jd = JobDir::new(root, &JobId::new(job).unwrap());
    let k = *jd.param_rounds().unwrap().last().unwrap();
    (k, Params::read(&jd.params(k)).unwrap().0)
}

/// Starts `job` and waits for the runtime to go idle; panics on dead letters.
pub async fn run_job<C: Clock, P: lml_lambda::progress::ProgressStore>(
    rt: &LocalRuntime<C, P>,
    job: &str,
    workers: usize,
    spec: serde_json::Value,
) {
    rt.invoke(&start_event(job, workers, spec)).await.unwrap();
    rt.idle().await;
    let dead = rt.dead_letters();
    assert!(dead.is_empty(), "dead letters: {dead:?}");
}

/// A temp storage root, on tmpfs where there is one: the protocol fsyncs
/// every publication, which is right on EFS but makes hundreds of trials
/// slow on a VM disk while testing nothing more.
pub fn temp_root() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().unwrap()
}

pub fn local_config() -> LocalConfig {
    LocalConfig { memory_mb: 1769, ..LocalConfig::default() }
}

pub type Manual = lml_lambda::services::Services<
    std::sync::Arc<lml_lambda::services::RecordingInvoker>,
    lml_lambda::progress::LocalProgress,
    lml_lambda::services::SystemClock,
>;

/// Services over `root` whose invocations are recorded, not run.
pub fn manual(root: &Path) -> (Manual, std::sync::Arc<lml_lambda::services::RecordingInvoker>) {
    let rec = std::sync::Arc::new(lml_lambda::services::RecordingInvoker::default());
    let svc = lml_lambda::services::Services::new(
        root,
        rec.clone(),
        lml_lambda::progress::LocalProgress::new(root),
        lml_lambda::services::SystemClock,
        1,
    );
    (svc, rec)
}

/// Every file under `root` with its bytes: to show that nothing changed.
pub fn snapshot(root: &Path) -> std::collections::BTreeMap<std::path::PathBuf, Vec<u8>> {
    fn walk(dir: &Path, out: &mut std::collections::BTreeMap<std::path::PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.insert(p.clone(), Vec::new());
                walk(&p, out);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(root, &mut out);
    out
}

/// `n` random 32×32 images in 3 classes (`images.npy`, `labels.npy`) and
/// random VGG19 weights to pool5 (`vgg/`) under `root`; returns the images and labels.
pub fn write_images(root: &Path, n: usize, seed: u64) -> (ndarray::Array4<u8>, Array1<u32>) {
    use lml_kernel::weights::WeightStore;
    use lml_kernel::{Cut, Preset};
    let w = lml_kernel::vgg::random_weights(3, Cut::Pool5);
    WeightStore::write(
        root.join("vgg"),
        lml_kernel::vgg::MODEL,
        Preset::Torchvision,
        w.iter().map(|(n, a)| (n.clone(), a.view())),
    )
    .unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let images = ndarray::Array4::<u8>::from_shape_fn((n, 32, 32, 3), |_| rng.random());
    let labels = Array1::<u32>::from_shape_fn(n, |i| (i % 3) as u32);
    write_npy_atomic(root.join("images.npy"), &images).unwrap();
    write_npy_atomic(root.join("labels.npy"), &labels).unwrap();
    (images, labels)
}

/// Every path under `root` named as a temp (`.NAME.tmp-…`, see
/// `layout::temp_beside`): what no publication, failed or not, may leave.
pub fn temp_files(root: &Path) -> Vec<std::path::PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.filter_map(|e| e.ok()) {
            let p = e.path();
            if e.file_name().to_string_lossy().contains(".tmp-") {
                out.push(p.clone());
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, &mut out);
    out
}
