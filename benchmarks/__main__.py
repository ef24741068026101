"""bpjax benchmarks, every comparison measured side by side in one process.

    python -m benchmarks [--quick] [--out results/bench] [--models mlp,cnn,gru]

1. MNIST-1D recipe (Adam 1e-2, batch 100, batches in order, cross-entropy, 6000 steps): manual
   backward vs jax.grad (vs PyTorch eager when torch is installed): wall time, steps/s, test accuracy.
2. One large-MLP step (784-1024-1024-1024-10, batch 256, Adam, f32) as a fraction of the measured
   1024^3 f32 matmul throughput.
3. Memory kept for the backward pass: manual residuals vs jax.grad's saved residuals, and the
   compiled gradient programs' temp bytes (``compiled.memory_analysis()``).
4. vmap scaling: N seeds in one ``fit_many`` call vs N separate ``fit`` runs.

Writes ``<out>.json`` and ``<out>.md`` (a markdown table with the machine described).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import bpjax as bp
from benchmarks.data import mnist1d
from bpjax import zoo

XENT = bp.losses.softmax_cross_entropy


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "jax": jax.__version__,
            "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}


def timed(fn, repeats=1):
    """Best wall time and process CPU time of ``fn()`` over ``repeats`` runs (the result of the last)."""
    best_wall = best_cpu = float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = jax.block_until_ready(fn())
        best_wall, best_cpu = min(best_wall, time.perf_counter() - t0), min(best_cpu, time.process_time() - c0)
    return out, best_wall, best_cpu


# ---------------------------------------------------------------- 1. MNIST-1D


def mnist1d_run(name, steps, repeats):
    x, y, xt, yt = mnist1d()
    model = zoo.MODELS[name]()
    _, p0 = model.init(jax.random.key(0), (40,))
    rows = {}
    for backward in ("manual", "autodiff"):
        run = lambda: bp.train.fit(model, XENT, optax.adam(1e-2), p0, (x, y), steps=steps,  # noqa: E731
                                   batch_size=100, eval_data=(xt, yt), backward=backward, verbose=False)
        res, wall_first, _ = timed(run)  # includes compilation
        res, wall, cpu = timed(run, repeats)  # fit caches nothing across calls, so this compiles too
        rows[backward] = {"wall_s": wall, "cpu_s": cpu, "first_call_s": wall_first, "steps_per_s": steps / wall,
                          "test_accuracy": float(res.history["eval_accuracy"][-1]),
                          "final_train_loss": float(res.history["loss"][-100:].mean())}
    rows["manual/autodiff"] = rows["manual"]["wall_s"] / rows["autodiff"]["wall_s"]
    rows["torch"] = torch_run(name, steps, x, y, xt, yt)
    return rows


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
    t0 = time.perf_counter()
    for s in range(steps):
        i = (s * 100) % 4000
        loss = nn.functional.cross_entropy(net(X[i:i + 100]), Y[i:i + 100])
        opt.zero_grad()
        loss.backward()
        opt.step()
    wall = time.perf_counter() - t0
    with torch.no_grad():
        acc = (net(torch.tensor(xt)).argmax(1).numpy() == yt).mean()
    return {"wall_s": wall, "steps_per_s": steps / wall, "test_accuracy": float(acc)}


# ---------------------------------------------------------------- 2. large MLP step


def matmul_gflops(n=1024, repeats=20):
    a = jax.random.normal(jax.random.key(0), (n, n))
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    best = min(timed(lambda: f(a))[1] for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def large_mlp(repeats):
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
    out = {"flop_per_step": flops}
    for backward in ("manual", "autodiff"):
        opt = optax.adam(1e-3)
        step = bp.train.make_step(model, XENT, opt, backward=backward, checks=False)
        s = opt.init(p)
        step(p, s, x, y)
        best = min(timed(lambda: step(p, s, x, y))[1] for _ in range(repeats))
        out[backward] = {"ms_per_step": best * 1e3, "gflops": flops / best / 1e9}
    out["matmul_gflops"] = g = matmul_gflops()
    for backward in ("manual", "autodiff"):
        out[backward]["fraction_of_matmul"] = out[backward]["gflops"] / g
    out["manual/autodiff"] = out["manual"]["ms_per_step"] / out["autodiff"]["ms_per_step"]
    return out


# ---------------------------------------------------------------- 3. memory


def memory(name):
    x, y, _, _ = mnist1d()
    model = zoo.MODELS[name]()
    _, p = model.init(jax.random.key(0), (40,))
    xb, yb = jnp.asarray(x[:100]), jnp.asarray(y[:100])
    res = jax.eval_shape(lambda p, x: model.forward(p, x)[1], p, xb)
    manual = sum(int(np.prod(r.shape)) * r.dtype.itemsize for r in jax.tree.leaves(res))
    from jax._src.ad_checkpoint import saved_residuals  # what jax.vjp keeps (the public printer's source)
    saved = saved_residuals(lambda p: XENT.value(model.forward(p, xb)[0], yb), p)
    auto = sum(int(np.prod(a.shape)) * a.dtype.itemsize for a, _ in saved)
    out = {"manual_residual_bytes": manual, "autodiff_residual_bytes": auto}
    for backward in ("manual", "autodiff"):
        g = jax.jit(bp.train.grad_fn(model, XENT, backward))
        m = g.lower(p, xb, yb).compile().memory_analysis()
        out[f"{backward}_temp_bytes"] = getattr(m, "temp_size_in_bytes", None) if m is not None else None
    return out


# ---------------------------------------------------------------- 4. vmap scaling


def vmap_scaling(n, steps):
    x, y, xt, yt = mnist1d()
    model = zoo.mnist1d_mlp()
    keys = jax.random.split(jax.random.key(0), n)
    kw = dict(steps=steps, batch_size=100, shuffle=True, verbose=False)
    _, one_call, _ = timed(lambda: bp.train.fit_many(model, XENT, optax.adam(1e-2), None, (x, y), keys=keys,
                                                     **kw).params)

    def separate():
        out = []
        for k in keys:
            k_init, k_run = jax.random.split(k)
            p = model.init(k_init, (40,))[1]
            out.append(bp.train.fit(model, XENT, optax.adam(1e-2), p, (x, y), key=k_run, **kw).params)
        return out

    _, sep, _ = timed(separate)
    return {"n": n, "steps": steps, "one_call_s": one_call, "separate_s": sep, "speedup": sep / one_call}


# ---------------------------------------------------------------- report


def markdown(r) -> str:
    m = r["machine"]
    lines = [f"# bpjax benchmarks ({'quick' if r['quick'] else 'full'})", "",
             f"Machine: {m['processor']}, {m['cpu_count']} CPUs, {m['platform']}, jax {m['jax']} "
             f"({m['backend']}), load average {m['load_average']}.", "",
             f"## MNIST-1D, {r['steps']} steps (Adam 1e-2, batch 100, in order); wall includes compilation", "",
             "| model | manual s | jax.grad s | manual/jax.grad | manual steps/s | acc manual | acc jax.grad "
             "| torch s | acc torch |", "|---|---|---|---|---|---|---|---|---|"]
    for name, row in r["mnist1d"].items():
        t = row["torch"] or {}
        lines.append(f"| {name} | {row['manual']['wall_s']:.2f} | {row['autodiff']['wall_s']:.2f} | "
                     f"{row['manual/autodiff']:.2f} | {row['manual']['steps_per_s']:.0f} | "
                     f"{row['manual']['test_accuracy']:.3f} | {row['autodiff']['test_accuracy']:.3f} | "
                     f"{t.get('wall_s', float('nan')):.2f} | {t.get('test_accuracy', float('nan')):.3f} |")
    L = r["large_mlp"]
    lines += ["", "## Large MLP step (784-1024-1024-1024-10, batch 256, Adam, f32)", "",
              f"Matmul ceiling (1024^3 f32): {L['matmul_gflops']:.1f} GFLOP/s.", "",
              "| backward | ms/step | GFLOP/s | fraction of matmul |", "|---|---|---|---|"]
    for b in ("manual", "autodiff"):
        lines.append(f"| {b} | {L[b]['ms_per_step']:.1f} | {L[b]['gflops']:.1f} | {L[b]['fraction_of_matmul']:.2f} |")
    lines += ["", "## Memory kept for the backward pass (batch 100)", "",
              "| model | manual residuals | jax.grad residuals | manual temp | jax.grad temp |",
              "|---|---|---|---|---|"]
    for name, row in r["memory"].items():
        lines.append(f"| {name} | {row['manual_residual_bytes']} | {row['autodiff_residual_bytes']} | "
                     f"{row['manual_temp_bytes']} | {row['autodiff_temp_bytes']} |")
    v = r["vmap"]
    lines += ["", "## vmap scaling (MNIST-1D MLP)", "",
              f"{v['n']} seeds x {v['steps']} steps: one fit_many call {v['one_call_s']:.2f} s, {v['n']} separate "
              f"fit runs {v['separate_s']:.2f} s (speed-up {v['speedup']:.2f}x).", ""]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a fast smoke run (few steps, one repeat)")
    ap.add_argument("--out", default=os.path.join("results", "bench"), help="output prefix (.json and .md)")
    ap.add_argument("--models", default=None, help="comma-separated subset of mlp,cnn,gru")
    args = ap.parse_args(argv)
    steps = 200 if args.quick else 6000
    repeats = 1 if args.quick else 2
    names = args.models.split(",") if args.models else (["mlp"] if args.quick else ["mlp", "cnn", "gru"])
    r = {"machine": machine(), "quick": args.quick, "steps": steps, "mnist1d": {}, "memory": {}}
    for name in names:
        print(f"MNIST-1D {name} ...", flush=True)
        try:
            r["mnist1d"][name] = mnist1d_run(name, steps, repeats)
            r["memory"][name] = memory(name)
        except (ImportError, AttributeError) as e:  # a layer not in this checkout
            print(f"  skipped {name}: {e}")
    print("large MLP step ...", flush=True)
    r["large_mlp"] = large_mlp(3 if args.quick else 10)
    print("vmap scaling ...", flush=True)
    r["vmap"] = vmap_scaling(2 if args.quick else 8, 100 if args.quick else 2000)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(r, f, indent=1, default=float)
    md = markdown(r)
    with open(args.out + ".md", "w") as f:
        f.write(md)
    print(md)
    return r


if __name__ == "__main__":
    main()
