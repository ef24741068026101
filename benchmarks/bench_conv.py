"""Hand-written conv backward vs ``jax.grad``: one jitted value-and-grad of the MNIST-1D CNN, timed in one process.

Model (Greydanus 2020): x (100, 40, 1); Conv1D 1->25 (k5, s2, p1), Conv1D 25->25 (k3, s2, p1),
Conv1D 25->25 (k3, s2, p1), each followed by Relu; Flatten (125); Dense(10); softmax cross-entropy.
Times ``bp.value_and_grad`` (manual backward) and ``bp.autodiff_value_and_grad`` (``jax.grad`` of
the same forward), both under ``jit``, interleaved call by call so machine noise hits both alike;
reports medians, minima and the ratio manual / autodiff (below 1: the manual backward is faster).

Run: ``python -m benchmarks.bench_conv [--calls 2000] [--json PATH] [--hlo]``.
"""

from __future__ import annotations

import argparse
import json
import statistics

import jax
import jax.numpy as jnp

import bpjax as bp
from benchmarks.measure import per_call
from bpjax import layers as L

BATCH, LENGTH, CLASSES = 100, 40, 10
CALLS, WARMUP = 2000, 50


def cnn():
    """The MNIST-1D CNN: three Conv1D + Relu, Flatten, Dense(10)."""
    return bp.serial(L.Conv1D(25, 5, stride=2, padding=1), L.Relu(),
                     L.Conv1D(25, 3, stride=2, padding=1), L.Relu(),
                     L.Conv1D(25, 3, stride=2, padding=1), L.Relu(),
                     L.Flatten(), L.Dense(CLASSES))


def main(calls=CALLS, json_path=None, show_hlo=False):
    model = cnn()
    key_p, key_x, key_y = jax.random.split(jax.random.key(0), 3)
    _, params = model.init(key_p, (LENGTH, 1))
    x = jax.random.normal(key_x, (BATCH, LENGTH, 1), jnp.float32)
    y = jax.random.randint(key_y, (BATCH,), 0, CLASSES)
    loss = bp.losses.softmax_cross_entropy
    fns = {"manual": jax.jit(bp.value_and_grad(model, loss)),
           "autodiff": jax.jit(bp.autodiff_value_and_grad(model, loss))}
    (v_m, g_m), (v_a, g_a) = fns["manual"](params, x, y), fns["autodiff"](params, x, y)
    err = max(float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))
              for a, b in zip(jax.tree.leaves(g_m), jax.tree.leaves(g_a)))
    if show_hlo:
        for name, fn in fns.items():
            print(f"===== {name} =====\n" + fn.lower(params, x, y).compile().as_text())
    calls_of = {name: (lambda fn=fn: fn(params, x, y)) for name, fn in fns.items()}
    per_call(calls_of, WARMUP)
    times = {name: t["wall"] for name, t in per_call(calls_of, calls).items()}  # alternating call by call
    med = {name: statistics.median(t) for name, t in times.items()}
    best = {name: min(t) for name, t in times.items()}
    ratio = med["manual"] / med["autodiff"]
    paired = statistics.median(m / a for m, a in zip(times["manual"], times["autodiff"]))
    result = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "batch": BATCH,
              "calls_each": calls, "median_ms": {k: 1e3 * v for k, v in med.items()},
              "min_ms": {k: 1e3 * v for k, v in best.items()}, "ratio_manual_over_autodiff": ratio,
              "median_paired_ratio": paired, "ratio_of_minima": best["manual"] / best["autodiff"],
              "loss": [float(v_m), float(v_a)], "max_rel_grad_diff": err}
    print(f"MNIST-1D CNN value+grad, batch {BATCH}, {calls} interleaved calls each on {result['device']}:")
    for name in fns:
        print(f"  {name:8s} median {1e3 * med[name]:.4f} ms, min {1e3 * best[name]:.4f} ms")
    print(f"  ratio manual/autodiff: of medians {ratio:.3f}, median paired {paired:.3f}, "
          f"of minima {best['manual'] / best['autodiff']:.3f}")
    print(f"  max relative gradient difference {err:.1e}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=CALLS, help="timed calls per variant")
    ap.add_argument("--json", default=None, help="write the result as JSON here")
    ap.add_argument("--hlo", action="store_true", help="print both compiled HLO modules")
    a = ap.parse_args()
    main(a.calls, a.json, a.hlo)
