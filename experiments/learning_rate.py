"""A sweep of learning rates on the MNIST-1D MLP, all trained at once: ``fit_many`` over a vector of rates.

``bp.train.fit_many(model, loss, optax.adam, params, ..., hparams=rates)`` trains one
copy of the model per rate in one compiled program (``jax.vmap`` over the rates), every copy from
the same initial weights on the same batches (in order). Too small a rate barely moves the loss in
the step budget; too large a rate makes the loss jump or diverge; in between is a broad good range
(the paper's recipe uses Adam at 1e-2).

Run: ``python experiments/learning_rate.py`` (or ``python -m experiments learning_rate``).
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

RATES = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0]
QUICK_RATES = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
STEPS, QUICK_STEPS = 3000, 300
BATCH = 100


def main(argv=None) -> dict:
    args = results.command_line("learning_rate", __doc__, argv)
    rates = QUICK_RATES if args.quick else RATES
    steps = QUICK_STEPS if args.quick else STEPS
    d = data.mnist1d()
    model = zoo.mnist1d_mlp()
    # one initialisation, copied to every rate; only the rate differs between the runs
    one = bp.train.init_many(model, jax.random.split(jax.random.key(0), 1), d["x"].shape[1:])
    params = jax.tree.map(lambda a: jnp.repeat(a, len(rates), 0), one)
    print(f"Adam on the MNIST-1D MLP, {len(rates)} learning rates side by side (fit_many), {steps} steps")
    # the optimizer factory hp -> optax.adam(hp) is called with each model's rate inside the program
    r = bp.train.fit_many(model, bp.losses.softmax_cross_entropy, optax.adam, params, (d["x"], d["y"]),
                          hparams=jnp.asarray(rates, jnp.float32), steps=steps, batch_size=BATCH,
                          eval_data=(d["x_test"], d["y_test"]), eval_every=steps // 3, backward=args.backward,
                          verbose=args.progress)

    h = r.history  # loss: (rates, steps); eval_accuracy: (rates, evaluations)
    last = min(100, steps // 5)
    tail = h["loss"][:, -last:]
    final_loss = np.nanmean(np.where(np.isfinite(tail), tail, np.nan), 1)
    test_acc = 100 * h["eval_accuracy"][:, -1]
    x, y = jnp.asarray(d["x"]), jnp.asarray(d["y"])
    train_accuracy = jax.jit(jax.vmap(lambda p: bp.losses.accuracy(bp.predict(model, p, x), y)))
    train_acc = 100 * np.asarray(train_accuracy(r.params))
    best = int(np.argmax(test_acc))
    metrics = {"rates": rates, "final_train_loss": final_loss, "train_acc_percent": train_acc,
               "test_acc_percent": test_acc, "best_rate": rates[best],
               "best_test_acc_percent": float(test_acc[best])}
    rows = [[lr, float(final_loss[i]), float(train_acc[i]), float(test_acc[i])] for i, lr in enumerate(rates)]
    header = ["learning rate", f"train loss (last {last} steps)", "train acc %", "test acc %"]
    print(results.markdown(header, rows))
    print(f"best rate {rates[best]:g}: test accuracy {metrics['best_test_acc_percent']:.1f}%")
    config = {"model": model.name, "optimizer": "adam (learning rate swept)", "steps": steps, "batch": BATCH,
              "rates": rates, "trainer": "bp.train.fit_many(hparams=rates)"}

    results.write_csv(args.out / "sweep.csv", header, rows)
    fig, (ax1, ax2) = results.figure(2)
    ax1.plot(rates, train_acc, marker="o", label="train")
    ax1.plot(rates, test_acc, marker="o", label="test")
    ax1.set(title="final accuracy vs learning rate", xlabel="learning rate", ylabel="accuracy (%)", xscale="log")
    k = 20
    for i, lr in enumerate(rates):
        ax2.plot(np.arange(k, steps + 1), np.convolve(h["loss"][i], np.ones(k) / k, mode="valid"), label=f"lr {lr:g}")
    ax2.set(title=f"training loss ({k}-step mean)", xlabel="step", ylabel="cross-entropy", yscale="log")
    for ax in (ax1, ax2):
        ax.legend(fontsize=8)
    fig.suptitle("learning-rate sweep, Adam, MNIST-1D MLP")
    results.save_figure(args, fig)
    results.save(args, config, metrics)
    return metrics


if __name__ == "__main__":
    main()
