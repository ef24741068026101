"""Catastrophic forgetting: digits 0-4, then 5-9, and rehearsal of a few stored old examples.

Data: scikit-learn's 8x8 digits, the first 1200 train and the other 597 test, split into task A
(digits 0-4) and task B (digits 5-9). Model: an MLP ``Flatten, Dense(128), Relu, Dense(10)``
with one shared 10-way output, Adam ``1e-3``, batches of 100, hand-written backward.

- Phase 1: train on task A only.
- Phase 2: train on task B only (a fresh Adam state). Nothing in the loss asks the network to keep
  task A: the gradient of ``L_B`` pushes the logits of 5-9 up and those of 0-4 down for every
  input, and after a few hundred steps the network answers 5-9 for everything: task A collapses.
- Rehearsal: a memory of ``MEMORY_PER_CLASS`` task-A training images per class (50 in all, kept
  from phase 1) and ``k`` of them mixed into each phase-2 batch of 100 (``100 - k`` task-B rows,
  ``k`` memory rows taken in turn); ``k = 5`` and ``10`` (5% and 10% of the batch).

Every variant continues from the same phase-1 weights; accuracies on the task-A and task-B test
images are measured every ``EVAL_EVERY`` steps of both phases.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import bpjax as bp
from bpjax import layers as L
from experiments import common, data

TASK_A, TASK_B = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
HIDDEN = 128
LEARNING_RATE = 3e-3
BATCH = 100
MEMORY_PER_CLASS = 10
REHEARSAL = (0, 5, 10)  # memory rows per phase-2 batch
QUICK_REHEARSAL = (0, 10)
STEPS, QUICK_STEPS = 1000, 200  # per phase
EVAL_EVERY = 50
DEFAULT_SEEDS = 3
QUICK_SECONDS = 15


def mlp() -> bp.Layer:
    """``(B, 8, 8, 1) -> (B, 10)``: Flatten, Dense(128), Relu, Dense(10) (one head shared by both tasks)."""
    return bp.serial(L.Flatten(), L.Dense(HIDDEN), L.Relu(), L.Dense(10), name="digits_mlp")


def task(x, y, classes) -> tuple:
    """The rows of ``x, y`` whose label is in ``classes``, as device arrays."""
    keep = np.isin(y, classes)
    return jnp.asarray(x[keep]), jnp.asarray(y[keep])


def make_phase(model, optimizer, train_set, memory, n_memory: int, tests: dict, backward: str):
    """A compiled chunk of ``EVAL_EVERY`` steps for ``S`` runs (vmapped), then the test accuracies.

    Step ``t`` trains on ``BATCH - n_memory`` rows of ``train_set`` (rows ``(t * b + i) mod N``, in
    order) and ``n_memory`` rows of ``memory`` (rows ``(t * n_memory + i) mod M``).

    Returns:
      ``chunk(params, opt_state, t0) -> (params, opt_state, losses (EVAL_EVERY, S), {test: (S,)})``.
    """
    vg = bp.train.grad_fn(model, bp.losses.softmax_cross_entropy, backward)
    (x, y), (xm, ym) = train_set, memory
    b = BATCH - n_memory

    def step(p, o, xb, yb):
        value, grads = vg(p, xb, yb)
        updates, o = optimizer.update(grads, o, p)
        return optax.apply_updates(p, updates), o, value

    many = jax.vmap(step, in_axes=(0, 0, None, None))

    def body(carry, t):
        idx = (t * b + jnp.arange(b)) % x.shape[0]
        xb, yb = x[idx], y[idx]
        if n_memory:
            mem = (t * n_memory + jnp.arange(n_memory)) % xm.shape[0]
            xb, yb = jnp.concatenate([xb, xm[mem]]), jnp.concatenate([yb, ym[mem]])
        p, o, value = many(*carry, xb, yb)
        return (p, o), value

    def accuracies(p):
        acc = lambda q, xt, yt: bp.losses.accuracy(bp.predict(model, q, xt), yt)  # noqa: E731
        return {name: jax.vmap(acc, in_axes=(0, None, None))(p, *xy) for name, xy in tests.items()}

    @jax.jit
    def chunk(p, o, t0):
        (p, o), losses = jax.lax.scan(body, (p, o), t0 + jnp.arange(EVAL_EVERY))
        return p, o, losses, accuracies(p)

    return chunk


def train_phase(chunk, optimizer, params, steps: int) -> tuple:
    """Run ``steps`` steps (a multiple of ``EVAL_EVERY``) from a fresh optimiser state: ``(params, {test: (E, S)})``."""
    opt_state = jax.vmap(optimizer.init)(params)
    curves = []
    for t0 in range(0, steps, EVAL_EVERY):
        params, opt_state, _, acc = chunk(params, opt_state, t0)
        curves.append(acc)
    return params, {k: np.stack([np.asarray(c[k]) for c in curves]) for k in curves[0]}


def run(cfg: common.Config) -> dict:
    steps = QUICK_STEPS if cfg.quick else STEPS
    d = data.digits()
    train_a, train_b = task(d["x"], d["y"], TASK_A), task(d["x"], d["y"], TASK_B)
    tests = {"A (0-4)": task(d["x_test"], d["y_test"], TASK_A), "B (5-9)": task(d["x_test"], d["y_test"], TASK_B)}
    ya = np.asarray(train_a[1])
    keep = np.concatenate([np.flatnonzero(ya == c)[:MEMORY_PER_CLASS] for c in TASK_A])
    memory = (train_a[0][np.sort(keep)], train_a[1][np.sort(keep)])  # in data order: classes interleaved
    model, optimizer = mlp(), optax.adam(LEARNING_RATE)
    params, _ = common.init_runs(model, jax.random.split(jax.random.key(0), cfg.seeds), d["x"].shape[1:])

    phase1 = make_phase(model, optimizer, train_a, memory, 0, tests, cfg.backward)
    params_a, curve_a = train_phase(phase1, optimizer, params, steps)
    after_a = {k: float(v[-1].mean()) for k, v in curve_a.items()}
    cfg.log(f"phase 1 (task A, {steps} steps): test acc A {after_a['A (0-4)']:.3f}, B {after_a['B (5-9)']:.3f}")
    variants, rows, lines = {}, [], {}
    for k in QUICK_REHEARSAL if cfg.quick else REHEARSAL:
        name = "no rehearsal" if k == 0 else f"rehearsal {k}/{BATCH} per batch"
        phase2 = make_phase(model, optimizer, train_b, memory, k, tests, cfg.backward)
        _, curve_b = train_phase(phase2, optimizer, params_a, steps)
        a, b = curve_b["A (0-4)"][-1], curve_b["B (5-9)"][-1]
        variants[name] = {"memory_rows_per_batch": k, "task_a_acc": float(a.mean()), "task_b_acc": float(b.mean()),
                          "task_a_acc_per_seed": a, "task_a_drop_points": 100 * (after_a["A (0-4)"] - float(a.mean())),
                          "task_a_min_during_phase2": float(curve_b["A (0-4)"].mean(1).min())}
        rows.append([name, after_a["A (0-4)"], float(a.mean()), float(b.mean()), variants[name]["task_a_drop_points"]])
        cfg.log(f"phase 2, {name:<26}: test acc A {a.mean():.3f}, B {b.mean():.3f}")
        lines[name] = {t: np.concatenate([curve_a[t].mean(1), curve_b[t].mean(1)]) for t in tests}
    header = ["phase 2", "A after phase 1", "A after phase 2", "B after phase 2", "A drop (points)"]
    cfg.log(common.markdown_table(header, rows))
    common.write_csv(cfg.out / "forgetting.csv", header, rows)
    metrics = {"task_a_acc_after_phase1": after_a["A (0-4)"], "task_b_acc_after_phase1": after_a["B (5-9)"],
               "variants": variants}
    common.write_results(cfg, {"data": "sklearn load_digits, first 1200 train, the rest test; A = 0-4, B = 5-9",
                               "model": "Flatten Dense(128) Relu Dense(10)", "optimizer": f"adam({LEARNING_RATE}), "
                               "fresh state per phase", "steps_per_phase": steps, "batch": BATCH,
                               "memory": f"{MEMORY_PER_CLASS} task-A training images per class",
                               "seeds": cfg.seeds}, metrics)
    x = np.arange(1, 2 * steps // EVAL_EVERY + 1) * EVAL_EVERY
    common.plot_panels(cfg.out / "forgetting.png", [
        {"title": f"test accuracy on task {t}", "xlabel": "step", "ylabel": "accuracy", "ylim": (-0.02, 1.02),
         "lines": {**{name: (x, curve[t]) for name, curve in lines.items()},
                   "phase 2 starts": ([steps, steps], [0, 1], {"c": "gray", "ls": "--", "lw": 1})}} for t in tests
    ], title="catastrophic forgetting: digits 0-4 then 5-9")
    return metrics
