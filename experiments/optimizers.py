"""Optimisers compared on the MNIST-1D MLP: SGD, momentum, Nesterov, RMSProp, Adam, AdamW and weight decay.

Every run starts from the same weights and sees the same batches (in order); only the update rule
differs (each an optax transformation fed bpjax's hand-written gradients by
:func:`bpjax.train.fit_many`, one model per seed):

- SGD: ``W <- W - lr g``; momentum: ``v <- 0.9 v + g``, ``W <- W - lr v``; Nesterov looks ahead.
- RMSProp: divide by a running RMS of ``g``; Adam: momentum plus RMSProp with bias correction.
- Weight decay: ``W <- W - lr wd W`` each step; AdamW applies it outside Adam's scaling.
"""

from __future__ import annotations

import jax
import numpy as np
import optax

import bpjax as bp
from bpjax import zoo
from experiments import common, data

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


def run(cfg: common.Config) -> dict:
    steps = QUICK_STEPS if cfg.quick else STEPS
    d = data.mnist1d()
    model = zoo.mnist1d_mlp()
    keys = jax.random.split(jax.random.key(0), cfg.seeds)
    params = bp.train.init_many(model, keys, d["x"].shape[1:])
    on_train = common.evaluate_many(model, d["x"], d["y"])
    rows, curves, results = [], {}, {}
    for name in QUICK if cfg.quick else OPTIMIZERS:
        r = bp.train.fit_many(model, bp.losses.softmax_cross_entropy, OPTIMIZERS[name](), params, (d["x"], d["y"]),
                              keys=keys, steps=steps, batch_size=BATCH, eval_data=(d["x_test"], d["y_test"]),
                              backward=cfg.backward, verbose=cfg.progress)
        h = r.history
        last = min(100, steps // 5)
        test = 100 * h["eval_accuracy"][:, -1]
        res = {"train_loss": float(np.mean(h["loss"][:, -last:])),
               "train_acc_percent": float(100 * np.mean(on_train(r.params, r.state)[0])),
               "test_acc_percent": float(test.mean()), "test_acc_std": common.mean_std(test)[1]}
        results[name] = res
        rows.append([name, res["train_loss"], res["train_acc_percent"], res["test_acc_percent"]])
        curves[name] = h["loss"].mean(0)
        cfg.log(f"{name:<34} train loss {res['train_loss']:.3f}  train {res['train_acc_percent']:.1f}%  "
                f"test {res['test_acc_percent']:.1f}%")
    header = ["optimizer", "train loss (last steps)", "train acc %", "test acc %"]
    cfg.log(common.markdown_table(header, rows))
    common.write_csv(cfg.out / "optimizers.csv", header, rows)
    common.write_results(cfg, {"model": model.name, "steps": steps, "batch": BATCH, "seeds": cfg.seeds,
                               "optimizers": list(OPTIMIZERS), "trainer": "bp.train.fit_many(keys=seeds)"},
                         {"optimizers": results})
    k = 25
    smooth = lambda v: np.convolve(v, np.ones(k) / k, mode="valid")  # noqa: E731
    common.plot_panels(cfg.out / f"{cfg.name}.png", [
        {"title": f"training loss ({k}-step mean)", "xlabel": "step", "ylabel": "cross-entropy", "logy": True,
         "lines": {name: (np.arange(k, steps + 1), smooth(c)) for name, c in curves.items()}},
    ], title="optimisers on the MNIST-1D MLP (same init, same batches)")
    return {"optimizers": results}
