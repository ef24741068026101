"""Datasets for the experiments, all generated or loaded offline: MNIST-1D, scikit-learn digits and diabetes.

Each loader returns a dict of numpy arrays ``x, y, x_test, y_test`` (features float32, labels int32
for classification). MNIST-1D is generated with the ``mnist1d`` package's default arguments (the
paper's dataset: 4000 train, 1000 test, 40 features) and cached as an ``.npz`` file.
"""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path

import numpy as np

CACHE = Path(os.environ.get("BPJAX_CACHE", Path.home() / ".cache" / "bpjax"))


@contextlib.contextmanager
def _global_rng_restored():
    """Run a block that reseeds numpy's and ``random``'s global generators, then put their states back."""
    saved = np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        np.random.set_state(saved[0])
        random.setstate(saved[1])


def _classification(x, y, x_test, y_test):
    return {"x": np.asarray(x, np.float32), "y": np.asarray(y, np.int32),
            "x_test": np.asarray(x_test, np.float32), "y_test": np.asarray(y_test, np.int32)}


def mnist1d() -> dict:
    """MNIST-1D (Greydanus 2020): ``x: (4000, 40)``, ``y: (4000,)``, ``x_test: (1000, 40)``, ``y_test: (1000,)``.

    Generated offline with ``make_dataset(get_dataset_args())`` (about 2 s the first time, then read
    from the cache). ``make_dataset`` reseeds numpy's and ``random``'s global generators; their
    states are restored afterwards so the caller's randomness is untouched.
    """
    from importlib import metadata

    version = metadata.version("mnist1d")  # not `import mnist1d`: that loads scipy (2-3 s) to read a cached file
    path = CACHE / f"mnist1d-{version}.npz"
    if path.exists():
        with np.load(path) as f:
            return {k: f[k] for k in ("x", "y", "x_test", "y_test")}
    from mnist1d.data import get_dataset_args, make_dataset

    with _global_rng_restored():
        d = make_dataset(get_dataset_args())
    out = _classification(d["x"], d["y"], d["x_test"], d["y_test"])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, **out)
        os.replace(tmp, path)
    except OSError:  # a read-only home still runs the experiments, just without the cache
        pass
    return out


def digits(n_train: int = 1200) -> dict:
    """scikit-learn's 8x8 handwritten digits (1797 images): ``x: (N, 8, 8, 1)`` scaled to [0, 1].

    The first ``n_train`` images train, the rest test (the data set is already shuffled).
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0)[..., None]
    return _classification(x[:n_train], d.target[:n_train], x[n_train:], d.target[n_train:])


def diabetes() -> dict:
    """scikit-learn's diabetes regression (442 x 10, features already centred and scaled).

    The last 20 rows are the test set (the scikit-learn example's split); ``y: (N, 1)`` float32.
    """
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    x, y = x.astype(np.float32), y.astype(np.float32)[:, None]
    return {"x": x[:-20], "y": y[:-20], "x_test": x[-20:], "y_test": y[-20:]}
