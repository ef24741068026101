"""Vanishing and exploding gradients: per-layer gradient norms in deep sigmoid, tanh and ReLU networks.

Part 1 repeats Nielsen's measurement (Neural Networks and Deep Learning, ch. 5): a sigmoid network
with four hidden layers of 30 units, weights ``N(0, 1/n_in)`` and biases ``N(0, 1)`` (his
``network2`` defaults), cross-entropy on sigmoid outputs; at initialisation the gradient norm of
each hidden layer's biases ``|dC/db_l|`` (his "speed of learning"), averaged over the examples and
summed over output units, first to last. He used MNIST (784 inputs; 0.00298, 0.0171, 0.0695,
0.285: each layer 4-6x smaller going back); we use scikit-learn's 8x8 digits (64 inputs).

Part 2 trains deep networks (20 hidden layers of 32 units; ``--quick``: 10, three of the networks) on MNIST-1D and
records ``|dL/dW_l|`` per layer with :mod:`bpjax.diagnostics` at initialisation and during training
(``bp.train.fit`` with ``diagnostics.fit_callback``):
sigmoid/tanh/ReLU, naive ``N(0, 1)`` against Glorot (sigmoid, tanh) or He (ReLU) initialisation, and
ReLU with residual connections, batch normalisation and layer normalisation. ``N(0, 1)`` ReLU
weights make the forward signal grow by ``sqrt(32 / 2) = 4`` per layer and the backward signal
likewise, so every ``|dL/dW_l| = |a_{l-1}.T @ dz_l|`` explodes (about ``4^depth``: see the largest
norm) while the first/last ratio stays near 1; Glorot sigmoid nets vanish (ratio << 1). Residual
blocks ``h + relu(W h)`` with He weights double the forward variance per block, so without
normalisation they explode as well (the reason for Fixup-style or normalised residual networks).

Run: ``python experiments/vanishing_gradients.py [--quick]`` (or ``python -m experiments vanishing_gradients``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import bpjax as bp
import data
import results
from bpjax import diagnostics as D
from bpjax import layers as L

NIELSEN_SIZES = [30, 30, 30, 30]
NIELSEN_PUBLISHED = [0.00298, 0.0171, 0.0695, 0.285]  # MNIST, 784 inputs, first to last hidden layer
DEPTH, QUICK_DEPTH = 20, 10
WIDTH = 32
STEPS, QUICK_STEPS = 1000, 60
CHUNKS = 4
BATCH = 100
LEARNING_RATE = 1e-3

ACT = {"sigmoid": L.Sigmoid, "tanh": L.Tanh, "relu": L.Relu}
# name -> (activation, init, extra): extra is "", "residual", "batchnorm" or "layernorm"
CONFIGS = {
    "sigmoid, N(0,1)": ("sigmoid", "normal", ""),
    "sigmoid, Glorot": ("sigmoid", "glorot_normal", ""),
    "tanh, N(0,1)": ("tanh", "normal", ""),
    "tanh, Glorot": ("tanh", "glorot_normal", ""),
    "relu, N(0,1) (exploding)": ("relu", "normal", ""),
    "relu, He": ("relu", "he_normal", ""),
    "relu, He, residual": ("relu", "he_normal", "residual"),
    "relu, N(0,1), batch-norm": ("relu", "normal", "batchnorm"),
    "relu, N(0,1), layer-norm": ("relu", "normal", "layernorm"),
}
QUICK_CONFIGS = ["sigmoid, Glorot", "relu, N(0,1) (exploding)", "relu, He"]  # --quick: one each of vanishing,
# exploding and kept in range


def deep_model(act: str, init: str, extra: str, depth: int, width: int = WIDTH, classes: int = 10) -> bp.Layer:
    """``depth`` hidden layers ``Dense(width) [-> norm] -> act`` (residual: ``h + act(Dense(h))``), then a Dense."""
    layers = []
    for i in range(depth):
        block = [L.Dense(width, init=init)]
        if extra == "batchnorm":
            block.append(L.BatchNorm())
        if extra == "layernorm":
            block.append(L.LayerNorm())
        block.append(ACT[act]())
        if extra == "residual" and i > 0:  # the first layer changes the width
            layers.append(bp.Residual(bp.serial(*block)))
        else:
            layers.extend(block)
    return bp.serial(*layers, L.Dense(classes, init="glorot_normal" if init == "normal" else init))


def dense_norms(entry: dict) -> np.ndarray:
    """``|dL/dW_l|`` of every Dense layer, first to last, from one :func:`bpjax.diagnostics.fit_callback` log entry."""
    return np.array([v for k, v in entry.items() if k.startswith("grad_norm/") and k.endswith("/W")])


def nielsen(key) -> dict:
    """Part 1: bias-gradient norms of the hidden layers of a [64, 30, 30, 30, 30, 10] sigmoid net at init."""
    d = data.digits()
    x = jnp.asarray(d["x"].reshape(len(d["x"]), -1)[:1000])
    y = jax.nn.one_hot(jnp.asarray(d["y"][:1000]), 10)
    layers = []
    for n in NIELSEN_SIZES:
        layers += [L.Dense(n, init="lecun_normal"), L.Sigmoid()]
    model = bp.serial(*layers, L.Dense(10, init="lecun_normal"))
    _, params = model.init(key, (x.shape[1],))
    bkeys = jax.random.split(jax.random.fold_in(key, 1), len(params))
    params = tuple(dict(p, b=jax.random.normal(k, p["b"].shape)) if p else p for p, k in zip(params, bkeys))
    diag = D.diagnostics(model, bp.losses.binary_cross_entropy)(params, x, y)
    # binary_cross_entropy is a mean over the 10 outputs too; Nielsen's cost sums them: x 10
    norms = np.array([10 * float(diag["grad_norm"][2 * i]["b"]) for i in range(len(NIELSEN_SIZES))])
    return {"ours": norms, "factors": norms[1:] / norms[:-1],
            "published_factors": np.array(NIELSEN_PUBLISHED[1:]) / np.array(NIELSEN_PUBLISHED[:-1])}


def train_one(name, cfg_tuple, depth, steps, d, key, backward, progress):
    act, init, extra = cfg_tuple
    model = deep_model(act, init, extra, depth)
    _, params = model.init(key, (d["x"].shape[1],))
    state = bp.init_state(model, key, (d["x"].shape[1],)) if bp.is_contextual(model) else None
    probe = (jnp.asarray(d["x"][:500]), jnp.asarray(d["y"][:500]))
    xent = bp.losses.softmax_cross_entropy
    entries = []
    callback = D.fit_callback(model, xent, *probe, entries)  # diagnostics of the probe batch between chunks
    callback(0, bp.train.FitResult(params, None, () if state is None else state, {}))  # and at initialisation
    result = bp.train.fit(model, xent, optax.adam(LEARNING_RATE), params, (d["x"], d["y"]), steps=steps,
                          batch_size=BATCH, state=state, key=key, eval_data=(d["x_test"], d["y_test"]),
                          backward=backward, chunk_size=max(1, steps // CHUNKS), verbose=progress, callback=callback)
    log = [{"step": e["step"], "norms": dense_norms(e)} for e in entries]
    return log, float(result.history["eval_accuracy"][-1])


def main(argv=None) -> dict:
    args = results.command_line("vanishing_gradients", __doc__, argv)
    depth, steps = (QUICK_DEPTH, QUICK_STEPS) if args.quick else (DEPTH, STEPS)
    key = jax.random.key(0)
    part1 = nielsen(key)
    print("Part 1: Nielsen's sigmoid net at init, |dC/db_l| per hidden layer, first to last")
    print(results.markdown(
        ["", *[f"layer {i + 1}" for i in range(4)], "factor per layer going back"],
        [["ours (digits, 64 inputs)", *part1["ours"], " ".join(f"{f:.2f}" for f in part1["factors"])],
         ["Nielsen (MNIST, 784 inputs)", *NIELSEN_PUBLISHED,
          " ".join(f"{f:.2f}" for f in part1["published_factors"])]]))

    d = data.mnist1d()
    rows, csv_rows, curves, metrics = [], [], {}, {"nielsen": part1, "configs": {}}
    for name in QUICK_CONFIGS if args.quick else CONFIGS:
        log, acc = train_one(name, CONFIGS[name], depth, steps, d, key, args.backward, args.progress)
        init, end = log[0]["norms"], log[-1]["norms"]
        ratio0 = float(init[0] / init[-2]) if np.all(np.isfinite(init)) else float("nan")
        ratio1 = float(end[0] / end[-2]) if np.all(np.isfinite(end)) else float("nan")
        metrics["configs"][name] = {"init_norms": init, "final_norms": end, "first_over_last_hidden_init": ratio0,
                                    "first_over_last_hidden_final": ratio1, "max_norm_init": float(np.max(init)),
                                    "test_accuracy": acc}
        rows.append([name, ratio0, ratio1, float(np.max(init)), acc])
        curves[name] = log
        for r in log:
            csv_rows += [[name, r["step"], i + 1, float(v)] for i, v in enumerate(r["norms"])]
    print(f"\nPart 2: {depth} hidden layers of {WIDTH}, MNIST-1D, Adam {LEARNING_RATE:g}, {steps} steps; "
          f"|dL/dW_1| / |dL/dW_{depth}| (first over last hidden layer): <<1 vanishing, >>1 exploding")
    print(results.markdown(["network", "ratio at init", f"ratio after {steps} steps", "largest |dL/dW| at init",
                            "test accuracy"], rows))
    config = {"depth": depth, "width": WIDTH, "steps": steps, "batch": BATCH, "optimizer": f"adam({LEARNING_RATE})",
              "data": "MNIST-1D; part 1: sklearn digits"}

    results.write_csv(args.out / "grad_norms.csv", ["network", "step", "layer", "grad_norm_W"], csv_rows)
    fig, (ax1, ax2, ax3) = results.figure(3)
    ax1.plot(np.arange(1, 5), part1["ours"], label="ours (digits)")
    ax1.plot(np.arange(1, 5), NIELSEN_PUBLISHED, ls="--", label="Nielsen (MNIST)")
    ax1.set(title="Nielsen's sigmoid net at init", xlabel="hidden layer", ylabel="|dC/db|", yscale="log")
    layers = np.arange(1, depth + 2)
    for n, c in curves.items():
        ax2.plot(layers, np.where(np.isfinite(c[0]["norms"]), c[0]["norms"], np.nan), label=n)
        ax3.plot(layers, np.where(np.isfinite(c[-1]["norms"]), c[-1]["norms"], np.nan), label=n)
    ax2.set(title="at initialisation", xlabel="layer", ylabel="|dL/dW|", yscale="log")
    ax3.set(title=f"after {steps} steps", xlabel="layer", ylabel="|dL/dW|", yscale="log")
    for ax in (ax1, ax2, ax3):
        ax.legend(fontsize=8)
    fig.suptitle("vanishing and exploding gradients")
    results.save_figure(args, fig)
    results.save(args, config, metrics)
    return metrics


if __name__ == "__main__":
    main()
