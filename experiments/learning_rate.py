"""A sweep of learning rates on the MNIST-1D MLP, all trained at once: ``jax.vmap`` over a vector of rates.

The rate is a value in the optimiser's state (``optax.inject_hyperparams(optax.adam)``), so one
compiled program trains every rate side by side from the same initial weights on the same
batches. Too small a rate barely moves the loss in the step budget; too large a rate makes the
loss jump or diverge; in between is a broad good range (the paper's recipe uses Adam at 1e-2).
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
    optimizer = optax.inject_hyperparams(optax.adam)(learning_rate=0.0)  # the rate lives in the state
    # one initialisation, copied to every rate; only the optimiser state differs between runs
    params, state = common.init_runs(model, jax.random.split(jax.random.key(0), 1), d["x"].shape[1:])
    params, state = jax.tree.map(lambda a: jnp.repeat(a, len(rates), 0), (params, state))
    opt_state = jax.vmap(lambda p, lr: optax.inject_hyperparams(optax.adam)(learning_rate=lr).init(p))(
        params, jnp.asarray(rates, jnp.float32))
    cfg.log(f"Adam on the MNIST-1D MLP, {len(rates)} learning rates side by side (vmap), {steps} steps")
    h = common.train(model, bp.losses.softmax_cross_entropy, optimizer, d, params, opt_state, state=state,
                     steps=steps, batch=BATCH, backward=cfg.backward, eval_every=steps // 3,
                     desc="learning_rate", progress=cfg.extra.get("progress", True), verbose=cfg.verbose)
    last = min(100, steps // 5)
    final_loss = np.nanmean(np.where(np.isfinite(h.loss[-last:]), h.loss[-last:], np.nan), 0)
    rows = [[lr, float(final_loss[i]), float(100 * h.train_acc[-1, i]), float(100 * h.test_acc[-1, i])]
            for i, lr in enumerate(rates)]
    header = ["learning rate", f"train loss (last {last} steps)", "train acc %", "test acc %"]
    cfg.log(common.markdown_table(header, rows))
    best = int(np.argmax(h.test_acc[-1]))
    metrics = {"rates": rates, "final_train_loss": final_loss, "train_acc_percent": 100 * h.train_acc[-1],
               "test_acc_percent": 100 * h.test_acc[-1], "best_rate": rates[best],
               "best_test_acc_percent": float(100 * h.test_acc[-1, best]), "seconds": h.seconds}
    common.write_csv(cfg.out / "sweep.csv", header, rows)
    common.write_results(cfg, {"model": model.name, "optimizer": "adam (learning rate swept)", "steps": steps,
                               "batch": BATCH, "rates": rates}, metrics)
    k = 20
    smooth = lambda v: np.convolve(v, np.ones(k) / k, mode="valid")  # noqa: E731
    common.plot_panels(cfg.out / "learning_rate.png", [
        {"title": "final accuracy vs learning rate", "xlabel": "learning rate", "ylabel": "accuracy (%)",
         "logx": True, "lines": {"train": (rates, 100 * h.train_acc[-1], {"marker": "o"}),
                                 "test": (rates, 100 * h.test_acc[-1], {"marker": "o"})}},
        {"title": f"training loss ({k}-step mean)", "xlabel": "step", "ylabel": "cross-entropy", "logy": True,
         "lines": {f"lr {lr:g}": (np.arange(k, steps + 1), smooth(h.loss[:, i])) for i, lr in enumerate(rates)}},
    ], title="learning-rate sweep, Adam, MNIST-1D MLP")
    cfg.log(f"best rate {rates[best]:g}: test accuracy {metrics['best_test_acc_percent']:.1f}%")
    return metrics
