"""A sweep of learning rates on the MNIST-1D MLP, all trained at once: ``fit_many`` over a vector of rates.

``bp.train.fit_many(model, loss, optax.adam, params, ..., hparams=rates)`` trains one
copy of the model per rate in one compiled program (``jax.vmap`` over the rates), every copy from
the same initial weights on the same batches (in order). Too small a rate barely moves the loss in
the step budget; too large a rate makes the loss jump or diverge; in between is a broad good range
(the paper's recipe uses Adam at 1e-2).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import bpjax as bp
from bpjax import zoo
from experiments import common, data

RATES = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0]
QUICK_RATES = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
STEPS, QUICK_STEPS = 3000, 300
BATCH = 100


def run(cfg: common.Config) -> dict:
    rates = QUICK_RATES if cfg.quick else RATES
    steps = QUICK_STEPS if cfg.quick else STEPS
    d = data.mnist1d()
    model = zoo.mnist1d_mlp()
    # one initialisation, copied to every rate; only the rate differs between the runs
    one = bp.train.init_many(model, jax.random.split(jax.random.key(0), 1), d["x"].shape[1:])
    params = jax.tree.map(lambda a: jnp.repeat(a, len(rates), 0), one)
    cfg.log(f"Adam on the MNIST-1D MLP, {len(rates)} learning rates side by side (fit_many), {steps} steps")
    # the optimizer factory hp -> optax.adam(hp) is called with each model's rate inside the program
    r = bp.train.fit_many(model, bp.losses.softmax_cross_entropy, optax.adam, params, (d["x"], d["y"]),
                          hparams=jnp.asarray(rates, jnp.float32), steps=steps, batch_size=BATCH,
                          eval_data=(d["x_test"], d["y_test"]), eval_every=steps // 3, backward=cfg.backward,
                          verbose=cfg.progress)
    h = r.history
    last = min(100, steps // 5)
    tail = h["loss"][:, -last:]
    final_loss = np.nanmean(np.where(np.isfinite(tail), tail, np.nan), 1)
    test_acc = 100 * h["eval_accuracy"][:, -1]
    train_acc = 100 * common.evaluate_many(model, d["x"], d["y"])(r.params, r.state)[0]
    rows = [[lr, float(final_loss[i]), float(train_acc[i]), float(test_acc[i])] for i, lr in enumerate(rates)]
    header = ["learning rate", f"train loss (last {last} steps)", "train acc %", "test acc %"]
    cfg.log(common.markdown_table(header, rows))
    best = int(np.argmax(test_acc))
    metrics = {"rates": rates, "final_train_loss": final_loss, "train_acc_percent": train_acc,
               "test_acc_percent": test_acc, "best_rate": rates[best],
               "best_test_acc_percent": float(test_acc[best])}
    common.write_csv(cfg.out / "sweep.csv", header, rows)
    common.write_results(cfg, {"model": model.name, "optimizer": "adam (learning rate swept)", "steps": steps,
                               "batch": BATCH, "rates": rates, "trainer": "bp.train.fit_many(hparams=rates)"},
                         metrics)
    k = 20
    smooth = lambda v: np.convolve(v, np.ones(k) / k, mode="valid")  # noqa: E731
    common.plot_panels(cfg.out / f"{cfg.name}.png", [
        {"title": "final accuracy vs learning rate", "xlabel": "learning rate", "ylabel": "accuracy (%)",
         "logx": True, "lines": {"train": (rates, train_acc, {"marker": "o"}),
                                 "test": (rates, test_acc, {"marker": "o"})}},
        {"title": f"training loss ({k}-step mean)", "xlabel": "step", "ylabel": "cross-entropy", "logy": True,
         "lines": {f"lr {lr:g}": (np.arange(k, steps + 1), smooth(h["loss"][i])) for i, lr in enumerate(rates)}},
    ], title="learning-rate sweep, Adam, MNIST-1D MLP")
    cfg.log(f"best rate {rates[best]:g}: test accuracy {metrics['best_test_acc_percent']:.1f}%")
    return metrics
