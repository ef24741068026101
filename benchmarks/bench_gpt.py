"""GPT training speed: hand-written backward vs ``jax.grad`` vs PyTorch eager, side by side in one process.

The model and recipe of the ``gpt`` experiment (nanoGPT's CPU shape): :func:`bpjax.zoo.gpt` with 4
layers, 4 heads, width 128, context 64, vocabulary 96 (0.81M parameters, output tied to the
embedding), batch 12, gradient clipping at norm 1 and AdamW. Random token ids: the timings do not
depend on the values.

- bpjax: ``bp.train.fit`` running ``STEPS`` steps in one compiled ``lax.scan`` (the way the experiment
  trains), ``backward="manual"`` and ``"autodiff"``; the first call compiles, the timed calls reuse it.
- PyTorch eager: the same architecture written the way nanoGPT writes it (``nn.Embedding``,
  ``nn.LayerNorm``, ``nn.Linear``, ``F.scaled_dot_product_attention(is_causal=True)``, tied
  ``lm_head``), ``torch.optim.AdamW`` and ``clip_grad_norm_``, the same number of steps.

All variants alternate run by run (:func:`benchmarks.measure.interleaved`); the best of the repeats
counts. Also: the bytes the backward keeps (manual residuals vs what ``jax.vjp`` saves) and the
step's FLOP rate as a fraction of this machine's 1024^3 float32 matmul, timed in the same rounds.
FLOPs per token: ``6 N + 12 L T D`` (``N`` the matmul weights, the tied output projection
included; the second term the attention scores and their use, forward and backward, as in the
PaLM paper's appendix B).

Run: ``python -m benchmarks.bench_gpt [--repeats 2] [--no-torch] [--out PREFIX]`` (writes ``<out>.json`` and
``<out>.md``, default ``benchmarks/results/bench_gpt``); ``python -m benchmarks`` runs it as one of its sections.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import bpjax as bp
from benchmarks.measure import RESULTS, interleaved, machine, residual_bytes, save, timed
from bpjax import zoo

V, LAYERS, HEADS, D, T, B = 96, 4, 4, 128, 64, 12
STEPS = 20  # optimiser steps per timed fit call


def optimizer():
    import optax

    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3, b1=0.9, b2=0.99, weight_decay=0.1))


def flops_per_token() -> int:
    """``6 N + 12 L T D``: ``N`` = every matmul weight (attention, MLP, the tied output ``E^T``)."""
    N = V * D + LAYERS * (4 * D * D + 8 * D * D)
    return 6 * N + 12 * LAYERS * T * D


def torch_gpt(seed=0):
    """nanoGPT's GPT (pre-norm blocks, GELU MLP of 4D, tied lm_head), with biases as bpjax's, in PyTorch."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
            self.qkv, self.proj = nn.Linear(D, 3 * D), nn.Linear(D, D)
            self.fc, self.out = nn.Linear(D, 4 * D), nn.Linear(4 * D, D)

        def forward(self, x):
            q, k, v = self.qkv(self.ln1(x)).split(D, dim=2)
            q, k, v = (a.view(x.shape[0], x.shape[1], HEADS, D // HEADS).transpose(1, 2) for a in (q, k, v))
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(a.transpose(1, 2).reshape(x.shape))
            return x + self.out(F.gelu(self.fc(self.ln2(x))))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(V, D), nn.Embedding(T, D)
            self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
            self.ln_f, self.lm_head = nn.LayerNorm(D), nn.Linear(D, V, bias=False)
            self.lm_head.weight = self.wte.weight  # tied

        def forward(self, ids):
            x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1]))
            for block in self.blocks:
                x = block(x)
            return self.lm_head(self.ln_f(x))

    torch.manual_seed(seed)
    return GPT()


def torch_runner(ids, targets):
    """``run() -> last loss``: ``STEPS`` eager AdamW steps of :func:`torch_gpt`, or None without PyTorch."""
    try:
        import torch
    except ImportError:
        print("  PyTorch not installed: skipping the PyTorch eager GPT")
        return None
    net = torch_gpt()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    X, Y = torch.tensor(np.asarray(ids), dtype=torch.long), torch.tensor(np.asarray(targets), dtype=torch.long)

    def run():
        for s in range(STEPS):
            sl = slice(s * B, (s + 1) * B)
            loss = torch.nn.functional.cross_entropy(net(X[sl]).reshape(-1, V), Y[sl].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
        return loss.item()

    return run


def bench(repeats: int, with_torch: bool = True) -> dict:
    model = zoo.gpt(V, context=T, features=D, num_layers=LAYERS, num_heads=HEADS)
    _, p = model.init(jax.random.key(0), (T,))
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(0, V, (STEPS * B, T + 1)), jnp.int32)
    x, y = ids[:, :-1], ids[:, 1:]
    opt, loss = optimizer(), zoo.token_cross_entropy
    a = jax.random.normal(jax.random.key(3), (1024, 1024))
    matmul = jax.jit(lambda a: a @ a)
    fns = {"matmul": lambda: matmul(a)}
    for b in ("manual", "autodiff"):
        fns[b] = lambda b=b: bp.train.fit(model, loss, opt, p, (x, y), steps=STEPS, batch_size=B, backward=b,
                                          verbose=False).params
    if with_torch:
        run = torch_runner(x, y)
        if run is not None:
            fns["torch"] = run
    out = {"shape": {"vocab": V, "layers": LAYERS, "heads": HEADS, "width": D, "context": T, "batch": B,
                     "steps_per_call": STEPS, "parameters": sum(int(l.size) for l in jax.tree.leaves(p))},
           "repeats": repeats}
    for name, fn in fns.items():  # first calls: compile (and PyTorch's warm-up)
        _, out[f"{name}_first_call_s"], _ = timed(fn)
    best = interleaved(fns, repeats)
    g = 2 * 1024 ** 3 / best["matmul"][0] / 1e9
    tokens = STEPS * B * T
    fpt = flops_per_token()
    out.update({"matmul_gflops": g, "flops_per_token": fpt})
    for name in fns:
        if name == "matmul":
            continue
        wall, cpu, _ = best[name]
        out[name] = {"s_per_call": wall, "cpu_s_per_call": cpu, "tokens_per_s": tokens / wall,
                     "ms_per_step": 1e3 * wall / STEPS, "gflops": fpt * tokens / wall / 1e9,
                     "fraction_of_matmul": fpt * tokens / wall / 1e9 / g}
    out["manual/autodiff"] = out["manual"]["s_per_call"] / out["autodiff"]["s_per_call"]
    out["manual/autodiff_cpu"] = out["manual"]["cpu_s_per_call"] / out["autodiff"]["cpu_s_per_call"]
    if "torch" in out:
        out["torch/manual"] = out["torch"]["s_per_call"] / out["manual"]["s_per_call"]
    memory = residual_bytes(model, loss, p, x[:B], y[:B])
    out["memory"] = {**memory, "manual/autodiff": memory["manual_residual_bytes"] / memory["autodiff_residual_bytes"]}
    return out


def markdown(r) -> list:
    """Lines of the GPT section of the benchmark report."""
    s = r["shape"]
    lines = ["", f"## GPT training ({s['layers']} layers, {s['heads']} heads, width {s['width']}, context "
             f"{s['context']}, batch {s['batch']}, {s['parameters'] / 1e6:.2f}M parameters, clip + AdamW)", "",
             f"{s['steps_per_call']} steps per timed call (`bp.train.fit`, one scan; PyTorch: an eager loop), best of "
             f"{r['repeats']}; matmul ceiling {r['matmul_gflops']:.1f} GFLOP/s; {r['flops_per_token'] / 1e6:.2f} "
             f"MFLOP per token.", "",
             "| backward | tokens/s | ms/step | GFLOP/s | fraction of matmul | first call s |",
             "|---|---|---|---|---|---|"]
    for name, label in (("manual", "bpjax manual"), ("autodiff", "bpjax jax.grad"), ("torch", "PyTorch eager")):
        if name in r:
            e = r[name]
            lines.append(f"| {label} | {e['tokens_per_s']:.0f} | {e['ms_per_step']:.1f} | {e['gflops']:.1f} | "
                         f"{e['fraction_of_matmul']:.2f} | {r[name + '_first_call_s']:.1f} |")
    m = r["memory"]
    lines += ["", f"Time manual/jax.grad {r['manual/autodiff']:.2f} (CPU {r['manual/autodiff_cpu']:.2f})"
              + (f"; PyTorch eager / manual {r['torch/manual']:.2f}" if "torch/manual" in r else "")
              + f". Kept for the backward (one batch): manual {m['manual_residual_bytes'] / 1e6:.2f} MB, jax.grad "
              f"{m['autodiff_residual_bytes'] / 1e6:.2f} MB (ratio {m['manual/autodiff']:.2f}).", ""]
    return lines


def main(argv=None) -> dict:
    import argparse
    import os

    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_gpt", description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2, help="interleaved timed rounds (best counts)")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch eager run")
    ap.add_argument("--out", default=os.path.join(RESULTS, "bench_gpt"),
                    help="output prefix (.json and .md); default benchmarks/results/bench_gpt")
    args = ap.parse_args(argv)
    r = {**bench(args.repeats, with_torch=not args.no_torch), "machine": machine()}
    save(args.out, r, "\n".join(markdown(r)))
    return r


if __name__ == "__main__":
    main()
