"""The top Hessian eigenvalue during training, by power iteration on Hessian-vector products of the manual rules.

``jax.custom_vjp`` blocks forward mode (JAX issue 16049), but bpjax's backward is plain JAX, so
``H v = jax.jvp(manual_grad, (params,), (v,))[1]`` (:mod:`bpjax.second_order`). The MNIST-1D MLP
(40-100-100-10, tanh) is trained with plain SGD at two learning rates ``eta``; the top eigenvalue
``lambda_max`` of the training-loss Hessian (on a fixed batch of 1000 examples) rises during
training until it hovers near ``2 / eta``, the stability limit of gradient descent on a quadratic
(Cohen et al. 2021, "Gradient descent on neural networks typically occurs at the edge of
stability"). Both rates train in one :func:`bpjax.train.fit_many` sweep from the same weights;
its ``callback`` runs the power iteration between chunks. At initialisation the power iteration is
also run with ``jax.grad``'s HVP (forward over reverse autodiff) as a check.

Run: ``python experiments/hessian.py [--quick]`` (or ``python -m experiments hessian``).
"""

from __future__ import annotations

import jax
import jax.flatten_util
import jax.numpy as jnp
import optax

import bpjax as bp
import data
import results
from bpjax import layers as L
from bpjax.second_order import top_eigenvalue

LEARNING_RATES = (0.05, 0.2)
STEPS, QUICK_STEPS = 3000, 100
CHUNKS, QUICK_CHUNKS = 15, 2
BATCH = 100
ITERS, QUICK_ITERS = 50, 20


def make_model() -> bp.Layer:
    return bp.serial(L.Dense(100), L.Tanh(), L.Dense(100), L.Tanh(), L.Dense(10))


def autodiff_top_eigenvalue(model, loss, params, x, y, key, iters):
    """The same power iteration with ``jax.jvp(jax.grad(...))`` for the reference Hessian-vector product."""
    flat, unravel = jax.flatten_util.ravel_pytree(params)

    @jax.jit
    def power(flat, x, y, key):
        g = jax.grad(lambda f: loss.value(model.forward(unravel(f), x)[0], y))
        hv = lambda v: jax.jvp(g, (flat,), (v,))[1]  # noqa: E731

        def step(_, v):
            w = hv(v)
            return w / jnp.linalg.norm(w)

        v = jax.random.normal(key, flat.shape)
        v = jax.lax.fori_loop(0, iters, step, v / jnp.linalg.norm(v))
        return jnp.vdot(v, hv(v))

    return float(power(flat, x, y, key))


def main(argv=None) -> dict:
    args = results.command_line("hessian", __doc__, argv)
    steps, chunks, iters = (QUICK_STEPS, QUICK_CHUNKS, QUICK_ITERS) if args.quick else (STEPS, CHUNKS, ITERS)
    d = data.mnist1d()
    x, y = jnp.asarray(d["x"][:1000]), jnp.asarray(d["y"][:1000])  # the Hessian's batch
    model, xent = make_model(), bp.losses.softmax_cross_entropy
    eig = jax.jit(top_eigenvalue(model, xent, iters=iters))
    _, params0 = model.init(jax.random.key(0), (40,))
    lam_manual = float(eig(params0, x, y, jax.random.key(1))[0])
    lam_auto = autodiff_top_eigenvalue(model, xent, params0, x, y, jax.random.key(1), iters)
    check = abs(lam_manual - lam_auto) / abs(lam_auto)
    print(f"at init: lambda_max {lam_manual:.4f} (manual HVP) vs {lam_auto:.4f} (jax.grad HVP), "
          f"relative difference {check:.1e}")

    # both rates in one fit_many sweep (optimizer factory lr -> optax.sgd(lr)); lambda_max of each between chunks
    many_eig = jax.jit(jax.vmap(eig, in_axes=(0, None, None, None)))
    log = [(0, [lam_manual] * len(LEARNING_RATES))]

    def callback(done, r):
        log.append((done, [float(v) for v in many_eig(r.params, x, y, jax.random.key(done))[0]]))

    n = len(LEARNING_RATES)
    result = bp.train.fit_many(model, xent, optax.sgd, jax.tree.map(lambda a: jnp.stack([a] * n), params0),
                               (d["x"], d["y"]), hparams=jnp.asarray(LEARNING_RATES, jnp.float32), steps=steps,
                               batch_size=BATCH, eval_data=(d["x_test"], d["y_test"]), backward=args.backward,
                               chunk_size=max(1, steps // chunks), verbose=args.progress, callback=callback)

    metrics = {"init_manual": lam_manual, "init_autodiff": lam_auto, "init_rel_diff": check}
    steps_axis = [s for s, _ in log]
    rows, csv_rows = [], []
    for i, lr in enumerate(LEARNING_RATES):
        lams = [lam[i] for _, lam in log]
        acc = float(result.history["eval_accuracy"][i, -1])
        metrics[f"lr_{lr:g}"] = {"steps": steps_axis, "lambda_max": lams, "two_over_lr": 2 / lr,
                                 "max_lambda": max(lams), "test_accuracy": acc}
        rows.append([lr, lams[0], max(lams), lams[-1], 2 / lr, acc])
        csv_rows += [[lr, s, lam] for s, lam in zip(steps_axis, lams)]
    print(results.markdown(["SGD lr", "lambda_max at init", "largest", "final", "2 / lr", "test accuracy"], rows))
    config = {"model": "40-100-100-10 tanh", "optimizer": "sgd", "learning_rates": LEARNING_RATES, "steps": steps,
              "batch": BATCH, "power_iterations": iters, "hessian_batch": "first 1000 training examples",
              "trainer": "bp.train.fit_many(hparams=learning rates)"}

    results.write_csv(args.out / "hessian.csv", ["lr", "step", "lambda_max"], csv_rows)
    fig, (ax,) = results.figure(1)
    for lr in LEARNING_RATES:
        ax.plot(steps_axis, metrics[f"lr_{lr:g}"]["lambda_max"], label=f"SGD lr {lr:g}")
        ax.axhline(2 / lr, ls="--", c="gray", lw=1, label=f"2/lr = {2 / lr:g}")
    ax.set(title="top Hessian eigenvalue (power iteration)", xlabel="step", ylabel="lambda_max")
    ax.legend(fontsize=8)
    results.save_figure(args, fig)
    results.save(args, config, metrics)
    return metrics


if __name__ == "__main__":
    main()
