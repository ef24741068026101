"""A character-level GPT trained by hand-written backpropagation, at nanoGPT's CPU shape, beside the bigram floor.

Corpus: 1.1 MB of Python's own standard-library source (:mod:`experiments.text`: fixed module list,
96-character vocabulary, first 90% train, last 10% validation). Model: :func:`bpjax.zoo.gpt` with
GPT-2's defaults, token and learned position embeddings, 4 pre-norm transformer blocks (4 heads,
width 128, tanh-GELU MLP of 512), a final LayerNorm and the output projection tied to the token
embedding (0.81M parameters); weights drawn from ``N(0, 0.02^2)``, the two projections of each block
back into the residual stream from ``N(0, 0.02^2 / 8)`` (GPT-2's ``c_proj``, ``2 L = 8``).
Recipe: nanoGPT's ``train_shakespeare_char`` at its CPU settings (context 64, batch 12, 2000
iterations, no dropout): AdamW (``b2=0.99``, weight decay 0.1 on matrices), learning rate warmed up
over 100 steps to 1e-3 and cosine-decayed to 1e-4, gradient clipping at norm 1. Each step's batch is
12 windows at random offsets of the training text (drawn once for the run), trained by
:func:`bpjax.train.fit` with the chosen backward.

Measured: the validation loss (nats per character) over every non-overlapping 64-character window
of the validation text, beside a count-based bigram model's loss on the same windows (the floor any
trained model must beat); a float64 check of every gradient against ``jax.grad`` at the start and the
end; samples; and what a key-value cache could save in :func:`bpjax.zoo.generate` (the time per
generated token with a whole-window forward beside a one-token forward, a cached step's floor).
Anchor: nanoGPT's CPU run on Tiny Shakespeare reaches about 1.88 on its validation split; Python
source is more predictable, so lower numbers are expected here.

Run: ``python experiments/gpt.py [--quick]`` (or ``python -m experiments gpt``).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

import bpjax as bp
import results
import text
from bpjax import zoo

LAYERS, HEADS, WIDTH, CONTEXT, BATCH, STEPS = 4, 4, 128, 64, 12, 2000
EVAL_EVERY, EVAL_WINDOWS = 250, 96
QUICK = {"layers": 2, "heads": 4, "width": 64, "context": 32, "steps": 150, "eval_every": 50}
PROMPTS = ("def ", "class ", "    return ", "import ")
SAMPLE_LENGTH = 300
NANOGPT_SHAKESPEARE_VAL = 1.88


def _seconds(fn, repeats=5):
    jax.block_until_ready(fn())
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return best


def kv_cache_estimate(model, params, context: int, steps: int = 200) -> dict:
    """Per generated token: :func:`bpjax.zoo.generate` (a whole-window forward each) vs one forward of one token.

    A key-value cache replaces the window forward by a one-token step, so the one-token forward bounds
    what it could reach: ``saving <= generate_ms - one_token_ms`` per token.
    """
    prompt = jnp.zeros((1, 1), jnp.int32)
    gen = _seconds(lambda: zoo.generate(model, params, prompt, steps, key=jax.random.key(0), context=context), 2)
    one = jax.jit(lambda p, x: bp.predict(model, p, x))
    one_ms = 1e3 * _seconds(lambda: one(params, prompt), 20)
    gen_ms = 1e3 * gen / steps
    return {"generate_ms_per_token": gen_ms, "one_token_forward_ms": one_ms,
            "most_a_cache_could_save_ms_per_token": gen_ms - one_ms, "tokens_timed": steps}


def main(argv=None) -> dict:
    args = results.command_line("gpt", __doc__, argv)
    q = args.quick
    layers, heads, width, context = ((QUICK["layers"], QUICK["heads"], QUICK["width"], QUICK["context"]) if q
                                     else (LAYERS, HEADS, WIDTH, CONTEXT))
    steps, eval_every = (QUICK["steps"], QUICK["eval_every"]) if q else (STEPS, EVAL_EVERY)
    corpus = text.load()
    starts = np.random.default_rng(0).integers(0, len(corpus.train) - context, steps * BATCH)  # nanoGPT's offsets
    x, y = zoo.token_windows(corpus.train, context, starts=starts)  # (steps * BATCH, context): one batch a step
    vx, vy = zoo.token_windows(corpus.val, context)  # every non-overlapping window
    pick = np.random.default_rng(1).permutation(len(vx))[:EVAL_WINDOWS]  # the curve's validation subset
    ex, ey = vx[pick], vy[pick]
    model = zoo.gpt(len(text.VOCAB), context=context, features=width, num_layers=layers, num_heads=heads)
    params = model.init(jax.random.key(0), (context,))[1]
    n_params = sum(a.size for a in jax.tree.leaves(params))
    optimizer, schedule = text.recipe(steps)
    print(f"{model.name}: {n_params / 1e6:.2f}M parameters; {corpus.info['characters']} characters of "
          f"{corpus.info['source']}; {args.backward} backward, {steps} steps of {BATCH} x {context}")

    check_at = 4  # windows of the first batch for the float64 gradient checks
    first = text.float64_check(model, params, x[:check_at], y[:check_at])
    print(f"step     0: manual vs jax.grad (float64) max rel error {first.max_rel_error:.2e} "
          f"({'OK' if first.ok else 'MISMATCH'})")
    t0 = time.perf_counter()
    r = bp.train.fit(model, zoo.token_cross_entropy, optimizer, params, (x, y), steps=steps, batch_size=BATCH,
                     eval_data=(ex, ey), eval_every=eval_every, backward=args.backward, verbose=args.progress)
    train_seconds = time.perf_counter() - t0
    last = text.float64_check(model, r.params, x[-check_at:], y[-check_at:])
    h = r.history

    val = text.mean_loss(model, r.params, vx, vy)
    bigram = text.bigram_loss(corpus.train, vx[:(len(vx) // 256) * 256], vy[:(len(vx) // 256) * 256])
    settings = ((0.8, 20),) if q else ((1.0, None), (0.8, 20))  # (temperature, top_k)
    texts = {f"temperature {t}" + (f", top_k {k}" if k else ""): text.samples(
        model, r.params, PROMPTS, 80 if q else SAMPLE_LENGTH, context=context, temperature=t, top_k=k)
        for t, k in settings}
    kv = None if q else kv_cache_estimate(model, r.params, context)
    metrics = {
        "val_loss": val, "bigram_val_loss": bigram, "uniform_loss": float(np.log(len(text.VOCAB))),
        "train_loss_last_100": float(np.mean(h["loss"][-100:])), "initial_loss": float(h["loss"][0]),
        "val_windows": (len(vx) // 256) * 256, "parameters": n_params,
        "grad_check_max_rel_error": max(first.max_rel_error, last.max_rel_error),
        "grad_checks": [(0, first.max_rel_error), (steps, last.max_rel_error)],
        "train_seconds_with_compile": train_seconds,
        "nanogpt_tiny_shakespeare_val_loss": NANOGPT_SHAKESPEARE_VAL, "generation": kv,
        "curve": {"eval_step": h["eval_step"], "eval_loss": h["eval_loss"]}, "samples": texts,
    }
    print(f"validation loss {val:.3f} nats/char (bigram floor {bigram:.3f}, uniform {np.log(len(text.VOCAB)):.3f}); "
          f"training {train_seconds:.0f} s with compilation; worst manual vs jax.grad rel error "
          f"{metrics['grad_check_max_rel_error']:.1e}")
    if kv:
        print(f"generate {kv['generate_ms_per_token']:.2f} ms/token, a one-token forward (a cached step's floor) "
              f"{kv['one_token_forward_ms']:.2f} ms")
    print(texts[next(iter(texts))][0])
    config = {"model": model.name, "layers": layers, "heads": heads, "width": width, "context": context,
              "batch": BATCH, "steps": steps, "optimizer": "clip_by_global_norm(1) + adamw(b2=0.99, wd=0.1 on "
              "matrices), warm-up 100 to 1e-3, cosine to 1e-4", "loss": "token_cross_entropy",
              "data": corpus.info, "eval": f"{EVAL_WINDOWS} validation windows every {eval_every} steps; the final "
              f"loss on every validation window", "trainer": "bp.train.fit(shuffle=False), random windows"}

    results.write_csv(args.out / "curve.csv", ["step", "validation loss (subset)"], zip(h["eval_step"], h["eval_loss"]))
    with open(args.out / "samples.txt", "w") as f:
        for label, outs in texts.items():
            f.write(f"==== {label} ====\n" + "\n---\n".join(outs) + "\n\n")
    fig, (ax1, ax2) = results.figure(2)
    smooth = np.convolve(h["loss"], np.ones(50) / 50, mode="valid") if steps >= 50 else h["loss"]
    ax1.plot(np.arange(len(smooth)) + (steps - len(smooth) + 1), smooth, label="train (50-step mean)")
    ax1.plot(h["eval_step"], h["eval_loss"], marker="o", label="validation (subset)")
    ax1.axhline(bigram, ls="--", c="gray", lw=1, label=f"bigram floor {bigram:.2f}")
    ax1.set(title="loss (nats per character)", xlabel="step", ylabel="cross-entropy", ylim=(0.5, 4.7))
    ax2.plot(h["step"], [float(schedule(s)) for s in h["step"] - 1], label="warm-up + cosine")
    ax2.set(title="learning rate", xlabel="step", ylabel="lr")
    for ax in (ax1, ax2):
        ax.legend(fontsize=8)
    fig.suptitle(f"{model.name} on Python source, {args.backward} backward")
    results.save_figure(args, fig)
    results.save(args, config, metrics)
    return metrics


if __name__ == "__main__":
    main()
