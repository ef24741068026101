"""DP-SGD (Abadi et al. 2016) as a backward rule: per-example gradients of the hand-written backward, clipped, noised.

:func:`bpjax.privacy.DPSGD` wraps a model in a layer with the same forward whose backward returns the DP-SGD
gradient instead of the batch gradient. For a batch of ``B`` examples, with ``dy`` the cotangent of
the batch-mean loss (``dy_i = dl_i/dy_i / B``)::

    g_i    = example i's own gradient         (bp.per_example_grads on the cotangent B dy_i)
    dparams = (sum_i clip(g_i, C) + N(0, (sigma C)^2)) / B   (optax.contrib.differentially_private_aggregate)

with ``clip(g, C) = g min(1, C / |g|)`` over all parameters at once and fresh noise from the key
:func:`bpjax.train.fit` hands the (contextual) layer at every step. ``fit`` then applies plain SGD.
The per-example gradients are checked at the start against ``jax.vmap(jax.grad(...))``, and the
private backward (``sigma = 0``) against optax's aggregate of those per-example gradients. The MNIST-1D
MLP (40-100-100-10, ReLU) is trained without privacy, with clipping only (``sigma = 0``) and with
noise multipliers ``sigma`` of 0.5 and 1.0: accuracy falls as noise grows. No privacy accounting
(epsilon) is done here (see :mod:`bpjax.privacy` for what an accountant needs).

Run: ``python experiments/dp_sgd.py [--quick]`` (or ``python -m experiments dp_sgd``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax.contrib import differentially_private_aggregate

import bpjax as bp
import data
import results
from bpjax import layers as L

CLIP = 1.0
NOISE = (None, 0.0, 0.5, 1.0)  # None: plain SGD on the batch gradient (no clipping, no noise)
QUICK_NOISE = (None, 1.0)
LEARNING_RATE = 0.1
STEPS, QUICK_STEPS = 3000, 100
BATCH = 100


def make_model() -> bp.Layer:
    return bp.serial(L.Dense(100), L.Relu(), L.Dense(100), L.Relu(), L.Dense(10))


@functools.partial(jax.jit, static_argnums=(0, 1))
def gradient_checks(model, xent, params, xb, yb, key):
    """Max relative errors (float32): ``bp.per_example_grads`` vs ``jax.vmap(jax.grad(...))``, and the private
    backward without noise vs optax's ``differentially_private_aggregate`` of those per-example gradients."""
    def max_rel(tree, ref):
        return jnp.max(jnp.stack([jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))
                                  for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(ref))]))

    _, g = bp.per_example_grads(model, xent)(params, xb, yb)
    one = lambda p, xi, yi: xent.value(model.forward(p, xi[None])[0], yi[None])  # noqa: E731
    ref = jax.vmap(jax.grad(one), in_axes=(None, 0, 0))(params, xb, yb)
    private = bp.privacy.DPSGD(model, l2_norm_clip=CLIP, noise_multiplier=0.0)
    _, g_private = bp.value_and_grad(private, xent)(params, xb, yb, state=(), key=key)
    aggregate = differentially_private_aggregate(CLIP, 0.0, key)
    g_optax, _ = aggregate.update(g, aggregate.init(params))
    return max_rel(g, ref), max_rel(g_private, g_optax)


def main(argv=None) -> dict:
    args = results.command_line("dp_sgd", __doc__, argv)
    steps = QUICK_STEPS if args.quick else STEPS
    d = data.mnist1d()
    model, xent = make_model(), bp.losses.softmax_cross_entropy
    _, params = model.init(jax.random.key(0), (40,))
    xb, yb = jnp.asarray(d["x"][:BATCH]), jnp.asarray(d["y"][:BATCH])
    check, private_check = (float(e) for e in gradient_checks(model, xent, params, xb, yb, jax.random.key(2)))
    print(f"per-example gradients vs jax.vmap(jax.grad): max relative error {check:.1e} (float32)")
    print(f"private backward (sigma 0) vs optax's differentially_private_aggregate of them: max relative error "
          f"{private_check:.1e} (float32)")
    if args.backward == "autodiff":
        print("note: --backward autodiff differentiates the forward with jax.grad: no clipping, no noise")
    rows, lines, metrics = [], {}, {"per_example_max_rel_error": check, "private_backward_max_rel_error": private_check}
    for sigma in QUICK_NOISE if args.quick else NOISE:
        label = "SGD (non-private)" if sigma is None else f"DP-SGD clip {CLIP:g}, sigma {sigma:g}"
        trained = model if sigma is None else bp.privacy.DPSGD(model, l2_norm_clip=CLIP, noise_multiplier=sigma)
        r = bp.train.fit(trained, xent, optax.sgd(LEARNING_RATE), params, (d["x"], d["y"]), steps=steps,
                         batch_size=BATCH, key=jax.random.key(1), state=None if sigma is None else (),
                         eval_data=(d["x_test"], d["y_test"]), backward=args.backward, verbose=args.progress)
        losses, acc = r.history["loss"], float(r.history["eval_accuracy"][-1])
        lines[label] = np.convolve(losses, np.ones(20) / 20, mode="valid")
        metrics[label] = {"test_accuracy": acc, "final_loss": float(losses[-50:].mean())}
        rows.append([label, float(losses[-50:].mean()), acc])
    header = ["training", "final train loss", "test accuracy"]
    print(results.markdown(header, rows))
    config = {"model": "40-100-100-10 relu", "clip": CLIP, "noise_multipliers": NOISE,
              "optimizer": f"sgd({LEARNING_RATE})", "steps": steps, "batch": BATCH,
              "trainer": "bp.train.fit; DP-SGD as the backward of bp.privacy.DPSGD"}

    results.write_csv(args.out / "dp_sgd.csv", header, rows)
    fig, (ax,) = results.figure(1)
    for label, smooth in lines.items():
        ax.plot(np.arange(len(smooth)), smooth, label=label)
    ax.set(title="training loss (20-step mean)", xlabel="step", ylabel="loss")
    ax.legend(fontsize=8)
    results.save_figure(args, fig)
    results.save(args, config, metrics)
    return metrics


if __name__ == "__main__":
    main()
