//! The short, seeded fuzz run CI executes: for every parser of outside input
//! ([`lml_tools::fuzz::TARGETS`]), the harness runs on its seeds (which must
//! be accepted), on every committed crasher in `fuzz/regressions/<target>/`,
//! and on [`INPUTS`] deterministic mutations of the seeds and random byte
//! strings. The long, coverage-guided campaign is `fuzz/campaign.sh`.

use std::path::PathBuf;

use lml_tools::fuzz;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Mutated and random inputs per target.
const INPUTS: usize = 3000;

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files in `fuzz/<kind>/<target>/`, sorted by name.
fn committed(kind: &str, target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = fuzz_dir().join(kind).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    let mut files: Vec<_> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    files.sort();
    files
}

/// Integers at the edges of every width, and the sizes.
const INTERESTING: [u64; 12] =
    [0, 1, 0x7f, 0x80, 0xff, 0xffff, 1 << 26, u32::MAX as u64, 1 << 62, (1 << 62) + 4, i64::MAX as u64, u64::MAX];
/// Bytes that mean something to one of the formats (JSON, pickle, .npy text).
const TOKENS: &[&[u8]] = &[
    b"18446744073709551615",
    b"-1",
    b"4611686018427387908",
    b"1e999",
    b"null",
    b"true",
    b"(",
    b")",
    b"]",
    b"a",
    b"e",
    b".",
    b"\"",
    b",",
    b"{",
    b"}",
    b"'shape': (",
    b"'<f2'",
];

/// One to four random edits of `seed`: bit flips, interesting bytes and
/// integers, deletions, duplications, truncation, splices of another seed,
/// and tokens.
fn mutate(rng: &mut ChaCha8Rng, seed: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut d = seed.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let at = if d.is_empty() { 0 } else { rng.random_range(0..d.len()) };
        match rng.random_range(0..8) {
            0 if !d.is_empty() => d[at] ^= 1 << rng.random_range(0..8),
            1 if !d.is_empty() => d[at] = INTERESTING[rng.random_range(0..5)] as u8,
            2 => {
                let width = [1, 2, 4, 8][rng.random_range(0..4)];
                let v = INTERESTING[rng.random_range(0..INTERESTING.len())].to_le_bytes();
                let end = (at + width).min(d.len());
                d.splice(at..end, v[..width].iter().copied());
            }
            3 if !d.is_empty() => {
                let end = (at + rng.random_range(1..=16)).min(d.len());
                d.drain(at..end);
            }
            4 if !d.is_empty() => {
                let end = (at + rng.random_range(1..=64)).min(d.len());
                let copy = d[at..end].to_vec();
                let to = rng.random_range(0..=d.len());
                d.splice(to..to, copy);
            }
            5 => d.truncate(at),
            6 => {
                let other = &corpus[rng.random_range(0..corpus.len())];
                if !other.is_empty() {
                    let from = rng.random_range(0..other.len());
                    let end = (from + rng.random_range(1..=256)).min(other.len());
                    let to = at.min(d.len());
                    d.splice(to..to, other[from..end].iter().copied());
                }
            }
            _ => {
                let token = TOKENS[rng.random_range(0..TOKENS.len())];
                let to = at.min(d.len());
                d.splice(to..to, token.iter().copied());
            }
        }
    }
    d
}

/// Runs `target` over its seeds, its committed crashers and [`INPUTS`] mutations.
fn campaign(target: &str) {
    let mut corpus = fuzz::seeds(target);
    corpus.extend(committed("seeds", target).into_iter().map(|(_, b)| b));
    assert!(!corpus.is_empty(), "{target}: no seeds");
    for (i, seed) in corpus.iter().enumerate() {
        if let Err(e) = fuzz::run(target, seed) {
            // The .h5 seeds hold the first layers only: conversion reads them,
            // then stops at the first missing one.
            assert!(target == "keras_h5" && e.contains("missing tensor"), "{target}: seed {i} refused: {e}");
        }
    }
    let crashers = committed("regressions", target);
    for (name, input) in &crashers {
        let _ = fuzz::run(target, input); // must not panic
        eprintln!("{target}: regression {name} passes");
    }
    let mut rng = ChaCha8Rng::seed_from_u64(0x5eed ^ target.len() as u64);
    let (mut accepted, mut refused) = (0, 0);
    for i in 0..INPUTS {
        let input = if i % 10 == 9 {
            let n = rng.random_range(0..512);
            (0..n).map(|_| rng.random::<u8>()).collect()
        } else {
            let seed = &corpus[rng.random_range(0..corpus.len())];
            mutate(&mut rng, seed, &corpus)
        };
        match fuzz::run(target, &input) {
            Ok(()) => accepted += 1,
            Err(_) => refused += 1,
        }
    }
    eprintln!(
        "{target}: {} seeds, {} regressions, {INPUTS} mutated/random inputs: {accepted} accepted, {refused} refused",
        corpus.len(),
        crashers.len()
    );
    assert_eq!(accepted + refused, INPUTS);
    assert!(refused > 0, "{target}: no mutation was refused: the harness checks nothing");
    // The .h5 seeds are partial models, which conversion refuses by design.
    assert!(accepted > 0 || target == "keras_h5", "{target}: no mutation was accepted: only error paths ran");
}

#[test]
fn event_json() {
    campaign("event_json");
}

#[test]
fn job_spec() {
    campaign("job_spec");
}

#[test]
fn npy_header() {
    campaign("npy_header");
}

#[test]
fn safetensors_header() {
    campaign("safetensors_header");
}

#[test]
fn pickle() {
    campaign("pickle");
}

#[test]
fn cifar_binary() {
    campaign("cifar_binary");
}

#[test]
fn cifar_python() {
    campaign("cifar_python");
}

#[test]
fn tar_members() {
    campaign("tar_members");
}

#[test]
fn keras_h5() {
    campaign("keras_h5");
}

/// Every harness has a test above and a fuzz target in `fuzz/fuzz_targets/`
/// that calls it (CI does not build the instrumented targets: this is what
/// keeps them pointing at the harnesses it tests).
#[test]
fn every_target_is_covered() {
    let this = include_str!("fuzz.rs");
    for t in fuzz::TARGETS {
        assert!(this.contains(&format!("campaign(\"{t}\")")), "{t} has no test here");
        let target = std::fs::read_to_string(fuzz_dir().join("fuzz_targets").join(format!("{t}.rs")))
            .unwrap_or_else(|e| panic!("{t} has no fuzz target: {e}"));
        assert!(
            target.contains(&format!("lml_tools::fuzz::{t}(data)")),
            "fuzz/fuzz_targets/{t}.rs does not call its harness"
        );
    }
}
