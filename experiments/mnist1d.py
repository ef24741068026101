"""The MNIST-1D paper's table (Greydanus 2020): logistic regression, MLP, CNN and GRU, mean and spread over seeds.

The paper's recipe for every model: Adam lr 1e-2, batch 100 taken in order, 6000 steps, softmax
cross-entropy; models from :mod:`bpjax.zoo`. Seeds (initialisations) are trained side by side with
``vmap``; the backward is bpjax's hand-written one unless ``--backward autodiff``. Published test
accuracy: paper logistic 32%, MLP 68%, CNN 94%, GRU 91%; the authors' notebook at 6000 steps
31.5, 65.1, 92.3, 89.1.
"""

from __future__ import annotations

import jax
import optax

import bpjax as bp
from experiments import common, data

PUBLISHED = {"logistic": (32.0, 31.5), "mlp": (68.0, 65.1), "cnn": (94.0, 92.3), "gru": (91.0, 89.1)}
STEPS, QUICK_STEPS = 6000, 200
QUICK_MODELS = ["logistic", "mlp", "cnn"]  # the GRU's 40-step recurrence takes longer to compile and run
LEARNING_RATE, BATCH = 1e-2, 100
DEFAULT_SEEDS = 3


def run(cfg: common.Config) -> dict:
    from bpjax import zoo

    steps = QUICK_STEPS if cfg.quick else STEPS
    names = QUICK_MODELS if cfg.quick else list(PUBLISHED)
    d = data.mnist1d()
    rows, results = [], {}
    for name in names:
        model = zoo.MODELS[name]()
        optimizer = optax.adam(LEARNING_RATE)
        params, state = common.init_runs(model, jax.random.split(jax.random.key(1), cfg.seeds), d["x"].shape[1:])
        h = common.train(model, bp.losses.softmax_cross_entropy, optimizer, d, params,
                         jax.vmap(optimizer.init)(params), state=state, steps=steps, batch=BATCH,
                         backward=cfg.backward, eval_every=steps, check_every=steps, desc=name,
                         progress=cfg.extra.get("progress", True), verbose=cfg.verbose)
        mean, std = common.mean_std(100 * h.final_test_acc)
        results[name] = {"test_acc_percent": mean, "test_acc_std": std, "per_seed": 100 * h.final_test_acc,
                         "train_acc_percent": float(100 * h.train_acc[-1].mean()), "seconds": h.seconds,
                         "grad_check_max_rel_error": max(e for _, e in h.grad_checks),
                         "paper": PUBLISHED[name][0], "notebook_6000_steps": PUBLISHED[name][1]}
        rows.append([name, f"{mean:.1f} ± {std:.1f}", PUBLISHED[name][0], PUBLISHED[name][1], f"{h.seconds:.1f}"])
        cfg.log(f"{name}: test accuracy {mean:.1f} ± {std:.1f}% over {cfg.seeds} seeds ({h.seconds:.1f} s)")
    header = ["model", f"bpjax test acc % ({cfg.seeds} seeds, {steps} steps)", "paper %", "notebook (6000 steps) %",
              "seconds"]
    cfg.log(common.markdown_table(header, rows))
    common.write_csv(cfg.out / "table.csv", header, rows)
    common.write_results(cfg, {"models": names, "optimizer": f"adam({LEARNING_RATE})", "batch": BATCH,
                               "steps": steps, "seeds": cfg.seeds}, {"models": results})
    common.plot_panels(cfg.out / "table.png", [
        {"title": "test accuracy: bpjax vs published", "xlabel": "model", "ylabel": "accuracy (%)",
         "points": {"bpjax (mean over seeds)": (names, [results[n]["test_acc_percent"] for n in names]),
                    "paper": (names, [PUBLISHED[n][0] for n in names])}}],
        title="MNIST-1D")
    return {"models": results}
