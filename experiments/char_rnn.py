"""Character-level LSTM and GRU language models by hand-written BPTT, truncated, with the state carried between chunks.

The same corpus, split, batch shape (12 x 64), step count (2000) and optimiser recipe as the ``gpt``
experiment (:mod:`experiments.text`), and the same parameter budget (0.81M): Embedding(96, 64),
LSTM(405) or GRU(472), Dense(96) (:func:`bpjax.zoo.char_rnn`). Training reads the training text
as 12 parallel streams cut into chunks of 64 characters (:func:`experiments.text.streams`); batch
``s`` holds chunk ``s`` of every stream, and the recurrent state the previous batch ended in is
the next batch's initial state (:func:`bpjax.zoo.TruncatedBPTT`, a contextual layer whose state
``bp.train.fit`` threads from step to step; ``shuffle=False``). The gradient of each chunk stops
at its start: truncated backpropagation through time over streams of any length.

Measured, per cell: the validation loss on the GPT's windows (every non-overlapping 64-character
window, each from a zero state: the GPT's own measure, a context of at most 64) and on the
validation text read as 12 carried streams (the RNN's own strength: its context is everything
before), the bigram floor on the same windows, float64 gradient checks against ``jax.grad``
(with the carried state), curves and samples.

Run: ``python experiments/char_rnn.py [--quick]`` (or ``python -m experiments char_rnn``).
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

EMBED = 64
FEATURES = {"lstm": 405, "gru": 472}  # 0.81M parameters each, the GPT's budget
BATCH, CONTEXT, STEPS = 12, 64, 2000  # the gpt experiment's
EVAL_EVERY, EVAL_WINDOWS = 250, 96  # the validation curve: the gpt experiment's subset of windows
PROMPTS = ("def ", "class ", "    return ", "import ")
SAMPLE_LENGTH = 300
QUICK = {"features": {"lstm": 64, "gru": 64}, "context": 32, "steps": 80, "eval_every": 40}  # no final check


def streamed_loss(model, params, ids, *, batch: int, context: int) -> float:
    """The mean next-token loss over ``ids`` read as ``batch`` carried streams (train-mode forward: the
    state carries from chunk to chunk; no parameter changes), one compiled scan over the chunks."""
    x, y = text.streams(ids, batch, context)
    x, y = (jnp.asarray(a.reshape(-1, batch, context)) for a in (x, y))
    state0 = bp.init_state(model, jax.random.key(0), (context,))

    @jax.jit
    def total(params, x, y):
        def body(state, xy):
            logits, _, state = bp.apply(model, params, xy[0], state=state, train=True)
            return state, zoo.token_cross_entropy.value(logits, xy[1])

        return jnp.mean(jax.lax.scan(body, state0, (x, y))[1])

    return float(total(params, x, y))


def run_cell(args, cell: str, corpus, features: int, context: int, steps: int, eval_every: int, eval_data) -> dict:
    """Train one cell's language model with the state carried between batches; its model, params, state, history
    and metrics."""
    model = zoo.char_rnn(len(text.VOCAB), cell=cell, features=features, embed_features=EMBED, batch_size=BATCH)
    params = model.init(jax.random.key(0), (context,))[1]
    state = bp.init_state(model, jax.random.key(0), (context,))
    n_params = sum(a.size for a in jax.tree.leaves(params))
    x, y = text.streams(corpus.train, BATCH, context)
    optimizer, _ = text.recipe(steps)
    print(f"{model.name}: {n_params / 1e6:.2f}M parameters, {len(x) // BATCH} chunks of {BATCH} x {context} "
          f"per pass over the training streams; {args.backward} backward, {steps} steps")
    first = text.float64_check(model, params, x[:BATCH], y[:BATCH], state=state)
    t0 = time.perf_counter()
    r = bp.train.fit(model, zoo.token_cross_entropy, optimizer, params, (x, y), steps=steps, batch_size=BATCH,
                     state=state, eval_data=eval_data, eval_every=eval_every, backward=args.backward,
                     verbose=args.progress)
    seconds = time.perf_counter() - t0
    b = (steps - 1) % (len(x) // BATCH)  # the last step's batch, from the state the run ended in: truncation
    last = first if args.quick else text.float64_check(model, r.params, x[b * BATCH:(b + 1) * BATCH],
                                                       y[b * BATCH:(b + 1) * BATCH], state=r.state)
    vx, vy = zoo.token_windows(corpus.val, context)  # every non-overlapping window
    n = (len(vx) // 256) * 256
    return {"model": model, "params": r.params, "state": r.state, "history": r.history, "metrics": {
        "parameters": n_params, "val_loss_windows": text.mean_loss(model, r.params, vx, vy, state=r.state),
        "val_loss_streamed": streamed_loss(model, r.params, corpus.val, batch=BATCH, context=context),
        "bigram_val_loss": text.bigram_loss(corpus.train, vx[:n], vy[:n]),
        "train_loss_last_100": float(np.mean(r.history["loss"][-100:])),
        "grad_check_max_rel_error": max(first.max_rel_error, last.max_rel_error),
        "train_seconds_with_compile": seconds}}


def main(argv=None) -> dict:
    args = results.command_line("char_rnn", __doc__, argv)
    q = args.quick
    features = QUICK["features"] if q else FEATURES
    context, steps = (QUICK["context"], QUICK["steps"]) if q else (CONTEXT, STEPS)
    eval_every = QUICK["eval_every"] if q else EVAL_EVERY
    corpus = text.load()
    vx, vy = zoo.token_windows(corpus.val, context)  # every non-overlapping window
    pick = np.random.default_rng(1).permutation(len(vx))[:EVAL_WINDOWS]  # the GPT's validation subset
    runs = {cell: run_cell(args, cell, corpus, features[cell], context, steps, eval_every, (vx[pick], vy[pick]))
            for cell in ("lstm", "gru")}
    texts = {cell: text.samples(r["model"], r["params"], PROMPTS, 80 if q else SAMPLE_LENGTH,
                                context=context, temperature=0.8, top_k=20, state=r["state"])
             for cell, r in runs.items()}
    metrics = {cell: r["metrics"] for cell, r in runs.items()}
    metrics["samples"] = texts
    metrics["curve"] = {cell: {"eval_step": r["history"]["eval_step"], "eval_loss": r["history"]["eval_loss"]}
                        for cell, r in runs.items()}
    for cell in runs:
        m = metrics[cell]
        print(f"{cell}: validation loss {m['val_loss_windows']:.3f} nats/char on {context}-character windows, "
              f"{m['val_loss_streamed']:.3f} streamed (bigram floor {m['bigram_val_loss']:.3f}); worst manual "
              f"vs jax.grad rel error {m['grad_check_max_rel_error']:.1e}")
    print(texts["lstm"][0])
    config = {"models": {cell: r["model"].name for cell, r in runs.items()}, "embed": EMBED, "features": features,
              "batch": BATCH, "context": context, "steps": steps, "optimizer": "as the gpt experiment",
              "data": corpus.info, "truncated_bptt": f"{BATCH} carried streams, chunks of {context}",
              "trainer": "bp.train.fit(shuffle=False) with the state carried (TruncatedBPTT)"}

    results.write_csv(args.out / "curve.csv", ["step", *[f"{c} validation loss (subset)" for c in runs]],
                      zip(runs["lstm"]["history"]["eval_step"], *[r["history"]["eval_loss"] for r in runs.values()]))
    with open(args.out / "samples.txt", "w") as f:
        for cell, outs in texts.items():
            f.write(f"==== {cell}, temperature 0.8, top_k 20 ====\n" + "\n---\n".join(outs) + "\n\n")
    fig, (ax,) = results.figure(1)
    for cell, r in runs.items():
        loss = r["history"]["loss"]
        k = min(50, len(loss))
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(np.arange(len(smooth)) + k, smooth, label=f"{cell} train ({k}-step mean)")
        ax.plot(r["history"]["eval_step"], r["history"]["eval_loss"], marker="o", label=f"{cell} validation (subset)")
    bigram = metrics["lstm"]["bigram_val_loss"]
    ax.axhline(bigram, ls="--", c="gray", lw=1, label=f"bigram floor {bigram:.2f}")
    ax.set(title="loss (nats per character)", xlabel="step", ylabel="cross-entropy", ylim=(0.5, 4.7))
    ax.legend(fontsize=8)
    fig.suptitle(f"char-RNN on Python source (truncated BPTT), {args.backward} backward")
    results.save_figure(args, fig)
    results.save(args, config, metrics)
    return metrics


if __name__ == "__main__":
    main()
