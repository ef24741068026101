"""Gradient descent in one dimension: minimise ``f(x) = sin(x)`` from ``x = 2`` with several learning rates.

Near ``x``, ``f(x + h) ~ f(x) + f'(x) h`` (the local linear approximation, error ``O(h^2)``), so the
step ``h = -lr f'(x) = -lr cos(x)`` lowers ``f`` when ``lr`` is small enough. From ``x = 2`` the
nearest minimum is ``x* = 3 pi / 2`` where ``f''(x*) = 1``: a step of ``lr`` multiplies the distance
to ``x*`` by about ``1 - lr``. So a tiny rate crawls, ``lr = 1`` converges in a few steps,
``1 < lr < 2`` overshoots and oscillates around ``x*`` (converging slower), and above 2 ``x*`` is
unstable: ``lr = 3`` never reaches it but settles into a 2-cycle on both sides of it
(3.217 <-> 6.208, inside the basin ``(pi/2, 5 pi/2)``).

In bpjax terms ``x`` is the one weight of ``Dense(1, bias=False)`` applied to the input ``1``,
followed by a ``Sin`` layer (``a = sin(z)``, backward ``dz = da * cos(z)``), and the loss is the
output itself; every rate trains in one ``bp.train.fit_many`` sweep (``optax.sgd``, one step per
chunk so its ``callback`` records ``x`` after every step).

Run: ``python experiments/gradient_descent_1d.py`` (or ``python -m experiments gradient_descent_1d``).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import optax

import bpjax as bp
import results

X0 = 2.0
X_STAR = 3 * math.pi / 2
RATES = {"too small (0.05)": 0.05, "good (1.0)": 1.0, "oscillating (1.8)": 1.8, "too large (3.0)": 3.0}
STEPS, QUICK_STEPS = 30, 15
H = [1.0, 0.3, 0.1, 0.03, 0.01]


def sine_model() -> bp.Layer:
    """``f(x) = sin(x)`` as a model of its weight: ``z = 1 @ W`` (``W = [[x]]``), ``a = sin(z)``."""
    return bp.serial(bp.layers.Dense(1, bias=False), bp.layers.elementwise("Sin", jnp.sin, jnp.cos))


def height(pred, target):
    """The loss is the model's output: ``L = mean(a) = sin(x)`` (``target`` is unused)."""
    return jnp.mean(pred)


HEIGHT = bp.losses.as_loss(height)  # one object: fit keeps its compiled program per loss


def descend(rates, steps: int, progress: bool) -> np.ndarray:
    """``x_{t+1} = x_t - lr f'(x_t)`` for every rate (one ``fit_many`` sweep); ``(len(rates), steps + 1)``."""
    model = sine_model()
    one, zero = jnp.ones((1, 1)), jnp.zeros((1, 1))  # the input 1 and an unused target
    params = ({"W": jnp.full((len(rates), 1, 1), X0)}, ())
    path = [np.full(len(rates), X0)]
    bp.train.fit_many(model, HEIGHT, optax.sgd, params, (one, zero), hparams=jnp.asarray(rates, jnp.float32),
                      steps=steps, batch_size=1, chunk_size=1, verbose=progress,
                      callback=lambda done, r: path.append(np.asarray(r.params[0]["W"][:, 0, 0])))
    return np.stack(path, 1)


def main(argv=None) -> dict:
    args = results.command_line("gradient_descent_1d", __doc__, argv)
    steps = QUICK_STEPS if args.quick else STEPS
    # the local linear approximation and its error, f(x0 + h) - (f(x0) + f'(x0) h) ~ -sin(x0) h^2 / 2
    _, grads = bp.value_and_grad(sine_model(), HEIGHT)(({"W": jnp.full((1, 1), X0)}, ()), jnp.ones((1, 1)),
                                                       jnp.zeros((1, 1)))
    slope = float(grads[0]["W"][0, 0])
    lin = [(h, math.sin(X0 + h) - (math.sin(X0) + slope * h)) for h in H]
    print(f"f(x) = sin(x), x0 = {X0}: f'(x0) = {slope:.4f} (bpjax backward; cos(x0) = {math.cos(X0):.4f}); "
          f"linear-approximation error vs h:")
    for h, err in lin:
        print(f"  h = {h:<5g} error {err:+.2e}   error / h^2 = {err / h**2:+.4f} "
              f"(-sin(x0)/2 = {-math.sin(X0) / 2:+.4f})")

    traj = descend(list(RATES.values()), steps, args.progress)  # (rates, steps + 1)
    rows, metrics = [], {"x_star": X_STAR, "steps": steps, "slope_at_x0": slope, "runs": {}}
    for (label, lr), xs in zip(RATES.items(), traj):
        dist = xs - X_STAR
        sign_changes = int(np.sum(np.diff(np.sign(dist)) != 0))
        r = {"lr": lr, "x_final": float(xs[-1]), "x_last_three": xs[-3:], "f_final": float(np.sin(xs[-1])),
             "distance": float(abs(dist[-1])), "overshoots": sign_changes, "first_step": float(xs[1] - xs[0])}
        metrics["runs"][label] = r
        rows.append([label, lr, r["x_final"], r["f_final"], r["distance"], sign_changes])
    metrics["linear_approximation_error"] = lin
    print(results.markdown(["learning rate", "lr", f"x after {steps} steps", "sin(x)", "|x - 3pi/2|",
                            "times x crossed 3pi/2"], rows))
    config = {"f": "sin(x)", "x0": X0, "rates": RATES, "steps": steps,
              "trainer": "bp.train.fit_many(optax.sgd, hparams=rates)"}

    results.write_csv(args.out / "trajectories.csv", ["step", *RATES], [[t, *traj[:, t]] for t in range(steps + 1)])
    fig, axes = results.figure(len(RATES))
    grid = np.linspace(0, 3 * np.pi, 400)
    for ax, (label, lr), xs in zip(axes, RATES.items(), traj):
        shown = np.clip(xs, grid[0], grid[-1])
        ax.plot(grid, np.sin(grid), c="k", lw=1, label="sin(x)")
        ax.plot(shown, np.sin(shown), marker="o", ms=3, alpha=0.7, label="path")
        ax.plot([X0], [np.sin(X0)], "o", ms=4, label="x0 = 2")
        ax.set(title=f"lr = {lr}", xlabel="x", ylabel="sin(x)")
        ax.legend(fontsize=8)
    fig.suptitle("gradient descent on sin(x) from x = 2")
    results.save_figure(args, fig)
    results.save(args, config, metrics)
    return metrics


if __name__ == "__main__":
    main()
