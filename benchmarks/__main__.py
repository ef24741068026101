"""bpjax benchmarks, every comparison measured side by side in one process.

    python -m benchmarks [--quick] [--out results/bench] [--models mlp,cnn,gru] [--no-torch] [--no-gpt]

1. MNIST-1D recipe (Adam 1e-2, batch 100, batches in order, cross-entropy, 6000 steps): manual
   backward vs jax.grad (vs PyTorch eager when torch is installed): wall time, steps/s, test accuracy.
2. One large-MLP step (784-1024-1024-1024-10, batch 256, Adam, f32) as a fraction of the measured
   1024^3 f32 matmul throughput.
3. Memory kept for the backward pass: manual residuals vs jax.grad's saved residuals, and the
   compiled gradient programs' temp bytes (``compiled.memory_analysis()``).
4. vmap scaling: N seeds in one ``fit_many`` call vs N separate ``fit`` runs.
5. GPT training at nanoGPT's CPU shape (:mod:`benchmarks.bench_gpt`): tokens/s manual vs jax.grad vs
   bfloat16 mixed precision vs PyTorch eager on transformers' GPT-2, residual bytes, fraction of the
   matmul ceiling (GPT-2 small: ``python -m benchmarks.bench_gpt --shape gpt2_small``).
6. Streamed vs device-resident training data, data bytes per device: ``python -m benchmarks.bench_stream``.

Writes ``<out>.json`` and ``<out>.md`` (a markdown table with the machine described).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import bpjax as bp
from benchmarks import bench_gpt
from benchmarks.data import mnist1d
from benchmarks.measure import (
    RESULTS,
    format_load,
    interleaved,
    load_average,
    machine,
    per_call,
    residual_bytes,
    save,
    timed,
)
from bpjax import zoo

XENT = bp.losses.softmax_cross_entropy


# ---------------------------------------------------------------- 1. MNIST-1D


def mnist1d_run(name, steps, repeats, with_torch=True):
    """Whole 6000-step runs: the first ``fit`` call (trace + compile + run) and then ``repeats`` cached calls
    (``fit`` keeps its compiled program, so these are the run alone), manual and jax.grad interleaved."""
    x, y, xt, yt = mnist1d()
    model = zoo.MODELS[name]()
    _, p0 = model.init(jax.random.key(0), (40,))
    opt = optax.adam(1e-2)  # one object for every call: fit's compiled-program cache keys on it

    def runner(backward):
        return lambda: bp.train.fit(model, XENT, opt, p0, (x, y), steps=steps, batch_size=100, eval_data=(xt, yt),
                                    backward=backward, verbose=False)

    runs = {b: runner(b) for b in ("manual", "autodiff")}
    rows = {}
    for b, run in runs.items():
        _, first_wall, first_cpu = timed(run)
        rows[b] = {"first_call_wall_s": first_wall, "first_call_cpu_s": first_cpu}
    for b, (wall, cpu, res) in interleaved(runs, repeats).items():
        rows[b].update({"wall_s": wall, "cpu_s": cpu, "steps_per_s": steps / wall,
                        "compile_wall_s": rows[b]["first_call_wall_s"] - wall,
                        "compile_cpu_s": rows[b]["first_call_cpu_s"] - cpu,
                        "test_accuracy": float(res.history["eval_accuracy"][-1]),
                        "final_train_loss": float(res.history["loss"][-100:].mean())})
    rows["manual/autodiff"] = rows["manual"]["cpu_s"] / rows["autodiff"]["cpu_s"]
    rows["manual/autodiff_wall"] = rows["manual"]["wall_s"] / rows["autodiff"]["wall_s"]
    rows["torch"] = torch_run(name, steps, x, y, xt, yt) if with_torch else None
    return rows


def grad_only(name, calls):
    """One jitted value-and-grad call on a batch of 100 (the backward alone, no optimizer, no scan):
    median wall and CPU milliseconds per call, manual and jax.grad interleaved call by call."""
    x, y, _, _ = mnist1d()
    model = zoo.MODELS[name]()
    _, p = model.init(jax.random.key(0), (40,))
    xb, yb = jnp.asarray(x[:100]), jnp.asarray(y[:100])
    grads = {b: jax.jit(bp.value_and_grad(model, XENT, backward=b)) for b in ("manual", "autodiff")}
    for f in grads.values():
        jax.block_until_ready(f(p, xb, yb))
    times = per_call({b: lambda f=f: f(p, xb, yb) for b, f in grads.items()}, calls)
    out = {b: {"median_wall_ms": 1e3 * statistics.median(t["wall"]), "median_cpu_ms": 1e3 * statistics.median(t["cpu"]),
               "min_wall_ms": 1e3 * min(t["wall"])} for b, t in times.items()}
    out["manual/autodiff"] = out["manual"]["median_cpu_ms"] / out["autodiff"]["median_cpu_ms"]
    out["manual/autodiff_wall"] = out["manual"]["median_wall_ms"] / out["autodiff"]["median_wall_ms"]
    out["calls"] = calls
    return out


def torch_run(name, steps, x, y, xt, yt):
    try:
        import torch
    except ImportError:
        print("  PyTorch not installed: skipping the PyTorch eager comparison")
        return None
    from torch import nn

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.l2, self.l3 = nn.Linear(40, 100), nn.Linear(100, 100), nn.Linear(100, 10)

        def forward(self, x):
            h = torch.relu(self.l1(x))
            return self.l3(h + torch.relu(self.l2(h)))

    class CNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv1d(1, 25, 5, 2, 1), nn.Conv1d(25, 25, 3, 2, 1)
            self.c3, self.l = nn.Conv1d(25, 25, 3, 2, 1), nn.Linear(125, 10)

        def forward(self, x):
            h = torch.relu(self.c3(torch.relu(self.c2(torch.relu(self.c1(x[:, None]))))))
            return self.l(h.flatten(1))

    class GRU(nn.Module):
        def __init__(self):
            super().__init__()
            self.g, self.l = nn.GRU(1, 6, batch_first=True, bidirectional=True), nn.Linear(480, 10)

        def forward(self, x):
            return self.l(self.g(x[..., None])[0].flatten(1))

    torch.manual_seed(0)
    net = {"mlp": MLP, "cnn": CNN, "gru": GRU, "logistic": lambda: nn.Linear(40, 10)}[name]()
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    X, Y = torch.tensor(x), torch.tensor(y, dtype=torch.long)
    t0, c0 = time.perf_counter(), time.process_time()
    for s in range(steps):
        i = (s * 100) % 4000
        loss = nn.functional.cross_entropy(net(X[i:i + 100]), Y[i:i + 100])
        opt.zero_grad()
        loss.backward()
        opt.step()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    with torch.no_grad():
        acc = (net(torch.tensor(xt)).argmax(1).numpy() == yt).mean()
    return {"wall_s": wall, "cpu_s": cpu, "steps_per_s": steps / wall, "test_accuracy": float(acc),
            "threads": torch.get_num_threads()}


# ---------------------------------------------------------------- 2. large MLP step


def large_mlp(repeats):
    """One jitted training step (``make_step``) and its value-and-grad alone, manual and jax.grad, interleaved
    with the 1024^3 f32 matmul that sets the ceiling; best of ``repeats`` rounds."""
    sizes, B = [784, 1024, 1024, 1024, 10], 256
    layers = []
    for d in sizes[1:-1]:
        layers += [bp.layers.Dense(d), bp.layers.Relu()]
    model = bp.serial(*layers, bp.layers.Dense(sizes[-1]))
    _, p = model.init(jax.random.key(0), (784,))
    x = jax.random.normal(jax.random.key(1), (B, 784))
    y = jax.random.randint(jax.random.key(2), (B,), 0, 10)
    mm = [a * b for a, b in zip(sizes[:-1], sizes[1:])]
    # forward 2B sum(d_in d_out); backward dW 2B sum, dx 2B sum without the first layer's dx
    flops = 2 * B * (3 * sum(mm) - mm[0])
    opt = optax.adam(1e-3)
    a = jax.random.normal(jax.random.key(3), (1024, 1024))
    matmul = jax.jit(lambda a: a @ a)
    fns = {"matmul": lambda: matmul(a)}
    n_fit = 20  # steps of one fit call (a scan): the per-step cost of training as fit runs it
    xs = jax.random.normal(jax.random.key(4), (8 * B, 784))
    ys = jax.random.randint(jax.random.key(5), (8 * B,), 0, 10)
    for b in ("manual", "autodiff"):
        step = bp.train.make_step(model, XENT, opt, backward=b, checks=False, donate=True)
        carry = {"p": jax.tree.map(jnp.copy, p), "s": opt.init(p)}

        def one_step(step=step, carry=carry):  # donated: continue from the returned buffers
            carry["p"], carry["s"], v = step(carry["p"], carry["s"], x, y)
            return v

        grad = jax.jit(bp.value_and_grad(model, XENT, backward=b))
        fns[b] = one_step
        fns[b + "_grad"] = lambda grad=grad: grad(p, x, y)
        fns[b + "_fit"] = lambda b=b: bp.train.fit(model, XENT, opt, p, (xs, ys), steps=n_fit, batch_size=B,
                                                   backward=b, verbose=False).params
    # Adam's update is three memory-bound passes over every leaf; optax.flatten runs it over one flat buffer
    flat = optax.flatten(opt)
    flat_step = bp.train.make_step(model, XENT, flat, checks=False, donate=True)
    flat_carry = {"p": jax.tree.map(jnp.copy, p), "s": flat.init(p)}

    def flat_one_step():
        flat_carry["p"], flat_carry["s"], v = flat_step(flat_carry["p"], flat_carry["s"], x, y)
        return v

    fns["manual_flat_adam"] = flat_one_step
    for f in fns.values():
        jax.block_until_ready(f())
    best = interleaved(fns, repeats)
    g = 2 * 1024 ** 3 / best["matmul"][0] / 1e9
    out = {"flop_per_step": flops, "matmul_gflops": g, "matmul_ms": 1e3 * best["matmul"][0], "repeats": repeats}
    wall = best["manual_flat_adam"][0]
    out["manual_flat_adam"] = {"ms_per_step": 1e3 * wall, "fraction_of_matmul": flops / wall / 1e9 / g}
    for b in ("manual", "autodiff"):
        wall, cpu, _ = best[b]
        gw, fw = best[b + "_grad"][0], best[b + "_fit"][0] / n_fit
        out[b] = {"ms_per_step": 1e3 * wall, "cpu_ms_per_step": 1e3 * cpu, "gflops": flops / wall / 1e9,
                  "fraction_of_matmul": flops / wall / 1e9 / g, "grad_ms": 1e3 * gw,
                  "grad_fraction_of_matmul": flops / gw / 1e9 / g, "fit_ms_per_step": 1e3 * fw,
                  "fit_fraction_of_matmul": flops / fw / 1e9 / g}
    out["manual/autodiff"] = out["manual"]["ms_per_step"] / out["autodiff"]["ms_per_step"]
    return out


# ---------------------------------------------------------------- 3. memory


def memory(name):
    x, y, _, _ = mnist1d()
    model = zoo.MODELS[name]()
    _, p = model.init(jax.random.key(0), (40,))
    xb, yb = jnp.asarray(x[:100]), jnp.asarray(y[:100])
    out = residual_bytes(model, XENT, p, xb, yb)
    for backward in ("manual", "autodiff"):
        g = jax.jit(bp.value_and_grad(model, XENT, backward=backward))
        m = g.lower(p, xb, yb).compile().memory_analysis()
        out[f"{backward}_temp_bytes"] = getattr(m, "temp_size_in_bytes", None) if m is not None else None
    return out


# ---------------------------------------------------------------- 4. vmap scaling


def vmap_scaling(n, steps):
    """``n`` seeds (shuffled batches) in one ``fit_many`` call vs ``n`` separate ``fit`` runs: the first call of
    each (compiles) and a second, cached one (the run alone)."""
    x, y, _, _ = mnist1d()
    model = zoo.mnist1d_mlp()
    opt = optax.adam(1e-2)
    keys = jax.random.split(jax.random.key(0), n)
    kw = dict(steps=steps, batch_size=100, shuffle=True, verbose=False)

    def one_call():
        return bp.train.fit_many(model, XENT, opt, None, (x, y), keys=keys, **kw).params

    def separate():
        out = []
        for k in keys:
            k_init, k_run = jax.random.split(k)
            p = model.init(k_init, (40,))[1]
            out.append(bp.train.fit(model, XENT, opt, p, (x, y), key=k_run, **kw).params)
        return out

    out = {"n": n, "steps": steps}
    for label, fn in (("one_call", one_call), ("separate", separate)):
        _, out[label + "_first_s"], out[label + "_first_cpu_s"] = timed(fn)
    for label, (wall, cpu, _) in interleaved({"one_call": one_call, "separate": separate}, 2).items():
        out[label + "_s"], out[label + "_cpu_s"] = wall, cpu
    out["speedup"] = out["separate_cpu_s"] / out["one_call_cpu_s"]
    out["speedup_first"] = out["separate_first_cpu_s"] / out["one_call_first_cpu_s"]
    return out


# ---------------------------------------------------------------- report


def _f(v, fmt=".2f"):
    return "n/a" if v is None else format(v, fmt)


def markdown(r) -> str:
    m = r["machine"]
    lines = [f"# bpjax benchmarks ({'quick' if r['quick'] else 'full'})", "",
             f"Machine: {m['processor']}, {m['cpu_count']} CPU cores, {m['platform']}, Python {m['python']}, "
             f"jax {m['jax']} ({m['backend']}), torch {m['torch'] or 'not installed'}. Load average (1, 5, 15 min) "
             f"at the start {format_load(m['load_average'])}, at the end {format_load(r.get('load_average_end'))}.",
             "", "Times are the best of the repeats; CPU time is this process's (all threads). "
             "Ratios manual/jax.grad are of CPU times, measured side by side in this process.", "",
             f"## MNIST-1D, {r['steps']} steps (Adam 1e-2, batch 100, in order)", "",
             "Run: a cached `fit` call (compiled program reused); compile: first call minus run.", "",
             "| model | manual run s (CPU) | jax.grad run s (CPU) | manual/jax.grad | manual compile s | "
             "manual first call s | acc manual | acc jax.grad | torch eager s (CPU) | acc torch |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in r["mnist1d"].items():
        t = row["torch"] or {}
        ma, au = row["manual"], row["autodiff"]
        lines.append(f"| {name} | {ma['wall_s']:.2f} ({ma['cpu_s']:.2f}) | {au['wall_s']:.2f} ({au['cpu_s']:.2f}) | "
                     f"{row['manual/autodiff']:.2f} | {ma['compile_wall_s']:.2f} | {ma['first_call_wall_s']:.2f} | "
                     f"{ma['test_accuracy']:.3f} | {au['test_accuracy']:.3f} | "
                     f"{_f(t.get('wall_s'))} ({_f(t.get('cpu_s'))}) | {_f(t.get('test_accuracy'), '.3f')} |")
    lines += ["", "## The backward alone: one jitted value-and-grad call, batch 100 (median)", "",
              "| model | manual ms (CPU) | jax.grad ms (CPU) | manual/jax.grad |", "|---|---|---|---|"]
    for name, g in r["grad_only"].items():
        lines.append(f"| {name} | {g['manual']['median_wall_ms']:.3f} ({g['manual']['median_cpu_ms']:.3f}) | "
                     f"{g['autodiff']['median_wall_ms']:.3f} ({g['autodiff']['median_cpu_ms']:.3f}) | "
                     f"{g['manual/autodiff']:.2f} |")
    L = r["large_mlp"]
    lines += ["", "## Large MLP step (784-1024-1024-1024-10, batch 256, Adam, f32)", "",
              f"Matmul ceiling (1024^3 f32): {L['matmul_gflops']:.1f} GFLOP/s ({L['matmul_ms']:.2f} ms); "
              f"{L['flop_per_step'] / 1e9:.2f} GFLOP per step.", "",
              "A step: one call of `make_step(..., donate=True)`; in `fit`: per step of a 20-step `fit` call "
              "(one scan); value+grad: the gradient alone, no optimizer.", "",
              "| backward | ms/step | GFLOP/s | fraction of matmul | in fit ms/step | its fraction "
              "| value+grad ms | its fraction |", "|---|---|---|---|---|---|---|---|"]
    for b in ("manual", "autodiff"):
        e = L[b]
        lines.append(f"| {b} | {e['ms_per_step']:.2f} | {e['gflops']:.1f} | {e['fraction_of_matmul']:.2f} | "
                     f"{e['fit_ms_per_step']:.2f} | {e['fit_fraction_of_matmul']:.2f} | "
                     f"{e['grad_ms']:.2f} | {e['grad_fraction_of_matmul']:.2f} |")
    if "manual_flat_adam" in L:
        e = L["manual_flat_adam"]
        lines += ["", f"Manual, Adam over one flat buffer (`optax.flatten(optax.adam(1e-3))`): {e['ms_per_step']:.2f} "
                      f"ms/step, {e['fraction_of_matmul']:.2f} of the matmul ceiling."]
    if r.get("gpt"):
        lines += bench_gpt.markdown(r["gpt"])
    lines += ["", "## Memory kept for the backward pass (batch 100)", "",
              "| model | manual residuals | jax.grad residuals | manual temp | jax.grad temp |",
              "|---|---|---|---|---|"]
    for name, row in r["memory"].items():
        lines.append(f"| {name} | {row['manual_residual_bytes']} | {row['autodiff_residual_bytes']} | "
                     f"{row['manual_temp_bytes']} | {row['autodiff_temp_bytes']} |")
    v = r["vmap"]
    lines += ["", "## vmap scaling (MNIST-1D MLP, shuffled batches)", "",
              f"{v['n']} seeds x {v['steps']} steps: one `fit_many` call {v['one_call_s']:.2f} s "
              f"(CPU {v['one_call_cpu_s']:.2f}), {v['n']} separate `fit` runs {v['separate_s']:.2f} s "
              f"(CPU {v['separate_cpu_s']:.2f}): speed-up {v['speedup']:.2f}x. First calls (with compilation): "
              f"{v['one_call_first_s']:.2f} s vs {v['separate_first_s']:.2f} s (CPU speed-up "
              f"{v['speedup_first']:.2f}x).", ""]
    return "\n".join(lines)


MNIST1D_MODELS = ("mlp", "cnn", "gru")


def _models(text: str) -> list:
    """``--models``: a comma-separated subset of :data:`MNIST1D_MODELS` (an argparse error otherwise)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in MNIST1D_MODELS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(MNIST1D_MODELS)}, got "
                                         f"{text!r}" + (f" (unknown: {', '.join(bad)})" if bad else ""))
    return names


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a fast smoke run (few steps, one repeat)")
    ap.add_argument("--out", default=os.path.join(RESULTS, "bench"),
                    help="output prefix (.json and .md); default benchmarks/results/bench")
    ap.add_argument("--models", default=None, type=_models, help="comma-separated subset of mlp,cnn,gru")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch eager runs")
    ap.add_argument("--no-gpt", action="store_true", help="skip the GPT training section")
    args = ap.parse_args(argv)
    steps = 200 if args.quick else 6000
    repeats = 1 if args.quick else 2
    names = args.models or (["mlp"] if args.quick else ["mlp", "cnn", "gru"])
    r = {"machine": machine(), "quick": args.quick, "steps": steps, "mnist1d": {}, "grad_only": {}, "memory": {}}
    for name in names:
        print(f"MNIST-1D {name} ...", flush=True)
        try:
            r["mnist1d"][name] = mnist1d_run(name, steps, repeats, with_torch=not args.no_torch)
            r["grad_only"][name] = grad_only(name, 50 if args.quick else 500)
            r["memory"][name] = memory(name)
        except (ImportError, AttributeError) as e:  # a layer not in this checkout
            print(f"  skipped {name}: {e}")
    print("large MLP step ...", flush=True)
    r["large_mlp"] = large_mlp(3 if args.quick else 20)
    if not args.no_gpt:
        print("GPT training ...", flush=True)
        r["gpt"] = bench_gpt.bench("quick" if args.quick else "nanogpt", 1 if args.quick else 3,
                                   with_torch=not args.no_torch)
    print("vmap scaling ...", flush=True)
    r["vmap"] = vmap_scaling(2 if args.quick else 8, 100 if args.quick else 2000)
    r["load_average_end"] = load_average()
    save(args.out, r, markdown(r))
    return r


if __name__ == "__main__":
    main()
