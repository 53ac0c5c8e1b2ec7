#!/usr/bin/env python3
"""lml against onnxruntime on the same VGG19 weights, in the same session.

    python3 -m pip install onnxruntime onnx numpy
    cargo build --release -p lml-benches --example vgg_throughput --example cpu_fraction
    python3 benches/ort/compare.py [--reps 7] [--quick]

Builds the VGG19 graph (3x3 conv + ReLU, 2x2 max-pool, and for the fc7 cut
flatten + fc6 + ReLU + fc7 + ReLU, exactly torchvision's layers at 224, where
its adaptive average pool is the identity) from the benchmark weights that
lml's benches generate (target/bench-weights-vgg19), runs it in onnxruntime
with intra-op threads 1 and 2 (sequential execution, all graph
optimisations), and runs lml's `vgg_throughput` example on the same weights
between the onnxruntime runs, alternating, so both see the same machine.
Prints the CPU, the FMA peak probe, and a table of images/s and ratios
(median of --reps timed runs after one warm-up each; lml's figure is the
better of its runs before and after onnxruntime's).
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
WEIGHTS = TARGET / "bench-weights-vgg19"
EXAMPLE = TARGET / "release" / "examples" / "vgg_throughput"

# torchvision's VGG19 "features" indices of the 16 convolutions; max-pools follow 3, 8, 17, 26, 35.
CONVS = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]
POOLS_AFTER = {2, 7, 16, 25, 34}

CASES = [  # (input side, cut, batch, threads)
    (224, "fc7", 8, 2),
    (224, "fc7", 8, 1),
    (32, "pool5", 64, 2),
    (32, "pool5", 64, 1),
]


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def isa_flags():
    try:
        flags = next(l for l in open("/proc/cpuinfo") if l.startswith("flags")).split()
    except (OSError, StopIteration):
        return "?"
    return "avx512f" if "avx512f" in flags else ("avx2" if "avx2" in flags else "baseline")


def build_model(cut):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    x = "input"
    for i in CONVS:
        w = np.load(WEIGHTS / f"features.{i}.weight.npy")
        b = np.load(WEIGHTS / f"features.{i}.bias.npy")
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        x = f"r{i}"
        if i in POOLS_AFTER:
            nodes.append(helper.make_node("MaxPool", [x], [f"p{i}"], kernel_shape=[2, 2], strides=[2, 2]))
            x = f"p{i}"
    nodes.append(helper.make_node("Flatten", [x], ["flat"], axis=1))
    x = "flat"
    if cut == "fc7":
        for j in (0, 3):
            w = np.load(WEIGHTS / f"classifier.{j}.weight.npy")
            b = np.load(WEIGHTS / f"classifier.{j}.bias.npy")
            inits += [numpy_helper.from_array(w, f"fw{j}"), numpy_helper.from_array(b, f"fb{j}")]
            nodes.append(helper.make_node("Gemm", [x, f"fw{j}", f"fb{j}"], [f"g{j}"], transB=1))
            nodes.append(helper.make_node("Relu", [f"g{j}"], [f"fr{j}"]))
            x = f"fr{j}"
    graph = helper.make_graph(
        nodes,
        f"vgg19_{cut}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "S", "S"])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = TARGET / f"ort-vgg19-{cut}.onnx"
    # Weights beside the graph: the fc7 model passes protobuf's 2 GB limit otherwise.
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data")
    return path


def ort_session(path, threads):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def time_ort(sess, x, reps):
    sess.run(None, {"input": x})
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        sess.run(None, {"input": x})
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def time_lml(size, cut, batch, threads, reps):
    out = subprocess.run([str(EXAMPLE), str(size), cut, str(batch), str(threads), str(reps)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="32x32 cases only")
    args = p.parse_args()
    if not EXAMPLE.exists():
        sys.exit(f"{EXAMPLE} missing: cargo build --release -p lml-benches --example vgg_throughput")
    import onnxruntime as ort

    # The example generates the weights on first use.
    time_lml(32, "pool5", 1, 1, 1)
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs, {isa_flags()}); onnxruntime {ort.__version__}")
    cases = [c for c in CASES if not args.quick or c[0] == 32]
    models = {}
    rows = []
    for size, cut, batch, threads in cases:
        if cut not in models:
            models[cut] = build_model(cut)
        sess = ort_session(models[cut], threads)
        rng = np.random.default_rng(1)
        x = rng.standard_normal((batch, 3, size, size), dtype=np.float32)
        lml1 = time_lml(size, cut, batch, threads, args.reps)
        ort_s = time_ort(sess, x, args.reps)
        lml2 = time_lml(size, cut, batch, threads, args.reps)
        lml_s = min(lml1["median_s"], lml2["median_s"])
        rows.append((size, cut, batch, threads, batch / ort_s, batch / lml_s, lml1["microkernel"]))
        print(f"  {size}x{size} -> {cut}, batch {batch}, {threads} threads: onnxruntime {batch / ort_s:.2f} img/s, "
              f"lml {batch / lml_s:.2f} img/s ({lml1['microkernel']}; runs before/after: "
              f"{lml1['median_s']:.3f} / {lml2['median_s']:.3f} s)", flush=True)
    print()
    print("| VGG19, batch | onnxruntime | lml | ratio |")
    print("|---|---|---|---|")
    for size, cut, batch, threads, o, l, k in rows:
        print(f"| {size}x{size} -> {cut}, b{batch}, {threads} thread{'s' if threads > 1 else ''} | {o:.2f} img/s | "
              f"{l:.2f} img/s ({k}) | {l / o:.2f}x |")


if __name__ == "__main__":
    main()
