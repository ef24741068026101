"""MNIST-1D, generated offline once and cached as ``.npz`` under ``results/`` (gitignored)."""

from __future__ import annotations

import os

import numpy as np

CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results", "mnist1d.npz")


def mnist1d(path: str = CACHE):
    """``(x (4000, 40) f32, y (4000,) i32, x_test (1000, 40) f32, y_test (1000,) i32)``.

    The first call runs ``mnist1d.data.make_dataset(get_dataset_args())`` (about 4 s; it reseeds
    numpy's and ``random``'s global state, so it runs in a saved-and-restored RNG state) and caches it.
    """
    if not os.path.exists(path):
        import random

        from mnist1d.data import get_dataset_args, make_dataset
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            d = make_dataset(get_dataset_args())
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp.npz"
        np.savez(tmp, x=d["x"], y=d["y"], x_test=d["x_test"], y_test=d["y_test"])
        os.replace(tmp, path)
    with np.load(path) as f:
        return (f["x"].astype(np.float32), f["y"].astype(np.int32),
                f["x_test"].astype(np.float32), f["y_test"].astype(np.int32))
