"""The reference `lml train`'s defaults are held to: scikit-learn's
multinomial logistic regression (lbfgs) on standardised features
(StandardScaler), the best held-out accuracy over C in {0.001, 0.01, 0.1, 1}.

Usage: logistic_reference.py DIR...  (each DIR holds train_features.npy,
train_y.npy, test_features.npy, test_y.npy). Prints one JSON object per DIR:
{"dir": DIR, "best": accuracy, "by_c": {C: accuracy}}.
"""
import json
import os
import sys

# One thread: the tests run in parallel on a small machine, where BLAS
# threads only contend.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

for d in sys.argv[1:]:
    load = lambda name: np.load(os.path.join(d, name))  # noqa: E731
    xtr, ytr = load("train_features.npy").astype(np.float64), load("train_y.npy")
    xte, yte = load("test_features.npy").astype(np.float64), load("test_y.npy")
    scaler = StandardScaler().fit(xtr)
    xtr, xte = scaler.transform(xtr), scaler.transform(xte)
    by_c = {}
    for c in (0.001, 0.01, 0.1, 1.0):
        model = LogisticRegression(C=c, max_iter=1000).fit(xtr, ytr)
        by_c[str(c)] = float(model.score(xte, yte))
    print(json.dumps({"dir": d, "best": max(by_c.values()), "by_c": by_c}), flush=True)
