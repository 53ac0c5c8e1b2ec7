"""An `lml export` file as torchvision would run it, re-implemented in numpy
(no torch here): read with Python's `safetensors` package, checked against
the state dict of `torchvision.models.vgg19(num_classes=C)` (every key and
shape, as `load_state_dict(strict=True)` checks them), then the forward of
torchvision's VGG19 in eval mode in float64:

    features: [conv3x3(pad 1) + ReLU]* and MaxPool2d(2) as in configuration "E"
    avgpool:  AdaptiveAvgPool2d((7, 7))  (PyTorch's windows: floor(i*H/7) .. ceil((i+1)*H/7))
    flatten, classifier: Linear + ReLU (+ Dropout, the identity in eval), twice, then Linear

The input is preprocessed as the metadata's preset says (torchvision: x/255,
then (x - mean)/std per RGB channel; caffe: BGR, minus the ImageNet means).

Usage: torchvision_reference.py MODEL.safetensors IMAGES.npy
  IMAGES.npy: uint8 [N, S, S, 3] RGB at the model's input size S.
Prints one JSON object: {"metadata": {...}, "logits": [[...], ...]}.
"""
import json
import os
import sys

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

CFG_E = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]


def expected_state_dict(classes):
    """Keys and shapes of torchvision.models.vgg19(num_classes=classes).state_dict()."""
    shapes, i, cin = {}, 0, 3
    for v in CFG_E:
        if v == "M":
            i += 1
            continue
        shapes[f"features.{i}.weight"] = (v, cin, 3, 3)
        shapes[f"features.{i}.bias"] = (v,)
        cin, i = v, i + 2  # conv, ReLU
    for idx, (o, n) in {0: (4096, 512 * 7 * 7), 3: (4096, 4096), 6: (classes, 4096)}.items():
        shapes[f"classifier.{idx}.weight"] = (o, n)
        shapes[f"classifier.{idx}.bias"] = (o,)
    return shapes


def conv3x3_relu(x, w, b):
    n, c, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))  # [N, C, H, W, 3, 3]
    cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(n * h * wd, c * 9)
    y = cols @ w.reshape(w.shape[0], -1).T.astype(np.float64) + b
    return np.maximum(y.reshape(n, h, wd, -1).transpose(0, 3, 1, 2), 0.0)


def maxpool2(x):
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def adaptive_avgpool(x, out):
    n, c, h, w = x.shape
    y = np.zeros((n, c, out, out))
    for i in range(out):
        y0, y1 = (i * h) // out, -((-(i + 1) * h) // out)
        for j in range(out):
            x0, x1 = (j * w) // out, -((-(j + 1) * w) // out)
            y[:, :, i, j] = x[:, :, y0:y1, x0:x1].mean(axis=(2, 3))
    return y


def linear(x, w, b):
    # W in row blocks, widened to float64 a block at a time (fc6 is 411 MB as float32).
    out = np.empty((x.shape[0], w.shape[0]))
    for r in range(0, w.shape[0], 512):
        out[:, r : r + 512] = x @ w[r : r + 512].astype(np.float64).T
    return out + b


def preprocess(images, preset):
    x = images.astype(np.float64)
    if preset == "torchvision":
        x = (x / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    elif preset == "caffe":
        x = x[..., ::-1] - np.array([103.939, 116.779, 123.68])
    else:
        raise SystemExit(f"unknown preset {preset!r}")
    return x.transpose(0, 3, 1, 2)


def main(path, images_path):
    with safe_open(path, framework="numpy") as f:
        meta = dict(f.metadata())
    t = load_file(path)
    classes = json.loads(meta["class_names"])
    want = expected_state_dict(len(classes))
    got = {k: tuple(v.shape) for k, v in t.items()}
    if got != want:
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])
        raise SystemExit(f"not torchvision's vgg19 state dict: missing {missing}, unexpected {extra}, shapes {wrong}")
    if any(v.dtype != np.float32 for v in t.values()):
        raise SystemExit("a tensor is not float32")
    images = np.load(images_path)
    size = int(meta["input_size"])
    if images.shape[1:] != (size, size, 3):
        raise SystemExit(f"images {images.shape}, expected [N, {size}, {size}, 3]")
    x = preprocess(images, meta["preset"])
    i = 0
    for v in CFG_E:
        if v == "M":
            x, i = maxpool2(x), i + 1
        else:
            x, i = conv3x3_relu(x, t[f"features.{i}.weight"], t[f"features.{i}.bias"]), i + 2
    x = adaptive_avgpool(x, 7).reshape(x.shape[0], -1)
    x = np.maximum(linear(x, t["classifier.0.weight"], t["classifier.0.bias"]), 0.0)
    x = np.maximum(linear(x, t["classifier.3.weight"], t["classifier.3.bias"]), 0.0)
    logits = linear(x, t["classifier.6.weight"], t["classifier.6.bias"])
    print(json.dumps({"metadata": meta, "logits": logits.tolist()}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
