"""scikit-learn's 8x8 digits with a small Conv2D network, beside the SVC of scikit-learn's own example.

Data: ``load_digits()`` (1797 images, 8x8, 16 grey levels); the first half (898) trains, the
second half (899) tests, as in scikit-learn's "Recognizing hand-written digits" example, whose
``SVC(gamma=0.001)`` on the raw pixels scores 0.969 (computed here again with scikit-learn).

Model, channels last, ``x: (B, 8, 8, 1)`` scaled to [0, 1]::

    Conv2D(16, 3, SAME) Relu  -> (B, 8, 8, 16)
    MaxPool2D(2)              -> (B, 4, 4, 16)
    Conv2D(32, 3, SAME) Relu  -> (B, 4, 4, 32)
    Flatten Dense(10)         -> (B, 10) logits

trained with Adam on softmax cross-entropy by :func:`bpjax.train.fit_many` (one model per seed),
batches in order (the ragged tail of 898 = 14 x 64 + 2 is dropped), every gradient from the
hand-written backward (``--backward autodiff`` for ``jax.grad``).

Gradient check (float64, manual vs ``jax.grad``): at init and after training. The images have
exact-zero backgrounds, so many 2x2 max-pool windows hold tied maxima (all ``relu(b)``); there the
max has no unique derivative, and bpjax sends the whole gradient to the first maximum (PyTorch's
rule) while ``jax.grad`` splits it among the ties: two valid subgradients that differ in ``db``
and ``dx``. The check therefore runs on the batch plus ``N(0, 1e-3^2)`` jitter, which breaks every
tie; the raw-batch difference is recorded beside it as ``tie_subgradient_rel_difference``.

Run: ``python experiments/digits.py [--quick] [--seeds N]`` (or ``python -m experiments digits``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import bpjax as bp
import data
import results
from bpjax import layers as L

PUBLISHED_SVC_ACCURACY = 0.969  # scikit-learn example: SVC(gamma=0.001), first half trains, second half tests
SVC_GAMMA = 0.001
LEARNING_RATE = 3e-3
STEPS, QUICK_STEPS = 2000, 300
BATCH = 64
EVAL_EVERY = 100
JITTER = 1e-3
SEEDS = 3  # without --seeds


def cnn(classes: int = 10) -> bp.Layer:
    """``(B, 8, 8, 1) -> (B, classes)``: Conv2D(16, 3) Relu MaxPool2D(2) Conv2D(32, 3) Relu Flatten Dense."""
    return bp.serial(L.Conv2D(16, 3), L.Relu(), L.MaxPool2D(2), L.Conv2D(32, 3), L.Relu(), L.Flatten(),
                     L.Dense(classes), name="digits_cnn")


def half_split() -> dict:
    """The digits split in halves: ``x: (898, 8, 8, 1)``, ``x_test: (899, 8, 8, 1)`` in [0, 1]."""
    from sklearn.datasets import load_digits

    return data.digits(n_train=len(load_digits().images) // 2)


def svc_accuracy(d: dict) -> float:
    """Test accuracy of scikit-learn's ``SVC(gamma=0.001)`` on the raw 0..16 pixels (the example's setting)."""
    from sklearn.svm import SVC

    flat = lambda x: np.asarray(x).reshape(len(x), -1) * 16.0  # noqa: E731  back to the 16 grey levels
    return float(SVC(gamma=SVC_GAMMA).fit(flat(d["x"]), d["y"]).score(flat(d["x_test"]), d["y_test"]))


def gradient_check(model: bp.Layer, params, x, y, *, jitter: float) -> bp.GradientReport:
    """Manual vs ``jax.grad`` in float64 at ``x + jitter * N(0, 1)`` (``jitter=0``: the raw batch).

    Float64: late in training the loss nears zero and float32 gradients computed in two orders differ
    by more than roundoff while both are right; in float64 check_gradients' ``rtol=1e-10`` tells them apart.
    """
    x = np.asarray(x, np.float64) + jitter * np.random.default_rng(1).standard_normal(np.shape(x))
    with jax.enable_x64(True):
        params64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
        return bp.check_gradients(model, bp.losses.softmax_cross_entropy, params64, x, y)


def main(argv=None) -> dict:
    args = results.command_line("digits", __doc__, argv, seeds=SEEDS)
    steps = QUICK_STEPS if args.quick else STEPS
    d = half_split()
    svc = svc_accuracy(d)
    print(f"SVC(gamma={SVC_GAMMA}) on the first half: test accuracy {svc:.4f} (published {PUBLISHED_SVC_ACCURACY})")
    model = cnn()
    keys = jax.random.split(jax.random.key(0), args.seeds)
    params = bp.train.init_many(model, keys, d["x"].shape[1:])
    model0 = lambda tree: jax.tree.map(lambda a: a[0], tree)  # the first seed's params
    xb, yb = d["x"][:BATCH], d["y"][:BATCH]
    checks = {"init": gradient_check(model, model0(params), xb, yb, jitter=JITTER)}
    x, y = jnp.asarray(d["x"]), jnp.asarray(d["y"])
    train_accuracy = jax.jit(jax.vmap(lambda p: bp.losses.accuracy(bp.predict(model, p, x), y)))
    train_curve, trained = [], {}

    def callback(done, r):  # every EVAL_EVERY steps
        train_curve.append(np.asarray(train_accuracy(r.params)))
        if done == steps:  # model 0 after training: tie-broken, and on the raw batch
            trained["jitter"] = gradient_check(model, model0(r.params), xb, yb, jitter=JITTER)
            trained["raw"] = gradient_check(model, model0(r.params), xb, yb, jitter=0.0)

    r = bp.train.fit_many(model, bp.losses.softmax_cross_entropy, optax.adam(LEARNING_RATE), params,
                          (d["x"], d["y"]), keys=keys, steps=steps, batch_size=BATCH,
                          eval_data=(d["x_test"], d["y_test"]), eval_every=EVAL_EVERY, backward=args.backward,
                          chunk_size=EVAL_EVERY, verbose=args.progress, callback=callback)
    h = r.history  # loss: (seeds, steps); eval_accuracy: (seeds, evaluations)
    checks["trained"], ties = trained["jitter"], trained["raw"]
    for when, report in checks.items():
        print(f"gradient check ({when}, float64, jitter {JITTER:g}): manual vs jax.grad max rel error "
              f"{report.max_rel_error:.1e} ({'OK' if report.ok else 'MISMATCH'})")
    print(f"raw batch (tied max-pool windows): first-maximum vs split subgradients differ by "
          f"{ties.max_rel_error:.2g} (relative)")

    test, train_acc = h["eval_accuracy"][:, -1], train_curve[-1]
    metrics = {
        "test_accuracy": float(test.mean()), "test_accuracy_std": float(test.std(ddof=1)) if test.size > 1 else 0.0,
        "test_accuracy_per_seed": test, "train_accuracy": float(train_acc.mean()),
        "svc_test_accuracy": svc, "published_svc_accuracy": PUBLISHED_SVC_ACCURACY,
        "final_train_loss": float(h["loss"][:, -20:].mean()), "initial_loss": float(h["loss"][:, 0].mean()),
        "grad_check_max_rel_error": max(r.max_rel_error for r in checks.values()),
        "grad_checks": {k: r.max_rel_error for k, r in checks.items()},
        "tie_subgradient_rel_difference": ties.max_rel_error,
        "n_train": len(d["x"]), "n_test": len(d["x_test"]),
    }
    header = ["model", "train acc", "test acc (second half)"]
    rows = [[f"bpjax CNN ({args.backward} backward, {steps} Adam steps, {args.seeds} seed(s))",
             metrics["train_accuracy"], metrics["test_accuracy"]],
            [f"scikit-learn SVC(gamma={SVC_GAMMA}), computed here", "", svc],
            ["SVC, published (scikit-learn example)", "", PUBLISHED_SVC_ACCURACY]]
    print(results.markdown(header, rows))
    config = {"data": "sklearn load_digits, first half train / second half test", "model": model.name,
              "layers": "Conv2D(16,3) Relu MaxPool2D(2) Conv2D(32,3) Relu Flatten Dense(10)",
              "optimizer": f"adam({LEARNING_RATE})", "steps": steps, "batch": BATCH, "seeds": args.seeds,
              "grad_check_jitter": JITTER, "trainer": "bp.train.fit_many(keys=seeds, shuffle=False)"}

    results.write_csv(args.out / "digits.csv", header, rows)
    fig, (ax1, ax2) = results.figure(2)
    ax1.plot(h["eval_step"][0], np.stack(train_curve).mean(1), label="train")
    ax1.plot(h["eval_step"][0], h["eval_accuracy"].mean(0), label="test")
    ax1.axhline(svc, ls="--", c="gray", lw=1, label=f"SVC test {svc:.3f}")
    ax1.set(title="accuracy", xlabel="step", ylabel="accuracy", ylim=(0.8, 1.005))
    ax2.plot(h["step"][0], h["loss"].mean(0), label="batch loss")
    ax2.set(title="training loss", xlabel="step", ylabel="cross-entropy", yscale="log")
    for ax in (ax1, ax2):
        ax.legend(fontsize=8)
    fig.suptitle("8x8 digits: a small CNN with hand-written backward")
    results.save_figure(args, fig)
    results.save(args, config, metrics)
    return metrics


if __name__ == "__main__":
    main()
