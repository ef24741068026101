"""Mixed precision on the MNIST-1D MLP: float32 against bfloat16 and float16 compute, accuracy and residual bytes.

    python -m benchmarks.bench_precision [--steps 6000] [--seeds 3] [--out PREFIX]

Recipe (Greydanus 2020): Adam 1e-2, batch 100, batches in order, ``steps`` steps, ``seeds`` seeds in one
``fit_many`` call per precision. The params (the master copy) and Adam's state stay in float32;
``bp.precision.MixedPrecision(model, dtype)`` runs the forward and backward in ``dtype``, and float16
trains with ``bp.precision.loss_scaled`` (dynamic loss scaling). Reported per precision: the test
accuracy (mean and spread over seeds), its difference from float32 (the target is within 1 point),
the bytes the backward keeps (bpjax's residual pytree for a batch of 100), and the run's CPU time.

Writes ``<out>.json`` and ``<out>.md`` (default ``benchmarks/results/bench_precision``).
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

import bpjax as bp
from benchmarks.data import mnist1d
from benchmarks.measure import RESULTS, machine, machine_record, save, timed
from bpjax import zoo

PRECISIONS = {"float32": None, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
BATCH, LEARNING_RATE = 100, 1e-2


def measure(steps: int, seeds: int) -> dict:
    x, y, xt, yt = mnist1d()
    base = zoo.mnist1d_mlp()
    keys = jax.random.split(jax.random.key(0), seeds)
    out = {}
    for name, dtype in PRECISIONS.items():
        model = base if dtype is None else bp.precision.MixedPrecision(base, dtype)
        opt = bp.precision.loss_scaled(optax.adam(LEARNING_RATE)) if name == "float16" else optax.adam(LEARNING_RATE)
        r, wall, cpu = timed(lambda: bp.train.fit_many(model, bp.losses.softmax_cross_entropy, opt, None, (x, y),
                                                       keys=keys, steps=steps, batch_size=BATCH,
                                                       eval_data=(xt, yt), verbose=False))
        acc = 100 * np.asarray(r.history["eval_accuracy"][:, -1])
        _, p = model.init(jax.random.key(0), (40,))
        residuals = jax.eval_shape(lambda p, xb: model.forward(p, xb)[1], p, x[:BATCH])
        out[name] = {"test_accuracy": acc.tolist(), "mean": float(acc.mean()), "std": float(acc.std()),
                     "residual_bytes": int(sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(residuals))),
                     "wall_s": wall, "cpu_s": cpu,
                     "final_loss_scale": (float(np.asarray(r.opt_state.scale).mean()) if name == "float16" else None)}
    for name in PRECISIONS:
        out[name]["accuracy_minus_float32"] = out[name]["mean"] - out["float32"]["mean"]
    return {"steps": steps, "seeds": seeds, "precisions": out}


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = ["# Mixed precision: MNIST-1D MLP", "",
             f"Machine: {m['cpu']}, {m['cores']} CPU cores, jax {m['jax']}; load average at the start "
             f"{m['load_start']}, at the end {m['load_end']}.", "",
             f"{r['steps']} Adam(1e-2) steps, batch 100, {r['seeds']} seeds per precision (one fit_many call each); "
             f"float32 master params and optimizer state; float16 with dynamic loss scaling.", "",
             "| compute | test accuracy % (seeds) | minus float32 (points) | residual bytes (batch 100) | CPU s |",
             "|---|---|---|---|---|"]
    for name, p in r["precisions"].items():
        lines.append(f"| {name} | {p['mean']:.1f} ± {p['std']:.1f} | {p['accuracy_minus_float32']:+.1f} | "
                     f"{p['residual_bytes']:,} | {p['cpu_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_precision", description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(RESULTS, "bench_precision"), help="output prefix (.json and .md)")
    args = ap.parse_args(argv)
    info = machine()
    r = measure(args.steps, args.seeds)
    r["machine"] = machine_record(info)
    save(args.out, r, markdown(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
