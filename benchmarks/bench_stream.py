"""Streamed vs device-resident training data: fit's throughput on the MNIST-1D MLP and CNN, side by side.

    python -m benchmarks.bench_stream [--steps 6000] [--repeats 3] [--models mlp,cnn] [--out PREFIX]

Recipe (Greydanus 2020): Adam 1e-2, batch 100, batches in order, cross-entropy, evaluated on the
test set at the end. Three ways to feed the same 6000 batches:

- ``resident``: ``fit(..., (x, y))``, each batch sliced from arrays on the device, one compiled chunk;
- ``resident_chunked``: the same in the streamed run's chunks (what it pays for chunking alone);
- ``streamed``: ``fit(..., batches())``, a generator of numpy batches; fit's default chunks (about 1/20
  of the run: 300 steps of 6000), each block of batches stacked and sent to the device while the
  previous chunk runs.

Each is compiled by a first call, then the three run interleaved ``repeats`` times (order flipped each
round); the best wall and process CPU times are kept. Reported: ``streamed / resident`` throughput =
resident time / streamed time (CPU and wall), and the largest parameter difference (the same
batches, so the same run). Also the bytes of the training set held per device when ``fit`` lays
it out over 1, 2, 4 and 8 simulated CPU devices (a subprocess with ``XLA_FLAGS``), and the MLP's
parameter bytes per device on 2-D meshes (data x model: weight matrices split by columns).

Writes ``<out>.json`` and ``<out>.md`` (default ``benchmarks/results/bench_stream``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import jax
import numpy as np
import optax

import bpjax as bp
from benchmarks.data import mnist1d
from benchmarks.measure import RESULTS, interleaved, load_average, machine, save, timed
from bpjax import zoo
from bpjax.train.driver import default_chunk

XENT, BATCH = bp.losses.softmax_cross_entropy, 100


def batches(x, y, steps):
    """The recipe's batches as numpy arrays: step ``s`` takes rows ``b*B .. b*B+B-1``, ``b = s mod N/B``."""
    n_b = len(x) // BATCH
    for s in range(steps):
        b = s % n_b
        yield x[b * BATCH:(b + 1) * BATCH], y[b * BATCH:(b + 1) * BATCH]


def throughput(name: str, steps: int, repeats: int) -> dict:
    """Best times of the three feeds of one model, and the ratios."""
    x, y, xt, yt = mnist1d()
    model = zoo.MODELS[name]()
    _, p0 = model.init(jax.random.key(0), (40,))
    opt = optax.adam(1e-2)  # one object: fit's compiled programs are reused between the calls
    kw = dict(steps=steps, batch_size=BATCH, eval_data=(xt, yt), verbose=False)
    chunk = default_chunk(steps, False, batch_bytes=x[:BATCH].nbytes + y[:BATCH].nbytes)  # the streamed run's
    fns = {"resident": lambda: bp.train.fit(model, XENT, opt, p0, (x, y), **kw),
           "resident_chunked": lambda: bp.train.fit(model, XENT, opt, p0, (x, y), chunk_size=chunk, **kw),
           "streamed": lambda: bp.train.fit(model, XENT, opt, p0, batches(x, y, steps), **kw)}
    first = {n: timed(f)[1:] for n, f in fns.items()}  # compile + run
    best = interleaved(fns, repeats)
    ref = best["resident"][2]
    row = {n: {"wall_s": w, "cpu_s": c, "steps_per_s": steps / w, "first_call_wall_s": first[n][0],
               "test_accuracy": float(res.history["eval_accuracy"][-1]),
               "max_param_diff": max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                                     for a, b in zip(jax.tree.leaves(ref.params), jax.tree.leaves(res.params)))}
           for n, (w, c, res) in best.items()}
    row["chunk_steps"] = chunk
    for n in ("streamed", "resident_chunked"):
        row[f"{n}/resident_cpu"] = row["resident"]["cpu_s"] / row[n]["cpu_s"]
        row[f"{n}/resident_wall"] = row["resident"]["wall_s"] / row[n]["wall_s"]
    row["streamed/resident_chunked_cpu"] = row["resident_chunked"]["cpu_s"] / row["streamed"]["cpu_s"]
    return row


def device_bytes_table() -> dict:
    """``{devices: bytes of the training set per device}`` as fit lays it out (run with 8 CPU devices)."""
    from bpjax.train import sharding

    x, y, _, _ = mnist1d()
    out = {}
    for D in (1, 2, 4, 8):
        data, _ = sharding.shard_rows((x, y), bp.train.data_parallel_mesh(jax.devices()[:D]))
        per_device = sharding.device_bytes(data)
        out[D] = {"max": max(per_device.values()), "min": min(per_device.values()), "devices": len(per_device)}
    out["total_bytes"] = int(x.nbytes + y.nbytes)
    _, params = zoo.MODELS["mlp"]().init(jax.random.key(0), (40,))  # and the MLP's params on (data, model) meshes
    out["mlp_param_bytes"] = {
        f"{d}x{m}": max(sharding.device_bytes(sharding.shard_params(params, jax.sharding.Mesh(
            np.asarray(jax.devices()).reshape(d, m), ("data", "model")))).values())
        for d, m in ((8, 1), (4, 2), (2, 4))}
    return out


def bytes_in_subprocess() -> dict:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_stream", "--bytes-only"], env=env, cwd=root,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = ["# Streamed vs device-resident training data", "",
             f"{m['processor']} ({m['cpu_count']} cores), jax {m['jax']}, backend {m['backend']}; "
             f"{r['steps']} steps, batch {BATCH}, fit's default chunks for the streamed run (the chunked "
             f"resident run takes the same), "
             f"best of {r['repeats']} interleaved runs; load average {m['load_average']}.", "",
             "| model | resident s (CPU) | resident, chunked s (CPU) | streamed s (CPU) | streamed/resident "
             "CPU | wall | streamed/chunked CPU | max param diff |", "|---|---|---|---|---|---|---|---|"]
    for name, row in r["throughput"].items():
        a, b, c = row["resident"], row["resident_chunked"], row["streamed"]
        lines.append(f"| {name} ({row['chunk_steps']}-step chunks) | {a['wall_s']:.2f} ({a['cpu_s']:.2f}) | "
                     f"{b['wall_s']:.2f} ({b['cpu_s']:.2f}) | "
                     f"{c['wall_s']:.2f} ({c['cpu_s']:.2f}) | {row['streamed/resident_cpu']:.2f} | "
                     f"{row['streamed/resident_wall']:.2f} | {row['streamed/resident_chunked_cpu']:.2f} | "
                     f"{c['max_param_diff']:.1e} |")
    t = r["device_bytes"]
    lines += ["", f"## Training set bytes per device (MNIST-1D, {t['total_bytes']} bytes in all)", "",
              "| devices | bytes per device | fraction of the set |", "|---|---|---|"]
    for D in ("1", "2", "4", "8"):
        lines.append(f"| {D} | {t[D]['max']} | {t[D]['max'] / t['total_bytes']:.3f} |")
    lines += ["", "## MNIST-1D MLP parameter bytes per device, mesh (data x model)", "",
              "| mesh | bytes per device |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in t["mlp_param_bytes"].items()]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_stream", description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", default="mlp,cnn")
    ap.add_argument("--out", default=os.path.join(RESULTS, "bench_stream"), help="output prefix (.json and .md)")
    ap.add_argument("--bytes-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.bytes_only:
        print(json.dumps(device_bytes_table()))
        return None
    r = {"machine": machine(), "steps": args.steps, "repeats": args.repeats, "throughput": {}}
    for name in args.models.split(","):
        print(f"MNIST-1D {name} ...", flush=True)
        r["throughput"][name] = throughput(name, args.steps, args.repeats)
    r["device_bytes"] = bytes_in_subprocess()
    r["load_average_end"] = load_average()
    save(args.out, r, markdown(r))
    return r


if __name__ == "__main__":
    main()
