"""The MNIST-1D paper's table (Greydanus 2020): logistic regression, MLP, CNN and GRU, mean and spread over seeds.

The paper's recipe for every model: Adam lr 1e-2, batch 100 taken in order (``fit(shuffle=False)``),
6000 steps, softmax cross-entropy; models from :mod:`bpjax.zoo`. The seeds (initialisations) of
one model train side by side in one :func:`bpjax.train.fit_many` call; the backward is bpjax's
hand-written one unless ``--backward autodiff``, and model 0's gradients are checked against
``jax.grad`` in float64 after the last step (fit's ``callback``). Published test accuracy: paper
(Table 1) logistic 32%, MLP 68%, CNN 94%, GRU 91%; the authors' notebook at 6000 steps 31.5, 65.1,
92.3, 89.1.
"""

from __future__ import annotations

import time

import jax
import numpy as np
import optax

import bpjax as bp
from bpjax import zoo
from experiments import common, data

PUBLISHED = {"logistic": (32.0, 31.5), "mlp": (68.0, 65.1), "cnn": (94.0, 92.3), "gru": (91.0, 89.1)}
STEPS, QUICK_STEPS = 6000, 200
QUICK_MODELS = ["logistic", "mlp"]  # --quick: the two that compile fastest (the CNN and GRU take seconds more)
LEARNING_RATE, BATCH = 1e-2, 100
DEFAULT_SEEDS = 3


def run(cfg: common.Config) -> dict:
    steps = QUICK_STEPS if cfg.quick else STEPS
    names = QUICK_MODELS if cfg.quick else list(PUBLISHED)
    d = data.mnist1d()
    xent = bp.losses.softmax_cross_entropy
    rows, results = [], {}
    for name in names:
        model = zoo.MODELS[name]()
        keys = jax.random.split(jax.random.key(1), cfg.seeds)
        checks = common.GradientChecks(model, xent, (d["x"], d["y"]), batch_size=BATCH, steps=steps, every=steps,
                                       log=cfg.log)
        start = time.perf_counter()
        r = bp.train.fit_many(model, xent, optax.adam(LEARNING_RATE), bp.train.init_many(model, keys, d["x"].shape[1:]),
                              (d["x"], d["y"]), keys=keys, steps=steps, batch_size=BATCH,
                              eval_data=(d["x_test"], d["y_test"]), backward=cfg.backward, verbose=cfg.progress,
                              callback=checks)
        seconds = time.perf_counter() - start
        test = 100 * r.history["eval_accuracy"][:, -1]
        train = 100 * common.evaluate_many(model, d["x"], d["y"])(r.params, r.state)[0]
        mean, std = common.mean_std(test)
        results[name] = {"test_acc_percent": mean, "test_acc_std": std, "per_seed": test,
                         "train_acc_percent": float(np.mean(train)), "seconds": seconds,
                         "grad_check_max_rel_error": checks.max_rel_error,
                         "paper": PUBLISHED[name][0], "notebook_6000_steps": PUBLISHED[name][1]}
        rows.append([name, f"{mean:.1f} ± {std:.1f}", PUBLISHED[name][0], PUBLISHED[name][1], f"{seconds:.1f}"])
        cfg.log(f"{name}: test accuracy {mean:.1f} ± {std:.1f}% over {cfg.seeds} seeds ({seconds:.1f} s)")
    header = ["model", f"bpjax test acc % ({cfg.seeds} seeds, {steps} steps)", "paper %", "notebook (6000 steps) %",
              "seconds (compile included)"]
    cfg.log(common.markdown_table(header, rows))
    common.write_csv(cfg.out / "table.csv", header, rows)
    common.write_results(cfg, {"models": names, "optimizer": f"adam({LEARNING_RATE})", "batch": BATCH,
                               "steps": steps, "seeds": cfg.seeds, "trainer": "bp.train.fit_many(shuffle=False)",
                               "published": "Greydanus 2020, Table 1 (paper); the authors' notebook at 6000 steps"},
                         {"models": results})
    common.plot_panels(cfg.out / f"{cfg.name}.png", [
        {"title": "test accuracy: bpjax vs published", "xlabel": "model", "ylabel": "accuracy (%)",
         "points": {"bpjax (mean over seeds)": (names, [results[n]["test_acc_percent"] for n in names]),
                    "paper": (names, [PUBLISHED[n][0] for n in names]),
                    "notebook, 6000 steps": (names, [PUBLISHED[n][1] for n in names])}}],
        title="MNIST-1D")
    return {"models": results}
