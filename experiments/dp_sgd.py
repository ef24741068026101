"""DP-SGD (Abadi et al. 2016) with per-example gradients from the hand-written backward and optax.

Each step: per-example gradients ``g_i`` (:func:`bpjax.per_example.per_example_grads`, checked at
the start against ``jax.vmap(jax.grad(...))``), then ``optax.contrib.differentially_private_aggregate``
clips each to ``|g_i| <= C``, sums, adds ``N(0, (sigma C)^2)`` noise and divides by the batch size,
then SGD. The MNIST-1D MLP (40-100-100-10, ReLU) is trained without privacy, with clipping only
(``sigma = 0``) and with noise multipliers ``sigma`` of 0.5 and 1.0: accuracy falls as noise grows.
No privacy accounting (epsilon) is done here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax.contrib import differentially_private_aggregate

import bpjax as bp
from bpjax import layers as L
from bpjax.per_example import per_example_grads
from experiments import common, data

CLIP = 1.0
NOISE = (None, 0.0, 0.5, 1.0)  # None: plain SGD on the batch gradient (no clipping, no noise)
LEARNING_RATE = 0.1
STEPS, QUICK_STEPS = 3000, 100
BATCH = 100
QUICK_SECONDS = 60


def make_model() -> bp.Layer:
    return bp.serial(L.Dense(100), L.Relu(), L.Dense(100), L.Relu(), L.Dense(10))


def train(model, params, d, sigma, steps, key, backward):
    xent = bp.losses.softmax_cross_entropy
    private = sigma is not None
    opt = optax.chain(differentially_private_aggregate(CLIP, sigma, key), optax.sgd(LEARNING_RATE)) if private \
        else optax.sgd(LEARNING_RATE)
    pe = per_example_grads(model, xent)
    vg = bp.train.grad_fn(model, xent, backward)
    x, y = jnp.asarray(d["x"]), jnp.asarray(d["y"])
    n_b = x.shape[0] // BATCH

    def body(carry, s):
        params, opt_state = carry
        start = (s % n_b) * BATCH
        xb, yb = jax.lax.dynamic_slice_in_dim(x, start, BATCH), jax.lax.dynamic_slice_in_dim(y, start, BATCH)
        if private:
            losses, grads = pe(params, xb, yb)
            value = losses.mean()
        else:
            value, grads = vg(params, xb, yb)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value

    (params, _), losses = jax.jit(lambda p: jax.lax.scan(body, (p, opt.init(p)), jnp.arange(steps)))(params)
    acc = float(bp.losses.accuracy(bp.predict(model, params, jnp.asarray(d["x_test"])), jnp.asarray(d["y_test"])))
    return np.asarray(losses), acc


def run(cfg: common.Config) -> dict:
    steps = QUICK_STEPS if cfg.quick else STEPS
    d = data.mnist1d()
    model, xent = make_model(), bp.losses.softmax_cross_entropy
    _, params = model.init(jax.random.key(0), (40,))
    xb, yb = jnp.asarray(d["x"][:BATCH]), jnp.asarray(d["y"][:BATCH])
    _, g = per_example_grads(model, xent)(params, xb, yb)
    one = lambda p, xi, yi: xent.value(model.forward(p, xi[None])[0], yi[None])  # noqa: E731
    ref = jax.vmap(jax.grad(one), in_axes=(None, 0, 0))(params, xb, yb)
    check = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))) for a, b in zip(jax.tree.leaves(g),
                                                                                    jax.tree.leaves(ref)))
    cfg.log(f"per-example gradients vs jax.vmap(jax.grad): max relative error {check:.1e} (float32)")
    rows, lines, metrics = [], {}, {"per_example_max_rel_error": check}
    for sigma in NOISE:
        label = "SGD (non-private)" if sigma is None else f"DP-SGD clip {CLIP:g}, sigma {sigma:g}"
        losses, acc = train(model, params, d, sigma, steps, jax.random.key(1), cfg.backward)
        smooth = np.convolve(losses, np.ones(20) / 20, mode="valid")
        lines[label] = (np.arange(len(smooth)), smooth)
        metrics[label] = {"test_accuracy": acc, "final_loss": float(losses[-50:].mean())}
        rows.append([label, float(losses[-50:].mean()), acc])
    cfg.log(common.markdown_table(["training", "final train loss", "test accuracy"], rows))
    common.write_results(cfg, {"model": "40-100-100-10 relu", "clip": CLIP, "noise_multipliers": NOISE,
                               "optimizer": f"sgd({LEARNING_RATE})", "steps": steps, "batch": BATCH}, metrics)
    common.plot_panels(cfg.out / "dp_sgd.png", [{"title": "training loss (20-step mean)", "xlabel": "step",
                                                 "ylabel": "loss", "lines": lines}])
    return metrics
