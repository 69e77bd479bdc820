"""A control for the heads: logistic regression (scikit-learn) on the same stored states.

    python benchmarks/linear_probe.py runs/study/mrpc/emb-e1-seed0 runs/study/rte/emb-e1-seed0

Fits on the train part, reports the carved validation part and dev: the last layer's state, a
middle layer's, and all layers flattened. If the probe and AdapterPooler agree, the stored
features, not the head, set the ceiling.
"""

import sys
import warnings

from sklearn.linear_model import LogisticRegression

from bertvision.store import load_split
from bertvision.tasks.base import carve_validation

warnings.filterwarnings("ignore")  # lbfgs convergence notes on unscaled features
for store in sys.argv[1:]:
    train, dev = load_split(f"{store}/train"), load_split(f"{store}/dev")
    y, y_dev = train.labels.numpy(), dev.labels.numpy()
    tr, va = carve_validation(y, len(y), 0.1, 0)
    X, D = train.hidden.float().numpy(), dev.hidden.float().numpy()
    last, middle = X.shape[1] - 1, X.shape[1] // 2
    views = {"last layer": (X[:, last], D[:, last]), "middle layer": (X[:, middle], D[:, middle]),
             "all layers": (X.reshape(len(X), -1), D.reshape(len(D), -1))}  # fmt: skip
    for name, (feats, dev_feats) in views.items():
        probe = LogisticRegression(max_iter=2000).fit(feats[tr], y[tr])
        print(f"{store} {name:>12}: validation {probe.score(feats[va], y[va]):.3f}  dev {probe.score(dev_feats, y_dev):.3f}")
