"""Optimisers compared on the MNIST-1D MLP: SGD, momentum, Nesterov, RMSProp, Adam, AdamW and weight decay.

Every run starts from the same weights and sees the same batches (in order); only the update rule
differs (each an optax transformation fed bpjax's hand-written gradients by
:func:`bpjax.train.fit_many`, one model per seed):

- SGD: ``W <- W - lr g``; momentum: ``v <- 0.9 v + g``, ``W <- W - lr v``; Nesterov looks ahead.
- RMSProp: divide by a running RMS of ``g``; Adam: momentum plus RMSProp with bias correction.
- Weight decay: ``W <- W - lr wd W`` each step; AdamW applies it outside Adam's scaling.

Run: ``python experiments/optimizers.py [--seeds N]`` (or ``python -m experiments optimizers``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import bpjax as bp
import data
import results
from bpjax import zoo

OPTIMIZERS = {
    "SGD (0.1)": lambda: optax.sgd(0.1),
    "momentum (0.05, 0.9)": lambda: optax.sgd(0.05, momentum=0.9),
    "Nesterov (0.05, 0.9)": lambda: optax.sgd(0.05, momentum=0.9, nesterov=True),
    "RMSProp (1e-3)": lambda: optax.rmsprop(1e-3),
    "Adam (1e-2)": lambda: optax.adam(1e-2),
    "Adam (1e-3)": lambda: optax.adam(1e-3),
    "AdamW (1e-2, wd 1e-2)": lambda: optax.adamw(1e-2, weight_decay=1e-2),
    "SGD momentum + weight decay 1e-3": lambda: optax.chain(optax.add_decayed_weights(1e-3),
                                                            optax.sgd(0.05, momentum=0.9)),
}
QUICK = ["SGD (0.1)", "momentum (0.05, 0.9)", "Adam (1e-2)"]  # --quick: three rules, three compilations
STEPS, QUICK_STEPS = 3000, 300
BATCH = 100


def main(argv=None) -> dict:
    args = results.command_line("optimizers", __doc__, argv)
    steps = QUICK_STEPS if args.quick else STEPS
    d = data.mnist1d()
    model = zoo.mnist1d_mlp()
    keys = jax.random.split(jax.random.key(0), args.seeds)
    params = bp.train.init_many(model, keys, d["x"].shape[1:])  # the same weights for every optimizer
    x, y = jnp.asarray(d["x"]), jnp.asarray(d["y"])
    train_accuracy = jax.jit(jax.vmap(lambda p: bp.losses.accuracy(bp.predict(model, p, x), y)))
    rows, curves, found = [], {}, {}
    for name in QUICK if args.quick else OPTIMIZERS:
        r = bp.train.fit_many(model, bp.losses.softmax_cross_entropy, OPTIMIZERS[name](), params, (d["x"], d["y"]),
                              keys=keys, steps=steps, batch_size=BATCH, eval_data=(d["x_test"], d["y_test"]),
                              backward=args.backward, verbose=args.progress)
        h = r.history  # loss: (seeds, steps)
        last = min(100, steps // 5)
        test = 100 * h["eval_accuracy"][:, -1]
        res = {"train_loss": float(np.mean(h["loss"][:, -last:])),
               "train_acc_percent": float(100 * np.mean(train_accuracy(r.params))),
               "test_acc_percent": float(test.mean()),
               "test_acc_std": float(test.std(ddof=1)) if test.size > 1 else 0.0}
        found[name] = res
        rows.append([name, res["train_loss"], res["train_acc_percent"], res["test_acc_percent"]])
        curves[name] = h["loss"].mean(0)
        print(f"{name:<34} train loss {res['train_loss']:.3f}  train {res['train_acc_percent']:.1f}%  "
              f"test {res['test_acc_percent']:.1f}%")
    header = ["optimizer", "train loss (last steps)", "train acc %", "test acc %"]
    print(results.markdown(header, rows))
    config = {"model": model.name, "steps": steps, "batch": BATCH, "seeds": args.seeds, "optimizers": list(OPTIMIZERS),
              "trainer": "bp.train.fit_many(keys=seeds)"}

    results.write_csv(args.out / "optimizers.csv", header, rows)
    fig, (ax,) = results.figure(1)
    k = 25
    for name, c in curves.items():
        ax.plot(np.arange(k, steps + 1), np.convolve(c, np.ones(k) / k, mode="valid"), label=name)
    ax.set(title=f"training loss ({k}-step mean)", xlabel="step", ylabel="cross-entropy", yscale="log")
    ax.legend(fontsize=8)
    fig.suptitle("optimisers on the MNIST-1D MLP (same init, same batches)")
    results.save_figure(args, fig)
    results.save(args, config, {"optimizers": found})
    return {"optimizers": found}


if __name__ == "__main__":
    main()
