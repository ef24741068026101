"""Where a compiled program's time goes: its matmuls replayed alone, and each XLA operation's time from a trace.

XLA's CPU runtime runs a compiled program as a sequence of thunks, one per operation of its optimised
HLO, and ``jax.profiler`` records each as a trace event named after that operation (``dot.34``,
``ynn_fusion.59``). :func:`split` traces a few calls of a compiled function (the Perfetto trace jax
writes), maps each event to its HLO instruction, and counts it as a matmul when the instruction is a
``dot`` or ``convolution`` or a fusion whose computation holds one (a fusion may carry an elementwise
prologue or a reduction with its dot: its whole time counts as the matmul's). The other operations
are grouped by the JAX operation they came from (the ``op_name`` of their metadata). The runtime may
run independent operations at the same time (a dot on the thread pool while the next thunk starts), so
the events' durations can overlap: the trace ranks the operations, it does not add up to the wall time.

:func:`dots` lists every ``dot_general`` a function runs (from its jaxpr), :func:`flops` counts their
FLOPs and :func:`replay` runs the same dots alone: timed beside the program, the time its matmuls take
by themselves.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import math
import re
import tempfile

import jax

_HEADER = re.compile(r"^(?:ENTRY )?%(\S+) .*\{$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\S+) (\w[\w-]*)\(")
_CALLS = re.compile(r"(?:calls|to_apply|body|condition)=%([\w.\-]+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def instructions(hlo: str) -> dict:
    """``{instruction name: {"matmul": bool, "op": JAX op_name, "shape": result type}}`` of an optimised HLO text
    (``compiled.as_text()``), a fusion a matmul when a computation it calls holds a ``dot`` or ``convolution``."""
    bodies: dict = {}
    calls: dict = {}
    found: dict = {}
    current = None
    for line in hlo.splitlines():
        header = _HEADER.match(line)
        if header:
            current = header.group(1)
            bodies[current], calls[current] = False, set()
            continue
        ins = _INSTRUCTION.match(line)
        if current is None or not ins:
            continue
        name, shape, opcode = ins.groups()
        direct = opcode in ("dot", "convolution")
        bodies[current] |= direct
        callees = set(_CALLS.findall(line))
        calls[current] |= callees
        op = _OP_NAME.search(line)
        found[name] = {"direct": direct, "callees": callees, "op": op.group(1) if op else opcode, "shape": shape}

    def holds_dot(comp, seen=()):
        return bodies.get(comp, False) or any(holds_dot(c, (*seen, comp)) for c in calls.get(comp, ()) if c not in seen)

    return {name: {"matmul": i["direct"] or any(holds_dot(c) for c in i["callees"]), "op": i["op"], "shape": i["shape"]}
            for name, i in found.items()}


def op_times(fn, calls: int = 3) -> collections.Counter:
    """``Counter{trace event name: seconds per call}`` of ``calls`` calls of ``fn()`` (compiled before) under
    ``jax.profiler``."""
    totals: collections.Counter = collections.Counter()
    with tempfile.TemporaryDirectory() as folder:
        jax.profiler.start_trace(folder, create_perfetto_trace=True)
        for _ in range(calls):
            jax.block_until_ready(fn())
        jax.profiler.stop_trace()
        paths = glob.glob(f"{folder}/**/perfetto_trace.json.gz", recursive=True)
        if not paths:
            return totals
        with gzip.open(paths[0]) as f:
            trace = json.load(f)
    for e in trace["traceEvents"] if isinstance(trace, dict) else trace:
        if e.get("ph") == "X":
            totals[e["name"]] += e.get("dur", 0) / 1e6 / calls  # microseconds
    return totals


def split(compiled, fn, calls: int = 3, top: int = 8) -> dict:
    """The operations of ``compiled`` (a ``jax.stages.Compiled``, run by ``fn()``) timed from the trace of ``calls``
    calls: ``{"matmul_s", "other_s", "other": [{"op", "shape", "s"}, ...] (the ``top`` costliest groups)}``,
    seconds per call summed over the operations (operations that run at the same time count each)."""
    ops = instructions(compiled.as_text())
    times = op_times(fn, calls)
    matmul = other = 0.0
    groups: collections.Counter = collections.Counter()
    shapes: dict = {}
    for name, s in times.items():
        i = ops.get(name)
        if i is None:
            continue  # not an operation of the program: the runtime's own events
        if i["matmul"]:
            matmul += s
        else:
            other += s
            key = re.sub(r"^jit\([^)]*\)/", "", i["op"])
            groups[key] += s
            shapes.setdefault(key, collections.Counter())[i["shape"]] += s
    return {"matmul_s": matmul, "other_s": other,
            "other": [{"op": k, "shape": shapes[k].most_common(1)[0][0], "s": s} for k, s in groups.most_common(top)]}


def dots(fn, *args) -> collections.Counter:
    """Every ``dot_general`` that ``fn(*args)`` runs, as ``Counter{(lhs shape, rhs shape, dtype, dimension numbers):
    count}``, read from its jaxpr, sub-jaxprs included (a loop's body counts once)."""
    found: collections.Counter = collections.Counter()

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                lhs, rhs = (v.aval for v in eqn.invars)
                found[(lhs.shape, rhs.shape, str(lhs.dtype), eqn.params["dimension_numbers"])] += 1
            for v in eqn.params.values():
                for sub in v if isinstance(v, (tuple, list)) else (v,):
                    if hasattr(sub, "eqns"):
                        walk(sub)
                    elif hasattr(getattr(sub, "jaxpr", None), "eqns"):
                        walk(sub.jaxpr)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


def flops(found: collections.Counter) -> int:
    """FLOPs of the dots of :func:`dots`: ``2 x`` batch ``x M x N x K`` each."""
    total = 0
    for (lhs, rhs, _, ((contract, _), (batch, _))), n in found.items():
        k = math.prod(lhs[i] for i in contract)
        total += n * 2 * math.prod(lhs) * math.prod(rhs) // k // math.prod(lhs[i] for i in batch)
    return total


def replay(found: collections.Counter):
    """``run()``: the dots of :func:`dots` alone, each shape compiled on its own and called as many times as the
    program calls it, on random operands (drawn once)."""
    calls = []
    for i, ((lhs, rhs, dtype, dims), n) in enumerate(sorted(found.items(), key=str)):
        k1, k2 = jax.random.split(jax.random.key(i))
        a, b = jax.random.normal(k1, lhs, dtype), jax.random.normal(k2, rhs, dtype)
        calls.append((jax.jit(lambda a, b, dims=dims: jax.lax.dot_general(a, b, dims)), a, b, n))

    def run():
        return [f(a, b) for f, a, b, n in calls for _ in range(n)]

    return run
