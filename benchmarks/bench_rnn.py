"""Hand-written backpropagation through time vs ``jax.grad``: the MNIST-1D bidirectional GRU, one process.

Model (Greydanus 2020): ``x: (100, 40, 1) -> Bidirectional(GRU(6)) -> (100, 40, 12) -> Flatten (480)
-> Dense(10)``, softmax cross-entropy. Times a jitted value-and-grad with ``bp.value_and_grad`` (the
hand-written backward) and ``bp.autodiff_value_and_grad`` (``jax.grad`` of the same forward), the
two interleaved call by call so that load on the machine hits both alike; reports the medians and
the ratio ``manual / autodiff`` (below 1: the hand-written backward is faster). The data are random
normal inputs and labels: the timings do not depend on the values.

Run: ``python -m benchmarks.bench_rnn [--reps 300] [--json results/bench_rnn.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

import jax
import jax.numpy as jnp

import bpjax as bp
from benchmarks.measure import per_call
from bpjax.layers import GRU, Bidirectional, Dense, Flatten

BATCH, T, D, HIDDEN, CLASSES = 100, 40, 1, 6, 10
WARMUP, REPS = 20, 300
UNROLL = 1  # lax.scan unroll of the GRU (forward and hand-written backward; jax.grad's backward inherits it)


def model(unroll: int = UNROLL):
    return bp.serial(Bidirectional(GRU(HIDDEN, unroll=unroll)), Flatten(), Dense(CLASSES))


def bench(reps: int = REPS, warmup: int = WARMUP, unroll: int = UNROLL) -> dict:
    net = model(unroll)
    kp, kx, ky = jax.random.split(jax.random.key(0), 3)
    _, params = net.init(kp, (T, D))
    x = jax.random.normal(kx, (BATCH, T, D), jnp.float32)
    y = jax.random.randint(ky, (BATCH,), 0, CLASSES)
    loss = bp.losses.softmax_cross_entropy
    fns = {"manual": jax.jit(bp.value_and_grad(net, loss)),
           "autodiff": jax.jit(bp.autodiff_value_and_grad(net, loss))}
    (lm, gm), (la, ga) = fns["manual"](params, x, y), fns["autodiff"](params, x, y)
    err = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(gm), jax.tree.leaves(ga)))
    assert abs(float(lm) - float(la)) < 1e-5 and err < 1e-4, (float(lm), float(la), err)
    calls = {k: (lambda f=f: f(params, x, y)) for k, f in fns.items()}
    per_call(calls, warmup)
    times = {k: t["wall"] for k, t in per_call(calls, reps).items()}  # interleaved: the same background load
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"model": net.name, "batch": BATCH, "T": T, "hidden": HIDDEN, "reps": reps, "unroll": unroll,
            "device": jax.devices()[0].device_kind, "jax": jax.__version__,
            "median_ms": {k: 1e3 * v for k, v in med.items()},
            "min_ms": {k: 1e3 * min(v) for k, v in times.items()},
            "ratio_manual_over_autodiff": med["manual"] / med["autodiff"],
            "max_abs_grad_diff": err}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=REPS)
    ap.add_argument("--unroll", type=int, default=UNROLL)
    ap.add_argument("--json", default=None, help="also write the result to this JSON file")
    args = ap.parse_args()
    r = bench(args.reps, unroll=args.unroll)
    print(f"{r['model']}, batch {BATCH}, T {T}, H {HIDDEN}, unroll {r['unroll']}, {r['reps']} reps on {r['device']}")
    for k in ("manual", "autodiff"):
        print(f"  {k:9s} median {r['median_ms'][k]:.3f} ms  (min {r['min_ms'][k]:.3f} ms)")
    print(f"  ratio manual / autodiff = {r['ratio_manual_over_autodiff']:.3f}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)


if __name__ == "__main__":
    main()
