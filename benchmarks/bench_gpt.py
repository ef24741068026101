"""GPT training speed: hand-written backward vs ``jax.grad`` vs PyTorch eager on transformers' GPT-2, side by side.

Two shapes of :func:`bpjax.zoo.gpt` (GPT-2's layout and defaults: tanh GELU, no dropout, the output
projection tied to the token embedding), each trained with gradient clipping at norm 1 and AdamW
(``lr=1e-3, b2=0.99``, weight decay 0.1) on random token windows (:func:`bpjax.zoo.token_windows` of a
random stream: the timings do not depend on the values):

- ``nanogpt``: the ``gpt`` experiment's shape (nanoGPT's CPU settings): 4 layers, 4 heads, width 128,
  context 64, vocabulary 96 (0.81M parameters), batch 12.
- ``gpt2_small``: GPT-2 small, 12 layers, 12 heads, width 768, vocabulary 50257, position table of
  1024 (124M parameters); on a CPU a short sequence and a small batch: 4 windows of 128 tokens.
- ``--quick``: a 2-layer toy of the same code path, one round (a smoke run).

The contenders, each running its own copy of the same initial weights:

- ``manual``, ``autodiff``: ``bp.train.make_step(..., donate=True)``, the hand-written backward and
  ``jax.grad`` of the same forward; ``bf16``: the same manual step on
  ``bp.precision.MixedPrecision(model, jnp.bfloat16)`` (float32 master params, bfloat16 maths).
- ``torch``: PyTorch eager on ``transformers``' ``GPT2LMHeadModel`` (GPT-2's own ``gelu_new``, its
  default ``sdpa`` attention), the weights written by :func:`bpjax.zoo.save_gpt2` and read by
  ``from_pretrained``; ``torch.optim.AdamW`` and ``clip_grad_norm_``; the loss is the same
  next-token cross-entropy on the same windows.

A timed call is ``steps`` training steps of each. All contenders alternate call by call
(:func:`benchmarks.measure.interleaved`, the order flipped each round), with the float32 matmul
``n x n x n`` that sets the ceiling (jax's and PyTorch's); the best of the rounds counts, in wall
and in process CPU time. FLOPs per token: ``6 N + 12 L T D`` (``N`` the matmul weights, the tied
output projection included; the second term the attention scores and their use, forward and
backward, PaLM's appendix B).

Also measured: the agreement of the contenders (loss and every gradient at the initial weights,
PyTorch's gradients mapped back through :func:`bpjax.zoo.load_gpt2`), the bytes each keeps for the
backward (bpjax's residual pytree, what ``jax.vjp`` saves, the tensors PyTorch's autograd saves),
and, at GPT-2 small's shape, where the manual step's time goes: in the same rounds, its gradient
alone, the gradient's every ``dot_general`` replayed alone shape by shape and the optimizer alone,
and the gradient's other operations ranked by a trace (:mod:`benchmarks.hlo_profile`). At nanoGPT's
shape the replay would time the dispatch of 99 small dots more than the dots: it is left out.

Run: ``python -m benchmarks.bench_gpt [--shape nanogpt|gpt2_small] [--quick] [--repeats 2] [--no-torch]
[--out PREFIX]`` (writes ``<out>.json`` and ``<out>.md``, default ``benchmarks/results/bench_<shape>``,
``bench_gpt`` for ``nanogpt``); ``python -m benchmarks`` runs the ``nanogpt`` shape as one of its sections.
"""

from __future__ import annotations

import os
import tempfile
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import bpjax as bp
from benchmarks import hlo_profile
from benchmarks.measure import RESULTS, format_load, interleaved, load_average, machine, residual_bytes, save, timed
from bpjax import zoo


class Shape(NamedTuple):
    """A GPT's shape, the batch of one step, the steps of one timed call and the side of the ceiling matmul."""

    vocab: int
    layers: int
    heads: int
    width: int
    context: int  # rows of the position table
    seq: int      # tokens per window
    batch: int
    steps: int    # training steps per timed call
    matmul: int = 2048
    profile: bool = True  # where the manual step's time goes (its dots replayed one call each: large dots only)


SHAPES = {"nanogpt": Shape(96, 4, 4, 128, 64, 64, 12, 20, profile=False),
          "gpt2_small": Shape(50257, 12, 12, 768, 1024, 128, 4, 1),
          "quick": Shape(512, 2, 4, 64, 64, 32, 2, 2, matmul=512)}
LOSS = zoo.token_cross_entropy


def optimizer():
    import optax

    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3, b1=0.9, b2=0.99, weight_decay=0.1))


def flops_per_token(s: Shape) -> int:
    """``6 N + 12 L T D``: ``N`` = every matmul weight (attention, MLP, the tied output ``E^T``)."""
    N = s.vocab * s.width + s.layers * 12 * s.width ** 2
    return 6 * N + 12 * s.layers * s.seq * s.width


def batches(s: Shape, seed: int = 0):
    """``x, y: (steps, batch, seq)`` int32: random windows of a random token stream and their next tokens."""
    rng = np.random.default_rng(seed)
    stream = rng.integers(0, s.vocab, 50 * s.steps * s.batch * s.seq).astype(np.int32)
    return zoo.token_windows(stream, s.seq, starts=rng.integers(0, len(stream) - s.seq, (s.steps, s.batch)))


# ---------------------------------------------------------------- the contenders


def bpjax_runner(model, params, x, y, backward: str = "manual"):
    """``run() -> last loss``: ``steps`` calls of one compiled training step, continuing from its donated buffers."""
    opt = optimizer()
    step = bp.train.make_step(model, LOSS, opt, backward=backward, checks=False, donate=True)
    carry = {"p": jax.tree.map(jnp.copy, params)}
    carry["s"] = opt.init(carry["p"])
    x, y = jnp.asarray(x), jnp.asarray(y)

    def run():
        for i in range(len(x)):
            carry["p"], carry["s"], value = step(carry["p"], carry["s"], x[i], y[i])
        return value

    return run


def torch_model(folder: str):
    """``GPT2LMHeadModel.from_pretrained(folder)`` in training mode (the dropout rates of the checkpoint: 0)."""
    from transformers import GPT2LMHeadModel
    from transformers.utils import logging

    logging.set_verbosity_error()  # a toy vocabulary's bos/eos ids and the load report are not news here
    logging.disable_progress_bar()
    return GPT2LMHeadModel.from_pretrained(folder).train()


def torch_loss(net, X, Y):
    """The next-token cross-entropy of ``net``'s logits on ``X`` against ``Y`` (the windows' own targets, unshifted)."""
    import torch

    logits = net(X).logits
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), Y.reshape(-1))


def torch_ids(a):
    """Token ids as a ``torch.long`` tensor (a copy)."""
    import torch

    return torch.tensor(np.asarray(a), dtype=torch.long)


def torch_runner(folder: str, x, y, threads: int):
    """``run() -> last loss``: ``steps`` eager AdamW steps of transformers' model, as bpjax's step does them, on
    ``threads`` intra-op threads (set for the run, restored after it)."""
    import torch

    net = torch_model(folder)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    X, Y = torch_ids(x), torch_ids(y)

    def run():
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            for i in range(len(X)):
                loss = torch_loss(net, X[i], Y[i])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                opt.step()
        finally:
            torch.set_num_threads(before)
        return loss.item()

    return run


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        print("  PyTorch or transformers not installed: skipping the PyTorch eager GPT-2")
        return False
    return True


# ---------------------------------------------------------------- agreement and memory


def _rel(a, b) -> float:
    """``|a - b| / |b|`` in the 2-norm (``|b|`` floored at 1e-30)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def agreement(model, params, folder, x, y, grad, with_torch: bool) -> dict:
    """Loss and gradients at the initial weights on one batch: ``jax.grad`` and PyTorch against the manual backward.

    Per leaf the relative error in the 2-norm; the worst leaf is reported, except the key bias ``bk``,
    whose gradient is 0 in exact arithmetic (the manual backward writes the exact 0, the others roundoff,
    reported as its norm relative to the query bias's). ``grad``: the jitted manual value-and-grad.
    """
    x, y = jnp.asarray(x), jnp.asarray(y)
    ref_loss, ref = grad(params, x, y)
    others = {"autodiff": jax.jit(bp.autodiff_value_and_grad(model, LOSS))(params, x, y)}
    if with_torch:
        others["torch"] = _torch_grads(folder, x, y)
    out = {"manual_loss": float(ref_loss)}
    paths = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(ref)]
    for name, (loss, grads) in others.items():
        errs = {p: _rel(g, r) for p, g, r in zip(paths, jax.tree.leaves(grads), jax.tree.leaves(ref))
                if not p.endswith("['bk']")}
        by_path = dict(zip(paths, jax.tree.leaves(ref)))
        bk = [np.linalg.norm(g) / max(np.linalg.norm(by_path[p[:-6] + "['bq']"]), 1e-30)
              for p, g in zip(paths, jax.tree.leaves(grads)) if p.endswith("['bk']")]
        worst = max(errs, key=errs.get)
        out[name] = {"loss": float(loss), "loss_abs_diff": abs(float(loss) - float(ref_loss)),
                     "worst_grad_rel_error": errs[worst], "worst_leaf": worst,
                     "median_grad_rel_error": float(np.median(list(errs.values()))),
                     "bk_grad_norm_over_bq_max": float(max(bk)) if bk else None}
    return out


def _torch_grads(folder: str, x, y):
    """``(loss, grads)`` of transformers' model on ``(x, y)``, the gradients in bpjax's layout: written as a GPT-2
    checkpoint beside the model's ``config.json`` and read back by :func:`bpjax.zoo.load_gpt2`."""
    from safetensors.torch import save_file

    net = torch_model(folder)
    loss = torch_loss(net, torch_ids(x), torch_ids(y))
    loss.backward()
    with tempfile.TemporaryDirectory() as grads:
        save_file({"transformer." + n: p.grad.contiguous() for n, p in net.transformer.named_parameters()},
                  os.path.join(grads, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(folder, "config.json")) as f, open(os.path.join(grads, "config.json"), "w") as g:
            g.write(f.read())
        return loss.item(), zoo.load_gpt2(grads, dropout=0.0)[1]


def torch_saved_bytes(folder: str, x, y) -> dict:
    """Bytes of the tensors PyTorch's autograd saves in the forward of one batch (``saved_tensors_hooks``), each
    storage counted once: the parameters it saves apart from the rest."""
    import torch

    net = torch_model(folder)
    weights = {p.untyped_storage().data_ptr() for p in net.parameters()}
    seen = {}

    def pack(t):
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        torch_loss(net, torch_ids(x), torch_ids(y))
    params = sum(n for ptr, n in seen.items() if ptr in weights)
    return {"saved_bytes": sum(seen.values()) - params, "saved_param_bytes": params}


# ---------------------------------------------------------------- where the time goes


def optimizer_runner(params, steps: int):
    """``run()``: ``steps`` calls of the optimizer's update alone (clipping, AdamW, ``apply_updates``), compiled, on
    fixed gradients."""
    import optax

    opt = optimizer()
    update = jax.jit(lambda g, s, p: (lambda u, s: (optax.apply_updates(p, u), s))(*opt.update(g, s, p)),
                     donate_argnums=(1, 2))
    carry = {"p": jax.tree.map(jnp.copy, params)}
    carry["s"] = opt.init(carry["p"])
    grads = jax.tree.map(lambda a: jnp.full_like(a, 1e-3), params)

    def run():
        for _ in range(steps):
            carry["p"], carry["s"] = update(grads, carry["s"], carry["p"])
        return carry["p"]

    return run


def profile(compiled, params, x, y, found, best, steps: int, ceiling: float, calls: int) -> dict:
    """The manual step beside its parts, each timed alone in the same rounds (``best``): its gradient, the gradient's
    matmuls replayed (``found``, :func:`benchmarks.hlo_profile.dots`) and the optimizer; the gradient's other
    operations ranked by a trace of ``compiled``. One compiled step may fuse and overlap its parts: their times
    alone need not add up to the step's."""
    step_s, grad_s, matmul_s, opt_s = (best[k][0] / steps for k in ("manual", "grad", "matmuls", "optimizer"))
    mm_flops = hlo_profile.flops(found)
    return {"step_s": step_s, "grad_s": grad_s, "optimizer_s": opt_s, "matmul_s": matmul_s,
            "step_minus_matmul_s": step_s - matmul_s, "matmul_flops": mm_flops, "matmul_calls": sum(found.values()),
            "matmul_shapes": len(found), "matmul_fraction_of_ceiling": mm_flops / matmul_s / 1e9 / ceiling,
            "trace": hlo_profile.split(compiled, lambda: compiled(params, x, y), calls), "trace_calls": calls}


# ---------------------------------------------------------------- the benchmark


def bench(shape: str = "nanogpt", repeats: int = 2, with_torch: bool = True, with_bf16: bool = True) -> dict:
    """The measurements of one shape of :data:`SHAPES` (see the module's docstring), as a dict."""
    s = SHAPES[shape]
    with_profile = s.profile
    model = zoo.gpt(s.vocab, context=s.context, features=s.width, num_layers=s.layers, num_heads=s.heads)
    _, p = model.init(jax.random.key(0), (s.seq,))
    x, y = batches(s)
    x0, y0 = jnp.asarray(x[0]), jnp.asarray(y[0])
    value_and_grad = bp.value_and_grad(model, LOSS)
    grad = jax.jit(value_and_grad).lower(p, x0, y0).compile()
    with_torch = with_torch and torch_available()
    a = jax.random.normal(jax.random.key(3), (s.matmul, s.matmul))
    matmul = jax.jit(lambda a: a @ a)
    fns = {"matmul": lambda: matmul(a)}
    if with_torch:
        import torch

        ta = torch.randn(s.matmul, s.matmul)
        fns["torch_matmul"] = lambda: ta @ ta
    fns["manual"] = bpjax_runner(model, p, x, y, "manual")
    fns["autodiff"] = bpjax_runner(model, p, x, y, "autodiff")
    if with_bf16:
        fns["bf16"] = bpjax_runner(bp.precision.MixedPrecision(model, jnp.bfloat16), p, x, y, "manual")
    if with_profile:
        found = hlo_profile.dots(value_and_grad, p, x0, y0)
        replay = hlo_profile.replay(found)
        fns["grad"] = lambda: [grad(p, x0, y0) for _ in range(s.steps)]  # as many calls as the step's
        fns["matmuls"] = lambda: [replay() for _ in range(s.steps)]
        fns["optimizer"] = optimizer_runner(p, s.steps)
    out = {"shape_name": shape, "shape": {**s._asdict(), "parameters": sum(int(l.size) for l in jax.tree.leaves(p))},
           "repeats": repeats, "load_average_start": load_average()}
    with tempfile.TemporaryDirectory() as folder:
        if with_torch:
            zoo.save_gpt2(folder, model, p)
            import transformers

            out["torch_threads"], out["transformers"] = torch.get_num_threads(), transformers.__version__
            fns["torch"] = torch_runner(folder, x, y, out["torch_threads"])
            if out["torch_threads"] > 1:  # on a loaded machine one thread can beat several on small operations
                fns["torch_1"] = torch_runner(folder, x, y, 1)
        print(f"  agreement at the initial weights ({shape}) ...", flush=True)
        out["agreement"] = agreement(model, p, folder, x0, y0, grad, with_torch)
        for name, fn in fns.items():  # first calls: compilation (and PyTorch's warm-up)
            print(f"  first call: {name} ...", flush=True)
            _, out[f"{name}_first_call_s"], _ = timed(fn)
        print(f"  {repeats} interleaved rounds ...", flush=True)
        best = interleaved(fns, repeats)
        out["memory"] = {"float32": residual_bytes(model, LOSS, p, x0, y0)}
        if with_bf16:
            out["memory"]["bf16"] = residual_bytes(bp.precision.MixedPrecision(model, jnp.bfloat16), LOSS, p, x0, y0)
        if with_torch:
            out["memory"]["torch"] = torch_saved_bytes(folder, x0, y0)
    ceiling = {k: 2 * s.matmul ** 3 / best[k][0] / 1e9 for k in ("matmul", "torch_matmul") if k in best}
    g = ceiling["matmul"]
    tokens = s.steps * s.batch * s.seq
    fpt = flops_per_token(s)
    out.update({"matmul_gflops": g, "torch_matmul_gflops": ceiling.get("torch_matmul"), "flops_per_token": fpt})
    for name in ("manual", "autodiff", "bf16", "torch", "torch_1"):
        if name not in best:
            continue
        wall, cpu, last = best[name]
        out[name] = {"s_per_call": wall, "cpu_s_per_call": cpu, "tokens_per_s": tokens / wall,
                     "cpu_tokens_per_s": tokens / cpu, "ms_per_step": 1e3 * wall / s.steps,
                     "gflops": fpt * tokens / wall / 1e9, "fraction_of_matmul": fpt * tokens / wall / 1e9 / g,
                     "last_loss": float(last)}
    for name in ("autodiff", "bf16", "torch", "torch_1"):
        if name in out:
            out[f"manual/{name}"] = out["manual"]["s_per_call"] / out[name]["s_per_call"]
            out[f"manual/{name}_cpu"] = out["manual"]["cpu_s_per_call"] / out[name]["cpu_s_per_call"]
    m = out["memory"]["float32"]
    m["manual/autodiff"] = m["manual_residual_bytes"] / m["autodiff_residual_bytes"]
    if with_profile:
        print("  trace of the manual gradient ...", flush=True)
        out["profile"] = profile(grad, p, x0, y0, found, best, s.steps, g, max(repeats, 2))
    out["load_average_end"] = load_average()
    return out


# ---------------------------------------------------------------- report


def _mb(b) -> str:
    return f"{b / 1e6:.1f}"


LABELS = {"manual": "bpjax manual", "autodiff": "bpjax jax.grad", "bf16": "bpjax manual, bf16 mixed",
          "torch": "PyTorch eager, all threads", "torch_1": "PyTorch eager, 1 thread"}


def machine_line(r) -> str:
    """The machine of a report of :func:`main`: CPU, cores, versions."""
    m = r["machine"]
    return (f"Machine: {m['processor']}, {m['cpu_count']} CPU cores, {m['platform']}, Python {m['python']}, jax "
            f"{m['jax']} ({m['backend']}), torch {m['torch'] or 'not installed'}, transformers "
            f"{r.get('transformers', 'not installed')}, PyTorch's default threads {r.get('torch_threads', 'n/a')}.")


def markdown(r) -> list:
    """Lines of the report of one shape."""
    s, mem = r["shape"], r["memory"]
    torch_ceiling = (f", PyTorch's {r['torch_matmul_gflops']:.1f}" if r.get("torch_matmul_gflops") else "")
    lines = ["", f"## GPT training, {r['shape_name']}: {s['layers']} layers, {s['heads']} heads, width {s['width']}, "
             f"vocabulary {s['vocab']}, position table {s['context']}; batch {s['batch']} x {s['seq']} tokens; "
             f"{s['parameters'] / 1e6:.2f}M parameters; clip + AdamW", "",
             f"{s['steps']} training step(s) per timed call, the contenders interleaved, best of {r['repeats']} "
             f"rounds; load average (1, 5, 15 min) {format_load(r['load_average_start'])} at the start, "
             f"{format_load(r['load_average_end'])} at the end. Matmul ceiling ({s['matmul']}^3 float32): jax "
             f"{r['matmul_gflops']:.1f} GFLOP/s{torch_ceiling}; {r['flops_per_token'] / 1e6:.1f} MFLOP per token "
             f"(6N + 12LTD).", "",
             "| contender | tokens/s | CPU tokens/s | ms/step | GFLOP/s | fraction of matmul | residual MB | "
             "first call s |", "|---|---|---|---|---|---|---|---|"]
    resid = {"manual": mem["float32"]["manual_residual_bytes"], "autodiff": mem["float32"]["autodiff_residual_bytes"]}
    if "bf16" in mem:
        resid["bf16"] = mem["bf16"]["manual_residual_bytes"]
    if "torch" in mem:
        resid["torch"] = resid["torch_1"] = mem["torch"]["saved_bytes"] + mem["torch"]["saved_param_bytes"]
    for name, label in LABELS.items():
        if name in r:
            e = r[name]
            lines.append(f"| {label} | {e['tokens_per_s']:.0f} | {e['cpu_tokens_per_s']:.0f} | {e['ms_per_step']:.1f} "
                         f"| {e['gflops']:.1f} | {e['fraction_of_matmul']:.2f} | {_mb(resid[name])} | "
                         f"{r[name + '_first_call_s']:.1f} |")
    ratios = [f"{LABELS[n]} {r[f'manual/{n}']:.2f} (CPU {r[f'manual/{n}_cpu']:.2f})"
              for n in ("autodiff", "bf16", "torch", "torch_1") if f"manual/{n}" in r]
    lines += ["", "Time of manual / " + "; manual / ".join(ratios) + "."]
    f32 = mem["float32"]
    note = (f"Kept for the backward (one batch): manual {_mb(f32['manual_residual_bytes'])} MB (params apart); "
            f"`jax.grad` {_mb(f32['autodiff_residual_bytes'])} MB (what `jax.vjp` saves, the params it saves "
            f"included: {_mb(f32['autodiff_argument_bytes'])} MB of it)") if "autodiff_argument_bytes" in f32 else \
        (f"Kept for the backward (one batch): manual {_mb(f32['manual_residual_bytes'])} MB (params apart); "
         f"`jax.grad` {_mb(f32['autodiff_residual_bytes'])} MB (what `jax.vjp` saves, params included)")
    if "bf16" in mem:
        note += f"; bf16 mixed, manual {_mb(mem['bf16']['manual_residual_bytes'])} MB"
    if "torch" in mem:
        note += (f"; PyTorch {_mb(mem['torch']['saved_bytes'])} MB of activations and "
                 f"{_mb(mem['torch']['saved_param_bytes'])} MB of parameters it saves")
    lines += ["", note + "."]
    ag = r["agreement"]
    parts = [f"{'PyTorch eager' if n == 'torch' else LABELS[n]}: loss {ag[n]['loss_abs_diff']:.1e} apart, worst "
             f"gradient {ag[n]['worst_grad_rel_error']:.1e} (`{ag[n]['worst_leaf']}`), median "
             f"{ag[n]['median_grad_rel_error']:.1e}, key bias (0 by hand) at most "
             f"{ag[n]['bk_grad_norm_over_bq_max']:.0e} of the query bias's" for n in ("autodiff", "torch") if n in ag]
    lines += ["", f"Agreement with the manual backward at the initial weights, float32, one batch (loss "
                  f"{ag['manual_loss']:.4f}; gradient errors relative, 2-norm per leaf): " + "; ".join(parts) + "."]
    if "profile" in r:
        pr = r["profile"]
        lines += ["", "Where the manual step's time goes: the step beside its parts, each timed alone in the same "
                      "rounds (the gradient's matmuls replayed shape by shape; one compiled step may fuse and "
                      "overlap its parts, so these need not add up):", "",
                  "| measured | ms | share of the step |", "|---|---|---|"]
        for label, key in (("the step", "step_s"), ("its gradient alone", "grad_s"),
                           ("the gradient's matmuls alone", "matmul_s"), ("the optimizer alone (clip + AdamW)",
                                                                          "optimizer_s"),
                           ("the step minus the matmuls", "step_minus_matmul_s")):
            lines.append(f"| {label} | {1e3 * pr[key]:.1f} | {pr[key] / pr['step_s']:.2f} |")
        other = ", ".join(f"{o['op']} {o['shape'].split('{')[0]} {o['s'] / pr['trace']['other_s']:.2f}"
                          for o in pr["trace"]["other"])
        lines += ["", f"The gradient's matmuls: {pr['matmul_flops'] / 1e9:.1f} GFLOP in {pr['matmul_calls']} calls "
                      f"of {pr['matmul_shapes']} shapes, alone at {pr['matmul_fraction_of_ceiling']:.2f} of the "
                      f"ceiling. The gradient's other operations, ranked by a trace of its XLA operations (each "
                      f"one's share of the operations that hold no dot): {other}."]
    return lines + [""]


def main(argv=None) -> dict:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_gpt", description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=[k for k in SHAPES if k != "quick"], default="nanogpt")
    ap.add_argument("--quick", action="store_true", help="a smoke run: a 2-layer toy, one round")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved timed rounds (best counts)")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch eager run")
    ap.add_argument("--out", default=None, help="output prefix (.json and .md); default benchmarks/results/bench_gpt "
                                                "(nanogpt), bench_gpt2_small, and a temporary folder's for --quick")
    args = ap.parse_args(argv)
    shape = "quick" if args.quick else args.shape
    default = {"nanogpt": os.path.join(RESULTS, "bench_gpt"), "gpt2_small": os.path.join(RESULTS, "bench_gpt2_small"),
               "quick": os.path.join(tempfile.gettempdir(), "bench_gpt_quick")}[shape]
    r = {"machine": machine(), **bench(shape, 1 if args.quick else args.repeats, with_torch=not args.no_torch)}
    save(args.out or default, r, "\n".join([machine_line(r)] + markdown(r)))
    return r


if __name__ == "__main__":
    main()
