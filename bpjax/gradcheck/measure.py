"""Error measures and default tolerances, each tolerance with the reason for its value.

Manual ``m`` against reference ``r``, per leaf::

    max_abs = max |m - r|
    max_rel = max_abs / scale,   scale = max(max |r|, FLOOR * max over every leaf of max |r|)
    cosine  = <m, r> / (|m| |r|)        (shown only for leaves above the floor)

The floor judges a leaf whose true gradient is zero or tiny (a bias just before a batch norm: the
batch mean removes it) on the scale of the whole gradient: its roundoff comes from the cotangents
it sums (``db = dz.sum(0)``), not from its own size.
"""

from __future__ import annotations

from typing import List, NamedTuple

import jax.numpy as jnp
import numpy as np

from bpjax.gradcheck.report import Tolerance

RTOL = {jnp.dtype("float64"): 1e-10, jnp.dtype("float32"): 1e-4, jnp.dtype("bfloat16"): 2e-2,
        jnp.dtype("float16"): 5e-3}
"""The default tolerance of the hand-written gradient against the reference, by the model's dtype (``rtol=``)."""
FLOOR = 1e-2
"""A leaf's error is measured against at least this fraction of the largest gradient entry (the scale floor)."""
# The arbiter's least tolerance in a low-precision dtype: a gradient computed in it carries roundoff of many units
# (bfloat16 u = 2^-8 = 3.9e-3, float16 u = 2^-11 = 4.9e-4) summed over the reductions of the backward, and the
# finite-difference error (a 2-norm estimate along random directions, the largest of a few) shows it in full:
# jax.grad of correct bfloat16 MLPs (Dense-Tanh, batch 32) measured up to 6.6e-2, float16 up to 6.6e-3.
ARBITER = {jnp.dtype("bfloat16"): 1e-1, jnp.dtype("float16"): 1e-2}

_RTOL_REASON = {
    "float64": "both gradients are exact up to roundoff (~1e-16 per operation) summed in different orders",
    "float32": "roundoff (6e-8 per operation) grows with reduction length and depth, and XLA fuses the two "
               "programs differently",
    "bfloat16": "5 units of roundoff (u = 3.9e-3): the two programs round the same sums in different orders",
    "float16": "10 units of roundoff (u = 4.9e-4): the two programs round the same sums in different orders",
}


class Comparison(NamedTuple):
    max_abs_error: float
    max_rel_error: float
    cosine: float
    agree: bool


def inexact(a) -> bool:
    return jnp.issubdtype(jnp.result_type(a), jnp.inexact)


def model_dtype(leaves) -> jnp.dtype:
    """The widest floating dtype among ``leaves`` (the dtype the check runs in); float32 when none."""
    dtypes = [jnp.dtype(jnp.result_type(a)) for a in leaves if inexact(a)]
    return max(dtypes, key=lambda d: d.itemsize, default=jnp.dtype("float32"))


def default_rtol(dtype, rtol=None) -> float:
    return float(rtol) if rtol is not None else RTOL.get(jnp.dtype(dtype), 1e-4)


def arbiter(dtype, rtol: float, fd_rtol: float) -> float:
    """The tolerance of a gradient in the model's dtype against float64 finite differences (the arbiter between
    manual and reference): the larger of ``fd_rtol``, ``rtol`` and, in bfloat16/float16, :data:`ARBITER`."""
    return max(fd_rtol, rtol, ARBITER.get(jnp.dtype(dtype), 0.0))


def compare(manual, reference, rtol: float) -> List[Comparison]:
    """One :class:`Comparison` per leaf pair (the measures of the module docstring)."""
    ms = [np.asarray(m, np.float64) for m in manual]
    rs = [np.asarray(r, np.float64) for r in reference]
    top = max((float(np.max(np.abs(r))) for r in rs if r.size), default=0.0)
    out = []
    for m, r in zip(ms, rs):
        own = float(np.max(np.abs(r))) if r.size else 0.0
        abs_err = float(np.max(np.abs(m - r))) if m.size else 0.0
        scale = max(own, FLOOR * top)
        rel = abs_err / scale if scale > 0 else (0.0 if abs_err == 0 else float("inf"))
        nm, nr = np.linalg.norm(m), np.linalg.norm(r)
        cos = float(np.vdot(m, r) / (nm * nr)) if own >= FLOOR * top and nm > 0 and nr > 0 else float("nan")
        out.append(Comparison(abs_err, rel, cos, bool(rel <= rtol)))
    return out


def tolerances(dtype, rtol: float, given: bool, fd=None) -> tuple:
    """The :class:`Tolerance` lines of a report. ``fd``: ``(fd_rtol, arb_tol, eps)`` when finite differences ran."""
    name = jnp.dtype(dtype).name
    reason = "given" if given else _RTOL_REASON.get(name, f"default for {name}")
    out = [Tolerance(f"rel err vs reference ({name})", rtol, reason),
           Tolerance("scale floor", FLOOR, "a leaf below this fraction of the largest gradient entry (a bias "
                                           "before a batch norm, true gradient 0) is judged on that fraction: its "
                                           "roundoff comes from the cotangents it sums, not from its own size")]
    if fd is not None:
        fd_rtol, arb_tol, eps = fd
        out += [Tolerance("f64 manual vs fin.diff", fd_rtol,
                          f"central differences in float64, step {eps:g} along random unit directions, Richardson-"
                          f"extrapolated: truncation ~eps^4, roundoff ~1e-16/eps; the error is "
                          f"|fd - <g, u>| sqrt(n) / |g|_2, an estimate of |error|_2 / |g|_2"),
                Tolerance(f"manual / reference ({name}) vs fin.diff", arb_tol,
                          "the arbiter when manual and reference disagree: the larger of the finite-difference "
                          "tolerance and the dtype's tolerance, since a gradient computed in the model's dtype is "
                          "held to that dtype's roundoff" + (
                              f" (in {name} at least {ARBITER[jnp.dtype(dtype)]:g}: the roundoff of jax.grad of "
                              f"correct models measured there, see measure.ARBITER); the reference is called "
                              f"wrong only beyond it" if jnp.dtype(dtype) in ARBITER else "")),
                Tolerance("smoothness", fd_rtol / 2,
                          "a direction whose first differences at eps and eps/2, or whose second differences, "
                          "differ by more than this has a kink (ReLU, max) within eps and is drawn again")]
    return tuple(out)
