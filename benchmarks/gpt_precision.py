"""The ``gpt`` experiment's model trained in bfloat16 mixed precision beside float32: the validation loss of each.

The experiment's corpus, model, batch and recipe (``experiments/gpt.py``, ``experiments/text.py``), for a
shorter run (``--steps``, the recipe's warm-up and cosine decay over those steps), trained twice from
the same initial params on the same batches: as it is, in float32, and wrapped in
``bp.precision.MixedPrecision(model, jnp.bfloat16)`` (float32 master params and optimizer state, the
forward and backward in bfloat16). Reported: the validation loss over every non-overlapping window of
the validation text for each run (the bfloat16 run's params evaluated in bfloat16, as trained, and in
float32), their difference (the target: within 0.05 nats), and the training time of each (one ``fit``
call with compilation, the two runs one after the other: a rough figure on a shared machine).

Run: ``python -m benchmarks.gpt_precision [--steps 500] [--out PREFIX]`` (writes ``<out>.json`` and
``<out>.md``, default ``benchmarks/results/gpt_precision``).
"""

from __future__ import annotations

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import bpjax as bp
from benchmarks.measure import RESULTS, format_load, load_average, machine, save
from bpjax import zoo
from experiments import HERE

if str(HERE) not in sys.path:  # the experiment's own settings, imported as its script imports its helpers
    sys.path.insert(0, str(HERE))
import gpt as experiment  # noqa: E402
import text  # noqa: E402


def run(steps: int) -> dict:
    corpus = text.load()
    T, B = experiment.CONTEXT, experiment.BATCH
    starts = np.random.default_rng(0).integers(0, len(corpus.train) - T, steps * B)  # the experiment's batches
    x, y = zoo.token_windows(corpus.train, T, starts=starts)
    vx, vy = zoo.token_windows(corpus.val, T)
    model = zoo.gpt(len(text.VOCAB), context=T, features=experiment.WIDTH, num_layers=experiment.LAYERS,
                    num_heads=experiment.HEADS)
    params = model.init(jax.random.key(0), (T,))[1]
    out = {"steps": steps, "batch": B, "context": T, "model": model.name, "load_average_start": load_average()}
    trained = {}
    for name, m in (("float32", model), ("bf16", bp.precision.MixedPrecision(model, jnp.bfloat16))):
        optimizer, _ = text.recipe(steps)
        t0, c0 = time.perf_counter(), time.process_time()
        r = bp.train.fit(m, zoo.token_cross_entropy, optimizer, params, (x, y), steps=steps, batch_size=B,
                         verbose=False)
        out[name] = {"train_s_with_compile": time.perf_counter() - t0, "train_cpu_s": time.process_time() - c0,
                     "val_loss": text.mean_loss(m, r.params, vx, vy),
                     "train_loss_last_50": float(np.mean(r.history["loss"][-50:]))}
        trained[name] = r.params
        print(f"{name}: validation loss {out[name]['val_loss']:.4f}", flush=True)
    out["bf16"]["val_loss_in_float32"] = text.mean_loss(model, trained["bf16"], vx, vy)
    out["bf16-float32"] = out["bf16"]["val_loss"] - out["float32"]["val_loss"]
    out["load_average_end"] = load_average()
    return out


def markdown(r) -> str:
    f, b = r["float32"], r["bf16"]
    return "\n".join([
        f"## {r['model']}: bfloat16 mixed precision against float32, {r['steps']} steps", "",
        f"The gpt experiment's settings (batch {r['batch']} x {r['context']}, the recipe over {r['steps']} steps); "
        f"load average {format_load(r['load_average_start'])} at the start, {format_load(r['load_average_end'])} at "
        f"the end.", "",
        "| run | validation loss | train loss, last 50 steps | fit s (CPU s), with compilation |", "|---|---|---|---|",
        f"| float32 | {f['val_loss']:.4f} | {f['train_loss_last_50']:.4f} | {f['train_s_with_compile']:.0f} "
        f"({f['train_cpu_s']:.0f}) |",
        f"| bf16 mixed (float32 master params) | {b['val_loss']:.4f} (evaluated in float32: "
        f"{b['val_loss_in_float32']:.4f}) | {b['train_loss_last_50']:.4f} | {b['train_s_with_compile']:.0f} "
        f"({b['train_cpu_s']:.0f}) |", "",
        f"bf16 - float32: {r['bf16-float32']:+.4f} nats per character.", ""])


def main(argv=None) -> dict:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpt_precision", description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=500, help="training steps of each run (default 500)")
    ap.add_argument("--out", default=os.path.join(RESULTS, "gpt_precision"),
                    help="output prefix (.json and .md); default benchmarks/results/gpt_precision")
    args = ap.parse_args(argv)
    r = {"machine": machine(), **run(args.steps)}
    save(args.out, r, markdown(r))
    return r


if __name__ == "__main__":
    main()
