"""Linear regression by gradient descent on scikit-learn's diabetes data, against the least-squares solution.

Model ``y_hat = x W + b`` (a bpjax ``Dense(1)``), loss ``L = mean((y_hat - y)^2)`` with its hand-written
gradient ``dL/dy_hat = 2 (y_hat - y) / N``, full-batch Adam (``bp.train.fit`` with
``batch_size = N``). Ordinary least squares (``numpy.linalg.lstsq``) on all ten features with the
last 20 rows as the test set (the split of scikit-learn's diabetes example, which fits one feature)
gives a test MSE of 2004.5, computed here, not a published figure; gradient descent on the same
model converges to the same weights and the same error.
The features are standardised for the descent (an affine change that leaves the least-squares
fit's predictions unchanged) because their raw scale (std ~0.05) makes plain steps crawl.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import bpjax as bp
import data
import results

STEPS, QUICK_STEPS = 4000, 1500
LEARNING_RATE = 1.0


def least_squares(x, y):
    """``[W; b] = argmin |[x 1] [W; b] - y|^2`` in float64 (``numpy.linalg.lstsq``)."""
    a = np.concatenate([x, np.ones((x.shape[0], 1))], 1).astype(np.float64)
    sol = np.linalg.lstsq(a, y.astype(np.float64), rcond=None)[0]
    return sol[:-1], sol[-1]


def main(argv=None) -> dict:
    args = results.command_line("regression", __doc__, argv)
    steps = QUICK_STEPS if args.quick else STEPS
    d = data.diabetes()
    W_ls, b_ls = least_squares(d["x"], d["y"])
    mse = lambda p, t: float(np.mean((p - t) ** 2))  # noqa: E731
    ls_test = mse(d["x_test"] @ W_ls + b_ls, d["y_test"])
    mu, sd = d["x"].mean(0), d["x"].std(0)
    x, x_test = (d["x"] - mu) / sd, (d["x_test"] - mu) / sd
    model = bp.layers.Dense(1)
    params = model.init(jax.random.key(0), (10,))[1]
    # Checked at the start, in float64: at the optimum the true gradient is a sum of large residual
    # terms cancelling to ~0, so any two correct programs differ there relative to it by roundoff.
    with jax.enable_x64(True):
        params64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
        report = bp.check_gradients(model, bp.losses.mse, params64, x.astype(np.float64), d["y"])
    r = bp.train.fit(model, bp.losses.mse, optax.adam(LEARNING_RATE), params, (x, d["y"]), steps=steps,
                     batch_size=len(x), backward=args.backward, eval_data=(x_test, d["y_test"]), verbose=args.progress)

    params, losses = r.params, r.history["loss"]
    gd_test = float(r.history["eval_loss"][-1])  # fit's evaluation of the test set after the last step
    pred_test = np.asarray(bp.predict(model, params, jnp.asarray(x_test)))
    W_gd = np.asarray(params["W"])[:, 0] / sd  # back to the raw feature scale
    b_gd = float(params["b"][0] - np.sum(np.asarray(params["W"])[:, 0] * mu / sd))
    weight_rel_diff = float(np.max(np.abs(W_gd - W_ls[:, 0])) / np.max(np.abs(W_ls)))
    ls_train = mse(d["x"] @ W_ls + b_ls, d["y"])
    f1 = lambda v: f"{v:.1f}"  # noqa: E731
    rows = [["least squares (lstsq, float64)", f1(ls_train), f1(ls_test)],
            [f"gradient descent (Adam {LEARNING_RATE:g}, {steps} full-batch steps, {args.backward} backward)",
             f1(losses[-1]), f1(gd_test)]]
    header = ["fit", "train MSE", "test MSE (last 20)"]
    print(results.markdown(header, rows))
    print(f"max |W_gd - W_ls| / max |W_ls| = {weight_rel_diff:.1e}; gradient check manual vs jax.grad "
          f"max rel error {report.max_rel_error:.1e}")
    metrics = {"least_squares_test_mse": ls_test, "least_squares_train_mse": ls_train,
               "gd_test_mse": gd_test, "gd_train_mse": float(losses[-1]), "initial_train_mse": float(losses[0]),
               "weight_rel_diff": weight_rel_diff, "bias_gd": b_gd, "bias_ls": float(b_ls[0]),
               "grad_check_max_rel_error": report.max_rel_error}
    config = {"data": "sklearn load_diabetes, last 20 rows test", "model": "Dense(1)",
              "optimizer": f"adam({LEARNING_RATE})", "steps": steps, "features": "standardised with the training "
              "mean and std", "trainer": "bp.train.fit(batch_size=N)"}

    results.write_csv(args.out / "regression.csv", header, rows)
    fig, (ax1, ax2) = results.figure(2)
    ax1.plot(r.history["step"], losses, label="gradient descent")
    ax1.axhline(ls_train, ls="--", c="gray", lw=1, label="least squares")
    ax1.set(title="training MSE", xlabel="step", ylabel="MSE", yscale="log")
    ax2.plot([25, 350], [25, 350], c="gray", lw=1, label="y = x")
    ax2.plot(d["y_test"][:, 0], pred_test[:, 0], "o", ms=4, label="gradient descent")
    ax2.plot(d["y_test"][:, 0], (d["x_test"] @ W_ls + b_ls)[:, 0], "o", ms=4, label="least squares")
    ax2.set(title="test set: prediction vs target", xlabel="target", ylabel="prediction")
    for ax in (ax1, ax2):
        ax.legend(fontsize=8)
    fig.suptitle("diabetes regression")
    results.save_figure(args, fig)
    results.save(args, config, metrics)
    return metrics


if __name__ == "__main__":
    main()
