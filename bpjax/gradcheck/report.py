"""The gradient-check report: one row per gradient leaf, a verdict per row in words, every tolerance with its reason."""

from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Tuple

# Row verdicts. The first three pass: the hand-written gradient is right on that row.
OK = "ok"
REFERENCE_WRONG = "reference wrong"   # disagrees with jax.grad, finite differences side with the hand-written one
ABSORBED = "absorbed"                 # a layer's dx differs, but the layers below make the difference vanish
MANUAL_WRONG = "manual wrong"         # finite differences (or jax.vjp, in the sweep) contradict the hand-written one
UPSTREAM_WRONG = "wrong upstream"     # manual wrong, but its layer's own backward is right: a layer above (the
                                      # row's upstream_of) hands it a wrong gradient (the per-layer sweep says so)
BOTH_WRONG = "both wrong"             # finite differences contradict both
UNDECIDED = "undecided"               # manual and jax.grad disagree and nothing decides (finite differences off)
PASSING = (OK, REFERENCE_WRONG, ABSORBED)

# Whose backward computed a row's gradient (from the cotangent its layer received): a hand-written one, JAX's
# (``jax.vjp`` inside a ``bp.layers.Autodiff`` layer), or both (a container, or the input, with layers of each kind).
HAND_WRITTEN, JAX_VJP, BOTH = "hand-written", "jax.vjp", "both"

INPUT = "input x"  # the name of the model's input row (``input x[0]`` ... for an input of several leaves)


class LeafCheck(NamedTuple):
    """One row: a parameter leaf, the input, or (in the sweep) one layer's own gradient.

    ``name`` is the tree path (``params[0]['W']``, ``input x``); ``label`` the layer path
    (``serial[2] Swish: beta``). Errors: ``max_rel_error`` manual vs reference (max abs error over
    the leaf's scale, see :mod:`bpjax.gradcheck`); ``fd_rel_error`` the float64 hand-written
    gradient against finite differences; ``fd_manual_error`` / ``fd_reference_error`` the gradients
    in the model's dtype against finite differences (the arbiter). ``failed`` names the comparisons
    that failed: ``"reference"``, ``"fd"``, ``"fd manual"``, ``"fd reference"``. ``backward`` says whose
    backward computed the row's gradient: ``"hand-written"``, ``"jax.vjp"`` (an ``Autodiff`` layer's, so the
    row checks JAX against itself and the model around it) or ``"both"``. ``upstream_of`` names the layer
    whose wrong backward made a ``"wrong upstream"`` row wrong (``serial[3] Tanh``).
    """
    name: str
    shape: tuple
    max_abs_error: float
    max_rel_error: float
    cosine: float
    fd_rel_error: Optional[float] = None
    label: str = ""
    verdict: str = OK
    fd_manual_error: Optional[float] = None
    fd_reference_error: Optional[float] = None
    failed: Tuple[str, ...] = ()
    backward: str = HAND_WRITTEN
    upstream_of: str = ""

    @property
    def ok(self) -> bool:
        return self.verdict in PASSING


class Tolerance(NamedTuple):
    """A tolerance of the check: what it bounds, its value and why that value."""
    what: str
    value: float
    reason: str


class GradientReport(NamedTuple):
    """Result of a gradient check: rows, tolerances (each with its reason), sentences, the per-layer sweep.

    ``rows`` are the verdict rows (every parameter leaf and the input); ``inputs`` the input-gradient
    rows of the layers inside a ``serial`` (from the sweep); ``sweep`` each layer's own check;
    ``pinned`` the layer a failure is pinned to. ``ok`` is True when every row passes.
    """
    title: str
    rows: List[LeafCheck]
    rtol: float
    fd_rtol: Optional[float] = None
    tolerances: Tuple[Tolerance, ...] = ()
    notes: Tuple[str, ...] = ()
    sweep: Tuple[LeafCheck, ...] = ()
    pinned: Optional[str] = None
    reference: str = "jax.grad under jit"

    @property
    def max_rel_error(self) -> float:
        return max((r.max_rel_error for r in self.rows), default=0.0)

    @property
    def max_fd_rel_error(self) -> Optional[float]:
        errs = [r.fd_rel_error for r in self.rows if r.fd_rel_error is not None]
        return max(errs) if errs else None

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    @property
    def failed(self) -> List[LeafCheck]:
        """The rows that fail."""
        return [r for r in self.rows if not r.ok]

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        lines = [f"{self.title}: {'OK' if self.ok else 'MISMATCH'}"]
        lines += [f"  {n}" for n in self.notes]
        lines += ["", *_table(self.rows, self.reference)]
        if self.sweep:
            lines += ["", "per-layer sweep: each layer's backward against jax.vjp of its own forward, at the "
                          "activations and the incoming gradient it gets inside the model (first failure going "
                          f"backward: {self.pinned or 'none'})", *_table(self.sweep, "jax.vjp")]
        lines += ["", "tolerances:"] + [f"  {t.what} {t.value:g}: {t.reason}" for t in self.tolerances]
        return "\n".join(lines)

    def _repr_pretty_(self, p, cycle):  # IPython
        p.text(str(self))


def _num(value: Optional[float], failed: bool, fmt: str = ".2e") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:{fmt}}" + (" !" if failed else "")


def _table(rows, reference: str) -> List[str]:
    fd = any(r.fd_rel_error is not None or r.fd_manual_error is not None for r in rows)
    mixed = any(r.backward != HAND_WRITTEN for r in rows)  # a model with Autodiff layers: say whose gradient
    head = ["row", "leaf", "shape", *(["backward"] if mixed else []), "max abs err", f"rel err vs {reference}",
            "cosine"]
    if fd:
        head += ["f64 manual vs fin.diff", "manual vs fin.diff", "reference vs fin.diff"]
    head.append("verdict")
    body = []
    for r in rows:
        cells = [r.label or r.name, r.name, "x".join(map(str, r.shape)) or "scalar", *([r.backward] if mixed else []),
                 f"{r.max_abs_error:.2e}", _num(r.max_rel_error, "reference" in r.failed), _num(r.cosine, False, ".6f")]
        if fd:
            cells += [_num(r.fd_rel_error, "fd" in r.failed), _num(r.fd_manual_error, "fd manual" in r.failed),
                      _num(r.fd_reference_error, "fd reference" in r.failed)]
        cells.append(f"{r.verdict} of {r.upstream_of}" if r.upstream_of else r.verdict)
        body.append(cells)
    widths = [max(len(c) for c in col) for col in zip(head, *body)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [fmt(head), fmt(["-" * w for w in widths])] + [fmt(b) for b in body]
