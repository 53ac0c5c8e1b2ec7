#!/usr/bin/env bash
# The fuzz campaign: builds the libFuzzer targets in fuzz/fuzz_targets/ on
# stable Rust (coverage instrumentation through -Cpasses=sancov-module, no
# sanitizer, overflow checks and debug assertions on) and runs each for
# RUNS inputs (default 1,000,000), one after another, from a corpus seeded
# with valid files from our writers (tools/examples/fuzz_seeds.rs) and the
# committed numpy / h5py / Python files in fuzz/seeds/.
#
# Usage: fuzz/campaign.sh [TARGET...]      (default: every target)
#   RUNS=1000000  inputs per target       JOBS=2  build jobs
#   Crashes land in fuzz/artifacts/<target>/; the per-target libFuzzer log
#   (with its final stats: execs, cov, ft, peak RSS) in fuzz/logs/<target>.log.
# A crasher becomes a regression test by copying it into
# fuzz/regressions/<target>/ (tools/tests/fuzz.rs replays every file there).
set -euo pipefail
cd "$(dirname "$0")"
RUNS=${RUNS:-1000000}
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(event_json job_spec npy_header safetensors_header pickle cifar_binary cifar_python keras_h5 tar_members)
triple=$(rustc -vV | sed -n 's/^host: //p')

export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
# --target keeps the instrumentation off build scripts and proc macros.
cargo build --release --bins -j "${JOBS:-2}" --target "$triple"
(cd .. && RUSTFLAGS= cargo run --quiet --locked -p lml-tools --example fuzz_seeds -- fuzz/corpus "${TARGETS[@]}")

# The .h5 harness writes each input to a scratch file: keep that in memory.
[ -d /dev/shm ] && export TMPDIR=${TMPDIR:-/dev/shm}
mkdir -p logs
printf '%-20s %10s %8s %8s %8s %s\n' target inputs seconds cov ft crashes
for t in "${TARGETS[@]}"; do
    # Whole archives and .h5 files are larger than the other inputs.
    case $t in tar_members|keras_h5|cifar_python) max_len=65536 ;; *) max_len=8192 ;; esac
    mkdir -p "corpus/$t" "artifacts/$t"
    dirs=("corpus/$t")
    [ -d "seeds/$t" ] && dirs+=("seeds/$t")
    [ -d "regressions/$t" ] && dirs+=("regressions/$t")
    start=$(date +%s)
    status=0
    "target/$triple/release/$t" -runs="$RUNS" -seed=1 -max_len=$max_len -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="artifacts/$t/" "${dirs[@]}" >"logs/$t.log" 2>&1 || status=$?
    secs=$(( $(date +%s) - start ))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "logs/$t.log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "logs/$t.log" | tail -1 | cut -d' ' -f2)
    ft=$(grep -o 'ft: [0-9]*' "logs/$t.log" | tail -1 | cut -d' ' -f2)
    crashes=$(find "artifacts/$t" -type f | wc -l)
    printf '%-20s %10s %8s %8s %8s %s\n' "$t" "${execs:-?}" "$secs" "${cov:-?}" "${ft:-?}" "$crashes"
    [ "$status" -eq 0 ] || echo "  $t stopped with status $status: see fuzz/logs/$t.log and fuzz/artifacts/$t/"
done
