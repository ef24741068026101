"""MNIST-1D for the benchmarks: the experiments' loader (generated offline once, then cached)."""

from __future__ import annotations

from experiments import data


def mnist1d():
    """``(x (4000, 40) f32, y (4000,) i32, x_test (1000, 40) f32, y_test (1000,) i32)``."""
    d = data.mnist1d()
    return d["x"], d["y"], d["x_test"], d["y_test"]
