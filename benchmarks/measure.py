"""How the benchmarks measure: the machine, wall and CPU time side by side, and the bytes kept for the backward.

Every comparison runs its variants in one process, alternating (the order flipped each round), so that
a drifting background load on a shared machine hits all of them alike. CPU time
(``time.process_time``, all threads of this process) is the fairer figure there: other processes'
load stretches the wall time but not this process's CPU time.
"""

from __future__ import annotations

import json
import os
import platform
import time
from typing import Callable, Dict

import jax
import numpy as np


def machine() -> dict:
    """The CPU model and count, the platform, Python, jax and torch versions, the devices and the load average."""
    try:
        import torch
        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    return {"platform": platform.platform(), "processor": _cpu_model(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "jax": jax.__version__, "torch": torch_version,
            "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
            "load_average": load_average()}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average():
    """``os.getloadavg()`` (1, 5, 15 minutes), or None where the system has none."""
    return os.getloadavg() if hasattr(os, "getloadavg") else None


def machine_record(info: dict) -> dict:
    """The short machine record a result keeps: CPU, cores, jax, and the load average at the start (``info``, from
    :func:`machine` before the runs) and now, at the end."""
    return {"cpu": info["processor"], "cores": info["cpu_count"], "jax": info["jax"],
            "load_start": [round(v, 2) for v in info["load_average"]],
            "load_end": [round(v, 2) for v in load_average()]}


def format_load(load) -> str:
    """A load average as the reports print it: ``(1.23, 4.56, 7.89)``, or ``n/a``."""
    return "n/a" if load is None else "(" + ", ".join(f"{v:.2f}" for v in load) + ")"


def timed(fn: Callable, repeats: int = 1):
    """``(result of the last run, best wall s, best CPU s)`` of ``fn()`` (blocked until ready) over ``repeats`` runs."""
    best_wall = best_cpu = float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = jax.block_until_ready(fn())
        best_wall, best_cpu = min(best_wall, time.perf_counter() - t0), min(best_cpu, time.process_time() - c0)
    return out, best_wall, best_cpu


def interleaved(fns: Dict[str, Callable], repeats: int) -> dict:
    """``{name: (best wall s, best CPU s, last result)}`` of each ``fns[name]()``, the variants alternating run by
    run (order flipped each round)."""
    names = list(fns)
    best = {n: [float("inf"), float("inf"), None] for n in names}
    for r in range(repeats):
        for n in (names if r % 2 == 0 else names[::-1]):
            out, wall, cpu = timed(fns[n])
            b = best[n]
            b[0], b[1], b[2] = min(b[0], wall), min(b[1], cpu), out
    return {n: tuple(b) for n, b in best.items()}


def per_call(fns: Dict[str, Callable], calls: int) -> dict:
    """``{name: {"wall": [s, ...], "cpu": [s, ...]}}``: ``calls`` timed calls of each ``fns[name]()``, alternating
    call by call (order flipped each time), so that call ``i`` of every variant ran at about the same moment."""
    names = list(fns)
    times = {n: {"wall": [], "cpu": []} for n in names}
    for i in range(calls):
        for n in (names if i % 2 == 0 else names[::-1]):
            t0, c0 = time.perf_counter(), time.process_time()
            jax.block_until_ready(fns[n]())
            times[n]["wall"].append(time.perf_counter() - t0)
            times[n]["cpu"].append(time.process_time() - c0)
    return times


def residual_bytes(model, loss, params, x, y) -> dict:
    """Bytes kept for the backward of ``loss(model(params, x), y)``: bpjax's residual pytree (the params apart: the
    backward takes them as an argument), and what ``jax.vjp`` saves for the same forward (``saved_residuals``, the
    source of ``jax.ad_checkpoint.print_saved_residuals``), of which ``autodiff_argument_bytes`` are params it
    saves as they are."""
    from jax._src.ad_checkpoint import saved_residuals

    res = jax.eval_shape(lambda p, x: model.forward(p, x)[1], params, x)
    manual = sum(int(np.prod(r.shape)) * r.dtype.itemsize for r in jax.tree.leaves(res))
    saved = saved_residuals(lambda p: loss.value(model.forward(p, x)[0], y), params)
    nbytes = [(int(np.prod(a.shape)) * a.dtype.itemsize, where) for a, where in saved]
    return {"manual_residual_bytes": manual, "autodiff_residual_bytes": sum(n for n, _ in nbytes),
            "autodiff_argument_bytes": sum(n for n, where in nbytes if where.startswith("from the argument"))}


RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def save(prefix: str, record: dict, markdown: str) -> None:
    """Write ``<prefix>.json`` (the record) and ``<prefix>.md`` (its tables) and print the tables."""
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    with open(prefix + ".json", "w") as f:
        json.dump(record, f, indent=1, default=float)
    with open(prefix + ".md", "w") as f:
        f.write(markdown)
    print(markdown)
