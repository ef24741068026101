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
  ``k`` memory rows taken in turn); ``k = 5`` and ``10`` (5% and 10% of the batch). The batches are
  laid out as one epoch (:func:`mixed_epoch`) that ``fit`` takes in order.

Each phase is one :func:`bpjax.train.fit_many` call (one model per seed). Every variant continues
from the same phase-1 weights; fit evaluates the whole test set every ``EVAL_EVERY`` steps of both
phases, with one metric per task (accuracy on the test rows of that task's labels).

Run: ``python experiments/forgetting.py [--quick] [--seeds N]`` (or ``python -m experiments forgetting``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import bpjax as bp
import data
import results
from bpjax import layers as L

TASK_A, TASK_B = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
HIDDEN = 128
LEARNING_RATE = 3e-3
BATCH = 100
MEMORY_PER_CLASS = 10
REHEARSAL = (0, 5, 10)  # memory rows per phase-2 batch
QUICK_REHEARSAL = (0, 10)
STEPS, QUICK_STEPS = 1000, 200  # per phase
EVAL_EVERY = 50
SEEDS = 3  # without --seeds


def mlp() -> bp.Layer:
    """``(B, 8, 8, 1) -> (B, 10)``: Flatten, Dense(128), Relu, Dense(10) (one head shared by both tasks)."""
    return bp.serial(L.Flatten(), L.Dense(HIDDEN), L.Relu(), L.Dense(10), name="digits_mlp")


def task(x, y, classes) -> tuple:
    """The rows of ``x, y`` whose label is in ``classes``."""
    keep = np.isin(y, classes)
    return x[keep], y[keep]


def mixed_epoch(train_set, memory, n_memory: int, n_b: int) -> tuple:
    """``n_b`` batches laid out in order for ``fit(shuffle=False)``: ``(x, y)`` of ``n_b * BATCH`` rows.

    Batch ``j`` holds ``BATCH - n_memory`` rows of ``train_set`` (rows ``(j * b + i) mod N``,
    ``b = BATCH - n_memory``; with ``n_b >= N / b`` every training row appears in each pass) followed
    by ``n_memory`` rows of ``memory`` taken in turn (rows ``(j * n_memory + i) mod M``).
    """
    (x, y), (xm, ym) = train_set, memory
    b = BATCH - n_memory
    rows = (np.arange(n_b)[:, None] * b + np.arange(b)) % len(x)               # (n_b, b)
    mem = (np.arange(n_b)[:, None] * n_memory + np.arange(n_memory)) % len(xm)  # (n_b, n_memory)
    xb = np.concatenate([x[rows], xm[mem]], 1).reshape(n_b * BATCH, *x.shape[1:])
    yb = np.concatenate([y[rows], ym[mem]], 1).reshape(n_b * BATCH)
    return xb, yb


def task_accuracy(classes):
    """A fit metric ``(logits, y) -> accuracy on the rows whose label is in classes`` (eval_data holds both tasks)."""
    classes = jnp.asarray(classes)

    def metric(logits, y):
        mine = jnp.isin(y, classes)
        return jnp.sum(mine & (jnp.argmax(logits, -1) == y)) / jnp.sum(mine)

    return metric


# one object each: every phase has the same shapes, so fit compiles its program once for all of them
METRICS = {"A (0-4)": task_accuracy(TASK_A), "B (5-9)": task_accuracy(TASK_B)}
ADAM = optax.adam(LEARNING_RATE)


def train_phase(model, params, keys, train_data, test, steps: int, args) -> tuple:
    """``steps`` steps of every seed from a fresh Adam state: ``(params, {task: (S, E) test accuracy})``."""
    r = bp.train.fit_many(model, bp.losses.softmax_cross_entropy, ADAM, params, train_data,
                          keys=keys, steps=steps, batch_size=BATCH, eval_data=test, eval_every=EVAL_EVERY,
                          metrics=METRICS, backward=args.backward, verbose=args.progress)
    return r.params, {t: r.history[f"eval_{t}"] for t in METRICS}


def main(argv=None) -> dict:
    args = results.command_line("forgetting", __doc__, argv, seeds=SEEDS)
    steps = QUICK_STEPS if args.quick else STEPS
    d = data.digits()
    train_a, train_b = task(d["x"], d["y"], TASK_A), task(d["x"], d["y"], TASK_B)
    test = (d["x_test"], d["y_test"])  # both tasks; the metrics split it by label
    ya = train_a[1]
    keep = np.sort(np.concatenate([np.flatnonzero(ya == c)[:MEMORY_PER_CLASS] for c in TASK_A]))
    memory = (train_a[0][keep], train_a[1][keep])  # in data order: classes interleaved
    model = mlp()
    keys = jax.random.split(jax.random.key(0), args.seeds)
    params = bp.train.init_many(model, keys, d["x"].shape[1:])

    rehearsal = QUICK_REHEARSAL if args.quick else REHEARSAL
    n_b = max(-(-len(t[0]) // (BATCH - max(rehearsal))) for t in (train_a, train_b))  # batches per pass, all phases
    params_a, curve_a = train_phase(model, params, keys, mixed_epoch(train_a, memory, 0, n_b), test, steps, args)
    after_a = {k: float(v[:, -1].mean()) for k, v in curve_a.items()}
    print(f"phase 1 (task A, {steps} steps): test acc A {after_a['A (0-4)']:.3f}, B {after_a['B (5-9)']:.3f}")
    variants, rows, lines = {}, [], {}
    for k in rehearsal:
        name = "no rehearsal" if k == 0 else f"rehearsal {k}/{BATCH} per batch"
        _, curve_b = train_phase(model, params_a, keys, mixed_epoch(train_b, memory, k, n_b), test, steps, args)
        a, b = curve_b["A (0-4)"][:, -1], curve_b["B (5-9)"][:, -1]
        variants[name] = {"memory_rows_per_batch": k, "task_a_acc": float(a.mean()), "task_b_acc": float(b.mean()),
                          "task_a_acc_per_seed": a, "task_a_drop_points": 100 * (after_a["A (0-4)"] - float(a.mean())),
                          "task_a_min_during_phase2": float(curve_b["A (0-4)"].mean(0).min())}
        rows.append([name, after_a["A (0-4)"], float(a.mean()), float(b.mean()), variants[name]["task_a_drop_points"]])
        print(f"phase 2, {name:<26}: test acc A {a.mean():.3f}, B {b.mean():.3f}")
        lines[name] = {t: np.concatenate([curve_a[t].mean(0), curve_b[t].mean(0)]) for t in METRICS}
    header = ["phase 2", "A after phase 1", "A after phase 2", "B after phase 2", "A drop (points)"]
    print(results.markdown(header, rows))
    metrics = {"task_a_acc_after_phase1": after_a["A (0-4)"], "task_b_acc_after_phase1": after_a["B (5-9)"],
               "variants": variants}
    config = {"data": "sklearn load_digits, first 1200 train, the rest test; A = 0-4, B = 5-9",
              "model": "Flatten Dense(128) Relu Dense(10)",
              "optimizer": f"adam({LEARNING_RATE}), fresh state per phase", "steps_per_phase": steps, "batch": BATCH,
              "memory": f"{MEMORY_PER_CLASS} task-A training images per class", "seeds": args.seeds,
              "trainer": "bp.train.fit_many(keys=seeds, shuffle=False) per phase"}

    results.write_csv(args.out / "forgetting.csv", header, rows)
    fig, axes = results.figure(len(METRICS))
    x = np.arange(1, 2 * steps // EVAL_EVERY + 1) * EVAL_EVERY
    for ax, t in zip(axes, METRICS):
        for name, curve in lines.items():
            ax.plot(x, curve[t], label=name)
        ax.plot([steps, steps], [0, 1], c="gray", ls="--", lw=1, label="phase 2 starts")
        ax.set(title=f"test accuracy on task {t}", xlabel="step", ylabel="accuracy", ylim=(-0.02, 1.02))
        ax.legend(fontsize=8)
    fig.suptitle("catastrophic forgetting: digits 0-4 then 5-9")
    results.save_figure(args, fig)
    results.save(args, config, metrics)
    return metrics


if __name__ == "__main__":
    main()
