//! `lml train` under faults injected through `LML_FAULTS`: a panic inside
//! every worker ends the command with an error naming it, never a hang.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use lml_kernel::npy::write_npy_atomic;
use ndarray::{Array1, Array2};

fn write_split(dir: &Path, split: &str, n: usize) {
    let y = Array1::from_shape_fn(n, |i| (i % 3) as u32);
    let x = Array2::from_shape_fn((n, 4), |(i, j)| if j == y[i] as usize { 1.0f32 } else { 0.1 * (i % 5) as f32 });
    std::fs::create_dir_all(dir).unwrap();
    write_npy_atomic(dir.join(format!("{split}_features.npy")), &x).unwrap();
    write_npy_atomic(dir.join(format!("{split}_y.npy")), &y).unwrap();
}

/// Runs `lml train` on a small feature cache with `LML_FAULTS=faults`,
/// killing it (and failing) if it has not ended within two minutes.
fn train_with_faults(faults: &str) -> (Output, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let feats = tmp.path().join("feats");
    write_split(&feats, "train", 30);
    write_split(&feats, "test", 9);
    let child = Command::new(env!("CARGO_BIN_EXE_lml"))
        .args(["train", "--root", tmp.path().to_str().unwrap(), "--features", feats.to_str().unwrap()])
        .args(["--job", "p", "--workers", "2", "--epochs", "1", "--batch", "5", "--memory", "1769"])
        .env("LML_FAULTS", faults)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(120);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()).unwrap());
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(out) => return (out.unwrap(), tmp),
            Err(_) if Instant::now() > deadline => {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
                panic!("`lml train` with LML_FAULTS={faults} still running after 120 s: it hangs");
            }
            Err(_) => {}
        }
    }
}

#[test]
fn a_panic_in_every_worker_ends_train_with_an_error_instead_of_a_hang() {
    let (out, _tmp) = train_with_faults("panic=1,at=worker.begin");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("failed for good"), "{stderr}");
    assert!(stderr.contains("invocation panicked: injected panic at worker.begin (round 0)"), "{stderr}");
    assert!(stderr.contains("job p stopped before the end"), "{stderr}");
}

#[test]
fn a_malformed_fault_plan_is_refused() {
    let (out, _tmp) = train_with_faults("panic=2");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("LML_FAULTS: panic: \"2\" is not a probability in 0..=1"), "{stderr}");
}
