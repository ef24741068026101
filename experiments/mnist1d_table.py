"""The MNIST-1D paper's table (Greydanus 2020): logistic regression, MLP, CNN and GRU, mean and spread over seeds.

The paper's recipe for every model: Adam lr 1e-2, batch 100 taken in order (``fit(shuffle=False)``),
6000 steps, softmax cross-entropy; models from :mod:`bpjax.zoo`. The seeds (initialisations) of
one model train side by side in one :func:`bpjax.train.fit_many` call; the backward is bpjax's
hand-written one unless ``--backward autodiff``, and model 0's gradients are checked against
``jax.grad`` in float64 after the last step (fit's ``callback``). Published test accuracy: paper
(Table 1) logistic 32%, MLP 68%, CNN 94%, GRU 91%; the authors' notebook at 6000 steps 31.5, 65.1,
92.3, 89.1.

The file is ``mnist1d_table.py``, not ``mnist1d.py``: run as a script, its folder comes first on Python's
path, and a file ``mnist1d.py`` there would hide the ``mnist1d`` package that makes the data.

Run: ``python experiments/mnist1d_table.py [--seeds N]`` (or ``python -m experiments mnist1d``).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import bpjax as bp
import data
import results
from bpjax import zoo

PUBLISHED = {"logistic": (32.0, 31.5), "mlp": (68.0, 65.1), "cnn": (94.0, 92.3), "gru": (91.0, 89.1)}
STEPS, QUICK_STEPS = 6000, 200
QUICK_MODELS = ["logistic", "mlp"]  # --quick: the two that compile fastest (the CNN and GRU take seconds more)
LEARNING_RATE, BATCH = 1e-2, 100
SEEDS = 3  # without --seeds


def main(argv=None) -> dict:
    args = results.command_line("mnist1d", __doc__, argv, seeds=SEEDS)
    steps = QUICK_STEPS if args.quick else STEPS
    names = QUICK_MODELS if args.quick else list(PUBLISHED)
    d = data.mnist1d()
    x, y = jnp.asarray(d["x"]), jnp.asarray(d["y"])
    xent = bp.losses.softmax_cross_entropy
    rows, found = [], {}
    for name in names:
        model = zoo.MODELS[name]()
        keys = jax.random.split(jax.random.key(1), args.seeds)
        start = time.perf_counter()
        r = bp.train.fit_many(model, xent, optax.adam(LEARNING_RATE), bp.train.init_many(model, keys, d["x"].shape[1:]),
                              (d["x"], d["y"]), keys=keys, steps=steps, batch_size=BATCH,
                              eval_data=(d["x_test"], d["y_test"]), backward=args.backward, verbose=args.progress)
        seconds = time.perf_counter() - start
        # model 0's gradients on the last step's batch (shuffle=False: batch (steps - 1) mod 40), manual vs
        # jax.grad in float64 (see the mnist1d_mlp experiment for why float64)
        b = (steps - 1) % (len(x) // BATCH)
        with jax.enable_x64(True):
            params64 = jax.tree.map(lambda a: np.asarray(a[0], np.float64), r.params)
            check = bp.check_gradients(model, xent, params64, d["x"][b * BATCH:(b + 1) * BATCH].astype(np.float64),
                                       d["y"][b * BATCH:(b + 1) * BATCH])
        print(f"step {steps:5d}: manual vs jax.grad (float64) max rel error {check.max_rel_error:.2e} "
              f"({'OK' if check.ok else 'MISMATCH'}, rtol {check.rtol:g})")
        test = 100 * r.history["eval_accuracy"][:, -1]  # (seeds,)
        train = 100 * jax.jit(jax.vmap(lambda p: bp.losses.accuracy(bp.predict(model, p, x), y)))(r.params)
        mean, std = float(test.mean()), float(test.std(ddof=1)) if test.size > 1 else 0.0
        found[name] = {"test_acc_percent": mean, "test_acc_std": std, "per_seed": test,
                       "train_acc_percent": float(np.mean(train)), "seconds": seconds,
                       "grad_check_max_rel_error": check.max_rel_error,
                       "paper": PUBLISHED[name][0], "notebook_6000_steps": PUBLISHED[name][1]}
        rows.append([name, f"{mean:.1f} ± {std:.1f}", PUBLISHED[name][0], PUBLISHED[name][1], f"{seconds:.1f}"])
        print(f"{name}: test accuracy {mean:.1f} ± {std:.1f}% over {args.seeds} seeds ({seconds:.1f} s)")
    header = ["model", f"bpjax test acc % ({args.seeds} seeds, {steps} steps)", "paper %", "notebook (6000 steps) %",
              "seconds (compile included)"]
    print(results.markdown(header, rows))
    config = {"models": names, "optimizer": f"adam({LEARNING_RATE})", "batch": BATCH, "steps": steps,
              "seeds": args.seeds, "trainer": "bp.train.fit_many(shuffle=False)",
              "published": "Greydanus 2020, Table 1 (paper); the authors' notebook at 6000 steps"}

    results.write_csv(args.out / "table.csv", header, rows)
    fig, (ax,) = results.figure(1)
    ax.plot(names, [found[n]["test_acc_percent"] for n in names], "o", ms=4, label="bpjax (mean over seeds)")
    ax.plot(names, [PUBLISHED[n][0] for n in names], "o", ms=4, label="paper")
    ax.plot(names, [PUBLISHED[n][1] for n in names], "o", ms=4, label="notebook, 6000 steps")
    ax.set(title="test accuracy: bpjax vs published", xlabel="model", ylabel="accuracy (%)")
    ax.legend(fontsize=8)
    fig.suptitle("MNIST-1D")
    results.save_figure(args, fig)
    results.save(args, config, {"models": found})
    return {"models": found}


if __name__ == "__main__":
    main()
