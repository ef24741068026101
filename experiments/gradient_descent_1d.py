"""Gradient descent in one dimension: minimise ``f(x) = sin(x)`` from ``x = 2`` with several learning rates.

Near ``x``, ``f(x + h) ~ f(x) + f'(x) h`` (the local linear approximation, error ``O(h^2)``), so the
step ``h = -lr f'(x) = -lr cos(x)`` lowers ``f`` when ``lr`` is small enough. From ``x = 2`` the
nearest minimum is ``x* = 3 pi / 2`` where ``f''(x*) = 1``: a step of ``lr`` multiplies the distance
to ``x*`` by about ``1 - lr``. So a tiny rate crawls, ``lr = 1`` converges in a few steps,
``1 < lr < 2`` overshoots and oscillates around ``x*`` (converging slower), and a larger rate
jumps out of the basin.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common

X0 = 2.0
X_STAR = 3 * math.pi / 2
RATES = {"too small (0.05)": 0.05, "good (1.0)": 1.0, "oscillating (1.8)": 1.8, "too large (3.0)": 3.0}
STEPS = 30
H = [1.0, 0.3, 0.1, 0.03, 0.01]


def descend(lr, steps: int):
    """``x_{t+1} = x_t - lr * f'(x_t)`` with ``f'`` from ``jax.grad(jnp.sin)``; returns ``x_0..x_steps``."""
    df = jax.grad(jnp.sin)

    def step(x, _):
        x = x - lr * df(x)
        return x, x

    _, xs = jax.lax.scan(step, jnp.asarray(X0), None, length=steps)
    return jnp.concatenate([jnp.asarray([X0]), xs])


def run(cfg: common.Config) -> dict:
    steps = 15 if cfg.quick else STEPS
    # the local linear approximation and its error, f(x0 + h) - (f(x0) + f'(x0) h) ~ -sin(x0) h^2 / 2
    lin = [(h, math.sin(X0 + h) - (math.sin(X0) + math.cos(X0) * h)) for h in H]
    cfg.log(f"f(x) = sin(x), x0 = {X0}: f'(x0) = cos(x0) = {math.cos(X0):.4f} (jax.grad: "
            f"{float(jax.grad(jnp.sin)(X0)):.4f}); linear-approximation error vs h:")
    for h, err in lin:
        cfg.log(f"  h = {h:<5g} error {err:+.2e}   error / h^2 = {err / h**2:+.4f} "
                f"(-sin(x0)/2 = {-math.sin(X0) / 2:+.4f})")
    traj = np.asarray(jax.vmap(lambda lr: descend(lr, steps))(jnp.asarray(list(RATES.values()))))
    rows, metrics = [], {"x_star": X_STAR, "steps": steps, "runs": {}}
    for (label, lr), xs in zip(RATES.items(), traj):
        dist = xs - X_STAR
        sign_changes = int(np.sum(np.diff(np.sign(dist)) != 0))
        r = {"lr": lr, "x_final": float(xs[-1]), "f_final": float(np.sin(xs[-1])), "distance": float(abs(dist[-1])),
             "overshoots": sign_changes, "first_step": float(xs[1] - xs[0])}
        metrics["runs"][label] = r
        rows.append([label, lr, r["x_final"], r["f_final"], r["distance"], sign_changes])
    header = ["learning rate", "lr", f"x after {steps} steps", "sin(x)", "|x - 3pi/2|", "times x crossed 3pi/2"]
    cfg.log(common.markdown_table(header, rows))
    common.write_csv(cfg.out / "trajectories.csv", ["step", *RATES], [[t, *traj[:, t]] for t in range(steps + 1)])
    metrics["linear_approximation_error"] = lin
    common.write_results(cfg, {"f": "sin(x)", "x0": X0, "rates": RATES, "steps": steps}, metrics)
    grid = np.linspace(0, 3 * np.pi, 400)
    panels = []
    for (label, lr), xs in zip(RATES.items(), traj):
        shown = np.clip(xs, grid[0], grid[-1])
        panels.append({"title": f"lr = {lr}", "xlabel": "x", "ylabel": "sin(x)",
                       "lines": {"sin(x)": (grid, np.sin(grid), {"c": "k", "lw": 1}),
                                 "path": (shown, np.sin(shown), {"marker": "o", "ms": 3, "alpha": 0.7})},
                       "points": {"x0 = 2": ([X0], [np.sin(X0)])}})
    common.plot_panels(cfg.out / "trajectories.png", panels, title="gradient descent on sin(x) from x = 2")
    return metrics
