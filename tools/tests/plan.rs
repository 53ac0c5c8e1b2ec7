//! `lml plan` as a user runs it: both architectures priced side by side,
//! from the documented defaults, from a calibration file, and after
//! `--calibrate` on this machine.

use std::path::Path;
use std::process::Command;

use lml_lambda::cost::vcpu_share;
use lml_tools::calibrate::{default_speeds, Arch, Calibration, CalibrationFile, Speeds, CALIBRATION_ENV};

fn run(args: &[&str], env: &[(&str, &Path)]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lml"));
    cmd.arg("plan").args(args).env_remove(CALIBRATION_ENV).env_remove("LML_MICROKERNEL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The cells of the table row `label` (after the label), e.g. `["1.234e-1", "5.678e-2"]`.
fn cells(stdout: &str, label: &str) -> Vec<String> {
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with(label) && l.trim_start()[label.len()..].starts_with("  "))
        .unwrap_or_else(|| panic!("no row {label:?} in\n{stdout}"));
    line.trim_start()[label.len()..].split_whitespace().map(str::to_string).collect()
}

fn write_calibration(path: &Path, entries: &[(Arch, f64)]) {
    let mut file = CalibrationFile::default();
    for &(arch, s) in entries {
        file.insert(Calibration {
            arch,
            microkernel: "avx2".into(),
            cpu: "Test CPU".into(),
            threads: 1,
            unix_time: 0,
            speeds: Speeds { image_224_fc7_s: s, image_32_pool5_s: s / 10.0, feature_row_s: s / 1000.0 },
        });
    }
    file.save(path).unwrap();
}

#[test]
fn paper_run_priced_on_both_architectures_from_the_defaults() {
    let tmp = tempfile::tempdir().unwrap();
    let none = tmp.path().join("absent.json");
    let (ok, stdout, stderr) = run(&["--paper", "--calibration", none.to_str().unwrap()], &[]);
    assert!(ok, "{stderr}");
    // 50,000 images / (16 workers × 64) = 49 rounds; 49 × 17 + 1 invocations.
    assert!(stdout.contains("16 workers × 8192 MB (5 compute thread(s) on 4.63 vCPUs)"), "{stdout}");
    assert!(stdout.contains("49 rounds"), "{stdout}");
    assert_eq!(cells(&stdout, "invocations"), ["834", "834"], "{stdout}");
    assert_eq!(cells(&stdout, "architecture"), ["arm64", "x86_64"], "{stdout}");
    assert!(stdout.contains("arm64   ") && stdout.contains("default: a model, Graviton2"), "{stdout}");
    assert!(stdout.contains("default: measured on an AMD EPYC Zen 4 with the AVX2 kernel"), "{stdout}");
    // Seconds per example: the per-vCPU default divided by the fractional share (8192 / 1769).
    let expected: Vec<String> = [Arch::Aarch64, Arch::X86_64]
        .iter()
        .map(|&a| format!("{:.3e}", default_speeds(a).image_224_fc7_s / vcpu_share(8192)))
        .collect();
    assert_eq!(cells(&stdout, "s per example"), expected, "{stdout}");
    assert!(stdout.contains("cheaper per example: "), "{stdout}");
    assert!(stdout.lines().any(|l| l.trim_start().starts_with("total")), "{stdout}");
}

#[test]
fn calibrated_speeds_are_used_and_named_and_the_cheaper_architecture_follows_them() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("c.json");
    // Equal speeds: arm64's lower GB-s price wins (0.0000133334 against 0.0000166667: 20% less compute).
    write_calibration(&path, &[(Arch::X86_64, 0.4), (Arch::Aarch64, 0.4)]);
    let args = ["--data", "images", "--memory", "1769", "--workers", "4", "--examples", "1000"];
    let (ok, stdout, stderr) = run(&args, &[(CALIBRATION_ENV, &path)]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("(1 compute thread(s) on 1.00 vCPUs)"), "{stdout}");
    assert_eq!(stdout.matches("calibrated on Test CPU (avx2 kernel, 1 thread)").count(), 2, "{stdout}");
    assert_eq!(cells(&stdout, "s per example"), ["4.000e-1", "4.000e-1"], "{stdout}");
    assert!(stdout.contains("cheaper per example: arm64"), "{stdout}");
    // arm64 three times slower: x86_64 wins; the flag chooses the file over the variable.
    let flag = tmp.path().join("flag.json");
    write_calibration(&flag, &[(Arch::X86_64, 0.4), (Arch::Aarch64, 1.2)]);
    let mut with_flag = args.to_vec();
    with_flag.extend(["--calibration", flag.to_str().unwrap()]);
    let (ok, stdout, stderr) = run(&with_flag, &[(CALIBRATION_ENV, &path)]);
    assert!(ok, "{stderr}");
    assert_eq!(cells(&stdout, "s per example"), ["1.200e0", "4.000e-1"], "{stdout}");
    assert!(stdout.contains("cheaper per example: x86_64"), "{stdout}");
    // Half a vCPU's memory: twice the seconds per example.
    let mut half = with_flag.clone();
    half[3] = "885";
    let (ok, stdout, _) = run(&half, &[]);
    assert!(ok);
    assert_eq!(cells(&stdout, "s per example")[1], format!("{:.3e}", 0.4 / vcpu_share(885)), "{stdout}");
    // Only x86_64 calibrated: arm64 falls back to its default and says so.
    write_calibration(&flag, &[(Arch::X86_64, 0.4)]);
    let (ok, stdout, _) = run(&with_flag, &[]);
    assert!(ok);
    assert!(stdout.contains("default: a model") && stdout.contains("calibrated on Test CPU"), "{stdout}");
}

#[test]
fn bad_inputs_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("broken.json");
    std::fs::write(&path, "{\"version\": 1}").unwrap();
    let (ok, _, stderr) = run(&["--calibration", path.to_str().unwrap()], &[]);
    assert!(!ok && stderr.contains("broken.json") && stderr.contains("missing field `entries`"), "{stderr}");
    let none = tmp.path().join("none.json");
    let none = none.to_str().unwrap();
    for (args, expected) in [
        (vec!["--data", "pixels"], "expected features, images or pipeline"),
        (vec!["--memory", "100"], "Lambda takes 128 to 10240 MB"),
        (vec!["--memory", "10241"], "Lambda takes 128 to 10240 MB"),
        (vec!["--data", "images", "--input-size", "64"], "speeds for 224 and 32 only"),
        (vec!["--sec-per-example=-1"], "positive number of seconds"),
        (vec!["--sec-per-example", "NaN"], "positive number of seconds"),
        (vec!["--workers", "0"], "must be positive"),
        (vec!["--calibrate", "--calibrate-batch", "0"], "--calibrate-batch must be positive"),
    ] {
        let mut a = args.clone();
        a.extend(["--calibration", none]);
        let (ok, _, stderr) = run(&a, &[]);
        assert!(!ok && stderr.contains(expected), "{args:?}: {stderr}");
    }
}

/// `--calibrate` times this machine (a batch of one image: a few seconds)
/// and stores an entry for its architecture, which `plan` then reads.
#[test]
fn calibrate_measures_this_machine_and_plan_reads_it() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("cache").join("calibration.json");
    let args = ["--calibrate", "--calibrate-batch", "1", "--data", "images", "--calibration", path.to_str().unwrap()];
    // The random weights go to the test's own temporary folder.
    let (ok, stdout, stderr) = run(&args, &[("TMPDIR", tmp.path())]);
    assert!(ok, "{stdout}{stderr}");
    let arch = Arch::current().expect("tests run on x86_64 or aarch64");
    let kernel = lml_kernel::gemm::Microkernel::detect();
    let file = CalibrationFile::load(&path).unwrap();
    let entry = file.get(arch).unwrap_or_else(|| panic!("no {arch} entry in {file:?}"));
    assert_eq!((entry.microkernel.as_str(), entry.threads), (kernel.name(), 1));
    let s = entry.speeds;
    // A 224×224 image does 49× the convolution work of a 32×32 one; the
    // measured ratio is lower (Winograd gains more at 224, fixed costs weigh
    // more at 32) and moves with the machine's load: 9.5 once on a VM whose
    // neighbours took its memory bandwidth. The bound only checks that the
    // speeds are the right ones in the right fields, not how fast they are.
    assert!(s.image_224_fc7_s > 3.0 * s.image_32_pool5_s && s.image_32_pool5_s > s.feature_row_s, "{s:?}");
    assert!(stdout.contains(&format!("calibrated {arch} on")), "{stdout}");
    assert!(stdout.contains(&format!("calibrated on {} ({kernel} kernel, 1 thread)", entry.cpu)), "{stdout}");
    eprintln!("calibrated with {kernel}: {s:?}");
    // Only the weights folder was temporary, and it is gone.
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("cache")], "{left:?}");
}

/// `--data pipeline`: the extraction of training + held-out images on the
/// job's workers, then training on the cache; more workers, shorter
/// extraction at about the same GB-seconds; the seed's run beside it.
#[test]
fn the_pipeline_is_priced_phase_by_phase() {
    let tmp = tempfile::tempdir().unwrap();
    let none = tmp.path().join("absent.json");
    let plan = |workers: &str| {
        let (ok, stdout, stderr) =
            run(&["--data", "pipeline", "--workers", workers, "--calibration", none.to_str().unwrap()], &[]);
        assert!(ok, "{stderr}");
        stdout
    };
    let (p16, p64) = (plan("16"), plan("64"));
    // 60,000 images: max(4 × 16, ⌈60000 / 256⌉) = 235 shards; with 64 workers 256.
    assert!(p16.contains("extract 60000 images at 224×224 to fc7 in 235 shards"), "{p16}");
    assert!(p64.contains("in 256 shards"), "{p64}");
    assert!(p16.contains("the seed's own run (its Table 6): 16 workers, 118 minutes"), "{p16}");
    let num = |s: &str| s.trim_start_matches('$').parse::<f64>().unwrap();
    let minutes = |p: &str| cells(p, "extraction (min)").iter().map(|c| num(c)).collect::<Vec<_>>();
    let gbs = |p: &str| cells(p, "extraction GB-s").iter().map(|c| num(c)).collect::<Vec<_>>();
    for a in 0..2 {
        assert!(minutes(&p64)[a] < minutes(&p16)[a] / 3.0, "{p16}\n{p64}");
        assert!((gbs(&p64)[a] / gbs(&p16)[a] - 1.0).abs() < 0.01, "{p16}\n{p64}");
        let total = num(&cells(&p16, "total")[a]);
        let parts = num(&cells(&p16, "extraction")[a]) + num(&cells(&p16, "training")[a]);
        assert!((total - parts).abs() < 2e-4, "{p16}");
    }
    // Extraction compute: 60,000 images × the per-vCPU default / the share, × 8192 / 1024 GB.
    let x86 = default_speeds(Arch::X86_64).image_224_fc7_s * 60_000.0 / vcpu_share(8192) * 8.0;
    assert!((gbs(&p16)[1] / x86 - 1.0).abs() < 0.02, "{p16}");
    let (ok, _, stderr) = run(&["--data", "pipeline", "--input-size", "64"], &[]);
    assert!(!ok && stderr.contains("--input-size 64"), "{stderr}");
}
