"""Worst relative error of every layer's hand-written backward against ``jax.vjp``, over a fixed sweep.

For each row of the layer table of docs/guides/layers.md, each case (a layer, its settings and an input shape) is
checked with ``bp.check_layer`` (finite differences off: this measures manual vs ``jax.vjp``) at
``--seeds`` random draws, in float32 and in float64. Seed ``s`` draws the params with
``layer.init(key(s))``, the input ``x ~ N(0, 1)`` (the norms also ``3 + 4 N(0, 1)``) with
``key(1000 + s)`` and the cotangent ``dy`` with ``check_layer(..., seed=s)``. The relative error is
check_layer's ``report.max_rel_error``: per leaf ``max|manual - jax.vjp| / max|jax.vjp|`` (with
check_layer's floor for all-but-zero leaves), the worst leaf of the layer (named in the file); a row's figure is the
worst over its cases and seeds.

Run: ``python -m benchmarks.layer_errors [--seeds 5] [--json benchmarks/results/layer_errors.json]``
(about 5 minutes of CPU time with 5 seeds, most of it one compilation per case and dtype).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Tuple

import jax
import jax.numpy as jnp

import bpjax as bp
from bpjax import layers as L

OUT = Path(__file__).resolve().parent / "results" / "layer_errors.json"


class Case(NamedTuple):
    """One layer setting: ``make()`` builds the layer, ``shape`` is the input's ``(B, ...)``."""

    label: str
    make: Callable[[], bp.Layer]
    shape: Tuple[int, ...]
    kind: str = "x"          # "x": float input; "ids": integer ids in [0, 50); "mask": (x, key mask)
    train: bool = True
    offset: float = 0.0      # x = offset + (1 + offset) N(0, 1): off-centre inputs for the norms


def _acts():
    acts = {"Identity": L.Identity, "Sigmoid": L.Sigmoid, "Tanh": L.Tanh, "Relu": L.Relu,
            "LeakyRelu": L.LeakyRelu, "Elu": L.Elu, "Gelu": L.Gelu, "Gelu(approximate)": lambda: L.Gelu(True),
            "Softplus": L.Softplus}
    return [Case(f"{n} {s}", f, s) for n, f in acts.items() for s in ((100, 40), (4, 7, 33))]


# The rows of the layer table of docs/guides/layers.md, each with the cases whose worst error it quotes.
ROWS: Dict[str, List[Case]] = {
    "Dense": [Case(f"Dense({f}) {s}", lambda f=f: L.Dense(f), s)
              for f, s in ((100, (100, 40)), (10, (100, 100)), (7, (4, 9, 33)), (1, (1, 3)))],
    "activations": _acts(),
    "Softmax, LogSoftmax": [Case(f"{n} {s}", f, s) for n, f in (("Softmax", L.Softmax), ("LogSoftmax", L.LogSoftmax))
                            for s in ((100, 10), (4, 7, 65), (8, 1000))],
    "Flatten": [Case("Flatten (8, 5, 6, 3)", L.Flatten, (8, 5, 6, 3))],
    "Conv1D, Conv2D": [
        Case("Conv1D(25, 5, stride=2) (100, 40, 1)", lambda: L.Conv1D(25, 5, stride=2), (100, 40, 1)),
        Case("Conv1D(25, 3, stride=2) (100, 20, 25)", lambda: L.Conv1D(25, 3, stride=2), (100, 20, 25)),
        Case("Conv1D(8, 3, dilation=2, groups=2, VALID) (6, 17, 4)",
             lambda: L.Conv1D(8, 3, dilation=2, groups=2, padding="VALID"), (6, 17, 4)),
        Case("Conv2D(16, 3) (32, 8, 8, 1)", lambda: L.Conv2D(16, 3), (32, 8, 8, 1)),
        Case("Conv2D(32, 3, stride=2) (32, 8, 8, 16)", lambda: L.Conv2D(32, 3, stride=2), (32, 8, 8, 16)),
        Case("Conv2D(64, 3) (16, 32, 32, 32)", lambda: L.Conv2D(64, 3), (16, 32, 32, 32)),
        Case("Conv2D(6, (3, 2), dilation=2, groups=3, VALID) (4, 9, 7, 3)",
             lambda: L.Conv2D(6, (3, 2), dilation=2, groups=3, padding="VALID"), (4, 9, 7, 3)),
    ],
    "pools": [
        Case("MaxPool1D(2) (50, 20, 8)", lambda: L.MaxPool1D(2), (50, 20, 8)),
        Case("MaxPool2D(3, stride=2, SAME) (8, 9, 9, 4)", lambda: L.MaxPool2D(3, stride=2, padding="SAME"),
             (8, 9, 9, 4)),
        Case("AvgPool1D(3, stride=1) (50, 20, 8)", lambda: L.AvgPool1D(3, stride=1), (50, 20, 8)),
        Case("AvgPool2D(2, SAME) (8, 9, 9, 4)", lambda: L.AvgPool2D(2, padding="SAME"), (8, 9, 9, 4)),
        Case("GlobalAvgPool (8, 9, 9, 4)", L.GlobalAvgPool, (8, 9, 9, 4)),
    ],
    "BatchNorm": [Case(f"BatchNorm {s} {'train' if t else 'eval'}{f', x = {o:g} + {1 + o:g} N(0, 1)' if o else ''}",
                       L.BatchNorm, s, train=t, offset=o)
                  for s in ((100, 100), (4, 64), (32, 8, 8, 16)) for t in (True, False) for o in (0.0, 3.0)],
    "LayerNorm": [Case(f"LayerNorm {s}{f', x = {o:g} + {1 + o:g} N(0, 1)' if o else ''}", L.LayerNorm, s, offset=o)
                  for s in ((100, 100), (8, 64, 128)) for o in (0.0, 3.0)],
    "Dropout": [Case(f"Dropout(0.3) (100, 100) {'train' if t else 'eval'}", lambda: L.Dropout(0.3), (100, 100),
                     train=t) for t in (True, False)],
    "Embedding": [Case("Embedding(50, 16) ids (8, 12)", lambda: L.Embedding(50, 16), (8, 12), kind="ids")],
    "recurrent": [
        Case("SimpleRNN(16) (32, 20, 5)", lambda: L.SimpleRNN(16), (32, 20, 5)),
        Case("GRU(6) (100, 40, 1)", lambda: L.GRU(6), (100, 40, 1)),
        Case("GRU(32, return_sequences=False) (16, 25, 8)", lambda: L.GRU(32, return_sequences=False), (16, 25, 8)),
        Case("LSTM(16) (32, 20, 5)", lambda: L.LSTM(16), (32, 20, 5)),
        Case("Bidirectional(GRU(6)) (100, 40, 1)", lambda: L.Bidirectional(L.GRU(6)), (100, 40, 1)),
        Case("Bidirectional(LSTM(8)) (16, 20, 3)", lambda: L.Bidirectional(L.LSTM(8)), (16, 20, 3)),
    ],
    "MultiHeadSelfAttention": [
        Case("MultiHeadSelfAttention(4) (8, 16, 32)", lambda: L.MultiHeadSelfAttention(4), (8, 16, 32)),
        Case("MultiHeadSelfAttention(4, causal=True) (4, 64, 64)",
             lambda: L.MultiHeadSelfAttention(4, causal=True), (4, 64, 64)),
        Case("MultiHeadSelfAttention(4) (2, 128, 64)", lambda: L.MultiHeadSelfAttention(4), (2, 128, 64)),
        Case("MultiHeadSelfAttention(2) (x, mask) (6, 10, 8)", lambda: L.MultiHeadSelfAttention(2), (6, 10, 8),
             kind="mask"),
    ],
    "TransformerBlock": [
        Case("TransformerBlock(4, mlp_features=128) (8, 16, 32)",
             lambda: L.TransformerBlock(4, mlp_features=128), (8, 16, 32)),
        Case("TransformerBlock(4, mlp_features=256) (4, 64, 64)",
             lambda: L.TransformerBlock(4, mlp_features=256), (4, 64, 64)),
        Case("TransformerBlock(4, mlp_features=256) (2, 128, 64)",
             lambda: L.TransformerBlock(4, mlp_features=256), (2, 128, 64)),
    ],
}


def _inputs(case: Case, layer: bp.Layer, seed: int, dtype):
    """``(params, x, state, key)`` of one draw, floats in ``dtype``."""
    k_x, k_mask = jax.random.split(jax.random.key(1000 + seed))
    if case.kind == "ids":
        x = jax.random.randint(k_x, case.shape, 0, 50)
    else:
        x = case.offset + (1 + case.offset) * jax.random.normal(k_x, case.shape, dtype)
    in_shape = case.shape[1:]
    _, params = layer.init(jax.random.key(seed), in_shape)
    state = bp.init_state(layer, jax.random.key(seed), in_shape) if bp.is_contextual(layer) else None
    cast = lambda t: jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, t)  # noqa: E731
    params, state = cast(params), cast(state)
    if case.kind == "mask":  # True where a key is a real token; every row keeps at least its first key
        lengths = jax.random.randint(k_mask, (case.shape[0],), 1, case.shape[1] + 1)
        x = (x, jnp.arange(case.shape[1])[None, :] < lengths[:, None])
    return params, x, state, jax.random.key(2000 + seed)


def worst(case: Case, seeds: int, dtype) -> Tuple[float, int, str]:
    """The worst ``check_layer`` relative error of ``case`` over ``seeds`` draws, its seed and its leaf."""
    layer = case.make()
    errors = []
    for s in range(seeds):
        params, x, state, key = _inputs(case, layer, s, dtype)
        report = bp.check_layer(layer, params, x, state=state, key=key, train=case.train, finite_differences=False,
                                seed=s, sweep=False)
        row = max(report.rows, key=lambda r: r.max_rel_error)
        errors.append((float(row.max_rel_error), s, row.name))
    return max(errors)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--json", default=str(OUT))
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    rows, cases = {}, []
    for row, row_cases in ROWS.items():
        out = {}
        for dtype_name, dtype in (("f32", jnp.float32), ("f64", jnp.float64)):
            with jax.enable_x64(dtype == jnp.float64):
                results = [(worst(c, args.seeds, dtype), c.label) for c in row_cases]
            for (err, seed, leaf), label in results:
                cases.append({"row": row, "case": label, "dtype": dtype_name, "worst_rel_error": err, "seed": seed,
                              "leaf": leaf})
            (err, seed, leaf), label = max(results)
            out[dtype_name] = err
            out[f"{dtype_name}_case"] = f"{label}, seed {seed}, {leaf}"
        rows[row] = out
        print(f"{row:24s} f32 {out['f32']:.2g} ({out['f32_case']})  f64 {out['f64']:.2g} ({out['f64_case']})",
              flush=True)
    result = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "python": platform.python_version(), "jax": jax.__version__},
              "seeds": args.seeds, "wall_s": time.perf_counter() - t0, "rows": rows, "cases": cases}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
