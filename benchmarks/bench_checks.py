"""What bpjax's checks cost a training run: the MNIST-1D MLP ``fit`` with a check on and off, side by side.

    python -m benchmarks.bench_checks [--option checks|nan_guard] [--steps 6000] [--repeats 10] [--out PREFIX]

``--option checks`` (the default) measures the eager input checks (``fit(checks=...)``), ``--option
nan_guard`` the NaN guard (``fit(nan_guard=...)``, on by default: each chunk returns its losses and one
finite flag per leaf of its final state, and the host looks at them); "checked" is the option on.

Recipe (Greydanus 2020): Adam 1e-2, batch 100, batches in order, evaluation on the test set every
500 steps. ``fit`` checks its inputs eagerly before it compiles (:mod:`bpjax.train.validate`: the
datasets whole, finite and with valid targets; one forward and the loss traced on a batch), and the
layer contract is checked while the gradient is traced (:mod:`bpjax.contract`); the compiled loop
itself carries no checks. "Unchecked" runs the same ``fit`` with those eager checks switched off
(``fit(..., checks=False)``; the contract checks read static shapes and add nothing to the compiled
program, which ``tests/test_contract.py`` asserts), so the difference is what a user pays for the checks:

- cached calls: ``fit`` with its compiled program reused (each arm's own), ``repeats`` interleaved
  calls per arm (order flipped each round), medians of wall and process CPU time;
- first calls: a new optimizer object each time (so the program is traced and compiled anew),
  3 interleaved calls per arm, medians.

Writes ``<out>.json`` and ``<out>.md`` (default ``benchmarks/results/bench_<option>``, ``bench_checks`` for
the input checks).
"""

from __future__ import annotations

import argparse
import os
import statistics

import jax
import numpy as np
import optax

import bpjax as bp
from benchmarks.data import mnist1d
from benchmarks.measure import RESULTS, machine, machine_record, save, timed
from bpjax import zoo

XENT, BATCH = bp.losses.softmax_cross_entropy, 100


OPTIONS = {"checks": "the eager input checks", "nan_guard": "the NaN guard"}


def measure(steps: int, repeats: int, option: str = "checks") -> dict:
    x, y, xt, yt = mnist1d()
    model = zoo.mnist1d_mlp()
    _, p0 = model.init(jax.random.key(0), (40,))
    kw = dict(steps=steps, batch_size=BATCH, eval_data=(xt, yt), eval_every=500, verbose=False)
    opts = {"checked": optax.adam(1e-2), "unchecked": optax.adam(1e-2)}  # one object per arm: its own cache

    def call(arm, opt):
        """``(wall s, CPU s, FitResult)`` of one fit call of ``arm``."""
        result, wall, cpu = timed(lambda: bp.train.fit(model, XENT, opt, p0, (x, y), **{option: arm == "checked"},
                                                       **kw))
        return wall, cpu, result

    first = {a: {"wall": [], "cpu": []} for a in opts}
    for r in range(3):  # first calls: a new optimizer object, so a new trace and compile
        for arm in (("checked", "unchecked") if r % 2 == 0 else ("unchecked", "checked")):
            wall, cpu, _ = call(arm, optax.adam(1e-2))
            first[arm]["wall"].append(wall)
            first[arm]["cpu"].append(cpu)
    for arm, opt in opts.items():
        call(arm, opt)  # compile each arm's cached program
    cached = {a: {"wall": [], "cpu": []} for a in opts}
    results = {}
    for r in range(repeats):
        for arm in (("checked", "unchecked") if r % 2 == 0 else ("unchecked", "checked")):
            wall, cpu, out = call(arm, opts[arm])
            cached[arm]["wall"].append(wall)
            cached[arm]["cpu"].append(cpu)
            results[arm] = out
    pairs = zip(jax.tree.leaves(results["checked"].params), jax.tree.leaves(results["unchecked"].params))
    same = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in pairs)

    def medians(d):
        return {arm: {k: statistics.median(v) for k, v in t.items()} for arm, t in d.items()}

    cm, fm = medians(cached), medians(first)
    return {"option": option, "steps": steps, "repeats": repeats, "cached": cm, "first": fm,
            "cached_ratio": {k: cm["checked"][k] / cm["unchecked"][k] for k in ("wall", "cpu")},
            "first_ratio": {k: fm["checked"][k] / fm["unchecked"][k] for k in ("wall", "cpu")},
            "max_param_difference": same}


def markdown(r: dict) -> str:
    m = r["machine"]
    what = OPTIONS[r.get("option", "checks")]
    lines = [f"# The cost of {what}: MNIST-1D MLP `fit`", "",
             f"Machine: {m['cpu']}, {m['cores']} CPU cores, jax {m['jax']}. Load average at the start "
             f"{m['load_start']}, at the end {m['load_end']}.", "",
             f"{r['steps']} steps, Adam 1e-2, batch 100, evaluation every 500 steps. Medians of "
             f"{r['repeats']} interleaved cached calls and 3 interleaved first calls per arm.", "",
             f"`{r.get('option', 'checks')}=True` is \"checked\", `False` \"unchecked\".", "",
             "| call | checked wall s (CPU) | unchecked wall s (CPU) | checked / unchecked: wall (CPU) |",
             "|---|---|---|---|"]
    for call in ("cached", "first"):
        c, u, q = r[call]["checked"], r[call]["unchecked"], r[f"{call}_ratio"]
        lines.append(f"| {call} | {c['wall']:.3f} ({c['cpu']:.3f}) | {u['wall']:.3f} ({u['cpu']:.3f}) | "
                     f"{q['wall']:.2f} ({q['cpu']:.2f}) |")
    lines += ["", f"Largest parameter difference between the two runs: {r['max_param_difference']:.1e}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_checks", description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--option", choices=list(OPTIONS), default="checks", help="the fit option to measure")
    ap.add_argument("--out", default=None, help="output prefix (.json and .md; default results/bench_<option>)")
    args = ap.parse_args(argv)
    info = machine()
    r = measure(args.steps, args.repeats, args.option)
    args.out = args.out or os.path.join(RESULTS, f"bench_{args.option}")
    r["machine"] = machine_record(info)
    save(args.out, r, markdown(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
