"""The chain rule by hand: one scalar, then a 2-layer network traced step by step, each step checked against jax.grad.

Part 1: ``L = (w x - 10)^2`` at ``w = 2, x = 3``. Forward ``u = w x = 6``, ``e = u - 10 = -4``,
``L = e^2 = 16``; backward ``dL/de = 2 e = -8``, ``de/du = 1``, ``du/dw = x = 3``, so
``dL/dw = 2 e * 1 * x = -24`` (and ``dL/dx = 2 e w = -16``), beside ``jax.grad`` and bpjax's
``serial(Dense(1, bias=False))`` with the mse loss.

Part 2: ``z1 = x W1 + b1``, ``a1 = sigmoid(z1)``, ``z2 = a1 W2 + b2``, ``L = mean((z2 - y)^2)``;
backward in the reverse order: ``dz2 = 2 (z2 - y) / N``, ``dW2 = a1^T dz2``, ``db2 = sum dz2``,
``da1 = dz2 W2^T``, ``dz1 = da1 * a1 (1 - a1)``, ``dW1 = x^T dz1``, ``db1 = sum dz1``,
``dx = dz1 W1^T``. Every quantity is compared with ``jax.grad`` in float64, and the whole gradient
with bpjax's own ``serial(Dense, Sigmoid, Dense)`` backward.

Run: ``python experiments/chain_rule.py`` (or ``python -m experiments chain_rule``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import bpjax as bp
import results

W, X, TARGET = 2.0, 3.0, 10.0
B, D_IN, D_HIDDEN, D_OUT = 4, 3, 5, 2
RTOL = 1e-12  # float64: hand-written and autodiff gradients agree to roundoff (~1e-16 per operation)


def scalar() -> dict:
    """Part 1: ``L = (w x - 10)^2`` by hand, by ``jax.grad`` and by bpjax's ``Dense(1, bias=False)`` with mse."""
    # forward, one elementary operation per line
    u = W * X              # u = w x
    e = u - TARGET         # e = u - 10
    L = e ** 2             # L = e^2
    # backward, in the reverse order of the forward pass
    dL_de = 2 * e          # L = e^2      =>  dL/de = 2 e
    dL_du = dL_de * 1.0    # e = u - 10   =>  de/du = 1
    dL_dw = dL_du * X      # u = w x      =>  du/dw = x
    dL_dx = dL_du * W      #                  du/dx = w
    ref_w, ref_x = jax.grad(lambda w, x: (w * x - TARGET) ** 2, argnums=(0, 1))(W, X)
    # the same through bpjax: Dense(1) without bias (W = [[w]]) on x = [[3]], mse against [[10]]
    model = bp.serial(bp.layers.Dense(1, bias=False))
    value, (grads, dx) = bp.value_and_grad(model, bp.losses.mse, wrt_input=True)(
        ({"W": jnp.array([[W]])},), jnp.array([[X]]), jnp.array([[TARGET]]))
    print(f"L = (w x - 10)^2 at w = {W:g}, x = {X:g}:  u = w x = {u:g},  e = u - 10 = {e:g},  L = e^2 = {L:g}")
    print(f"  dL/de = 2e = {dL_de:g};  dL/du = dL/de * 1 = {dL_du:g};  dL/dw = dL/du * x = {dL_dw:g}  "
          f"(jax.grad: {float(ref_w):g});  dL/dx = dL/du * w = {dL_dx:g}  (jax.grad: {float(ref_x):g})")
    print(f"  bpjax serial(Dense(1, bias=False)) with mse: L = {float(value):g}, "
          f"dL/dW = {float(grads[0]['W'][0, 0]):g}, dL/dx = {float(dx[0, 0]):g}")
    return {"L": L, "dL_dw": dL_dw, "dL_dx": dL_dx, "jax_dL_dw": float(ref_w), "jax_dL_dx": float(ref_x),
            "bpjax_L": float(value), "bpjax_dL_dw": float(grads[0]["W"][0, 0]), "bpjax_dL_dx": float(dx[0, 0])}


def two_layer() -> dict:
    """Part 2: a 2-layer sigmoid network's backward line by line, each quantity against ``jax.grad`` (float64)."""
    k = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(k[0], (B, D_IN), jnp.float64)
    y = jax.random.normal(k[1], (B, D_OUT), jnp.float64)
    W1 = jax.random.normal(k[2], (D_IN, D_HIDDEN), jnp.float64) / np.sqrt(D_IN)
    W2 = jax.random.normal(k[3], (D_HIDDEN, D_OUT), jnp.float64) / np.sqrt(D_HIDDEN)
    b1, b2 = jnp.full((D_HIDDEN,), 0.1, jnp.float64), jnp.full((D_OUT,), -0.1, jnp.float64)
    N = y.size

    # forward: z, a per layer
    z1 = x @ W1 + b1
    a1 = jax.nn.sigmoid(z1)
    z2 = a1 @ W2 + b2
    L = jnp.mean((z2 - y) ** 2)
    # backward: dz, dW, db, da_prev per layer, in the reverse order of the forward pass
    dz2 = 2 * (z2 - y) / N          # L = mean((z2 - y)^2)
    dW2 = a1.T @ dz2                # z2 = a1 W2 + b2
    db2 = dz2.sum(0)
    da1 = dz2 @ W2.T
    dz1 = da1 * a1 * (1 - a1)       # a1 = sigmoid(z1)
    dW1 = x.T @ dz1                 # z1 = x W1 + b1
    db1 = dz1.sum(0)
    dx = dz1 @ W1.T

    def loss(W1, b1, W2, b2, x):
        return jnp.mean((jax.nn.sigmoid(x @ W1 + b1) @ W2 + b2 - y) ** 2)

    # intermediate gradients from jax.grad: differentiate L with respect to each intermediate value
    ref = dict(zip(["dW1", "db1", "dW2", "db2", "dx"], jax.grad(loss, argnums=(0, 1, 2, 3, 4))(W1, b1, W2, b2, x)))
    ref["dz2"] = jax.grad(lambda z2: jnp.mean((z2 - y) ** 2))(z2)
    ref["da1"] = jax.grad(lambda a1: jnp.mean((a1 @ W2 + b2 - y) ** 2))(a1)
    ref["dz1"] = jax.grad(lambda z1: jnp.mean((jax.nn.sigmoid(z1) @ W2 + b2 - y) ** 2))(z1)
    manual = {"dz2": dz2, "dW2": dW2, "db2": db2, "da1": da1, "dz1": dz1, "dW1": dW1, "db1": db1, "dx": dx}
    maths = {"dz2": "2 (z2 - y) / N", "dW2": "a1^T dz2", "db2": "sum_rows dz2", "da1": "dz2 W2^T",
             "dz1": "da1 * a1 * (1 - a1)", "dW1": "x^T dz1", "db1": "sum_rows dz1", "dx": "dz1 W1^T"}
    print(f"\n2-layer network, B={B}: x ({B},{D_IN}) -> Dense({D_HIDDEN}) -> sigmoid -> Dense({D_OUT}) -> MSE")
    print(f"  forward:  z1 = x W1 + b1 {tuple(z1.shape)};  a1 = sigmoid(z1) {tuple(a1.shape)};  "
          f"z2 = a1 W2 + b2 {tuple(z2.shape)};  L = mean((z2 - y)^2) = {float(L):.6f}")
    print("  backward (reverse order), each against jax.grad in float64:")
    errors = {}
    for name, value in manual.items():
        err = float(jnp.max(jnp.abs(value - ref[name])) / jnp.max(jnp.abs(ref[name])))
        errors[name] = err
        print(f"    {name:<4}= {maths[name]:<22} shape {str(tuple(value.shape)):<8} |{name}|max = "
              f"{float(jnp.max(jnp.abs(value))):.4e}   rel err vs jax.grad {err:.1e}")
    model = bp.serial(bp.layers.Dense(D_HIDDEN), bp.layers.Sigmoid(), bp.layers.Dense(D_OUT))
    params = ({"W": W1, "b": b1}, (), {"W": W2, "b": b2})
    value, (dparams, dx_lib) = bp.value_and_grad(model, bp.losses.mse, wrt_input=True)(params, x, y)
    lib = {"dW1": dparams[0]["W"], "db1": dparams[0]["b"], "dW2": dparams[2]["W"], "db2": dparams[2]["b"],
           "dx": dx_lib}
    lib_err = max(float(jnp.max(jnp.abs(v - manual[k]))) for k, v in lib.items())
    print(f"  bpjax serial(Dense, Sigmoid, Dense) backward vs the lines above: max abs difference {lib_err:.1e}")
    return {"loss": float(L), "rel_error_vs_jax_grad": errors, "max_rel_error": max(errors.values()),
            "bpjax_max_abs_difference": lib_err, "bpjax_loss": float(value), "maths": maths,
            "shapes": {k: tuple(v.shape) for k, v in manual.items()}}


def main(argv=None) -> dict:
    args = results.command_line("chain_rule", __doc__, argv)
    with jax.enable_x64(True):
        metrics = {"scalar": scalar(), "two_layer": two_layer(), "rtol": RTOL}
    one, two = metrics["scalar"], metrics["two_layer"]
    metrics["all_match"] = (one["bpjax_dL_dw"] == one["jax_dL_dw"] == one["dL_dw"]
                            and one["bpjax_dL_dx"] == one["jax_dL_dx"] == one["dL_dx"]
                            and two["max_rel_error"] < RTOL and two["bpjax_max_abs_difference"] < RTOL)
    print(f"\nall hand-written gradients match jax.grad (rtol {RTOL:g}): {metrics['all_match']}")
    config = {"w": W, "x": X, "target": TARGET, "network": f"{D_IN}-{D_HIDDEN}-{D_OUT} sigmoid, MSE",
              "batch": B, "dtype": "float64"}

    header = ["quantity", "maths", "shape", "rel error vs jax.grad (float64)"]
    rows = [[k, two["maths"][k], "x".join(map(str, two["shapes"][k])), e]
            for k, e in two["rel_error_vs_jax_grad"].items()]
    results.write_csv(args.out / "chain_rule.csv", header, rows)
    fig, (ax1, ax2) = results.figure(2)
    w = np.linspace(0.0, 5.0, 101)
    ax1.plot(w, (w * X - TARGET) ** 2, label="L(w)")
    ax1.plot(w, one["L"] + one["bpjax_dL_dw"] * (w - W), ls="--", label=f"slope dL/dw = {one['bpjax_dL_dw']:g} (bpjax)")
    ax1.plot([W], [one["L"]], "o", ms=4, label="w = 2")
    ax1.set(title="L(w) = (w x - 10)^2 at x = 3, and its tangent at w = 2", xlabel="w", ylabel="L", ylim=(-20, 110))
    floor = 1e-18  # an exact match (error 0) is drawn at this floor of the log scale
    names = list(two["rel_error_vs_jax_grad"])
    ax2.plot(names, [max(two["rel_error_vs_jax_grad"][k], floor) for k in names], "o", ms=4, label="float64")
    ax2.axhline(RTOL, ls="--", c="gray", lw=1, label=f"rtol {RTOL:g}")
    ax2.set(title="2-layer net: each backward quantity vs jax.grad", xlabel="quantity",
            ylabel=f"relative error (0 drawn at {floor:g})", yscale="log")
    for ax in (ax1, ax2):
        ax.legend(fontsize=8)
    fig.suptitle("the chain rule by hand")
    results.save_figure(args, fig)
    results.save(args, config, metrics)
    return metrics


if __name__ == "__main__":
    main()
