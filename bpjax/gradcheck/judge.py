"""The three-way verdict: hand-written against the reference, and float64 finite differences as the arbiter.

Each row first compares the hand-written gradient with the reference (``jax.grad``) in the model's
dtype. Finite differences run on every row with ``finite_differences=True``, on the rows that
disagree with ``finite_differences=None`` (the default), never with ``False``. Where they ran:

- the float64 hand-written gradient must match them to ``fd_rtol`` (the maths);
- when manual and reference disagree, each is held against them at the arbiter tolerance
  (:func:`bpjax.gradcheck.measure.arbiter`: ``max(fd_rtol, rtol)``, and in bfloat16/float16 at least
  the roundoff measured there): the one that agrees is right, and the report says in words which one
  is wrong;
- the reference is called wrong only when it disagrees with them beyond that tolerance: where the
  two agree and the float64 hand-written gradient does not, the hand-written maths is wrong and a
  reference within the dtype's reach of finite differences is not (a 0.1% bug in float16 or bfloat16
  is below the resolution of the reference, not an error of it).
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

from bpjax.gradcheck import fd as _fd
from bpjax.gradcheck import measure, report
from bpjax.gradcheck.report import LeafCheck

World = Callable[[], Tuple[list, Callable, list]]  # () -> (float64 point, value(leaves), float64 manual rows)


def _which(rows: Sequence[LeafCheck], verdict: str) -> List[str]:
    return [r.label or r.name for r in rows if r.verdict == verdict]


def _listing(labels: List[str]) -> str:
    return ", ".join(labels[:4]) + (f" and {len(labels) - 4} more" if len(labels) > 4 else "")


def judge(names, labels, manual, reference, *, dtype, rtol: float, rtol_given: bool, finite_differences,
          world: World, fd_eps: float, fd_rtol: float, fd_directions: int, seed: int,
          backwards: Sequence[str]) -> Tuple[List[LeafCheck], List[str], tuple]:
    """Rows, the labels of the rows finite differences could not decide (kinks), and the tolerances of a report
    (see the module docstring for the verdict; :func:`sentences` words it); ``backwards`` says whose backward
    computed each row (:func:`bpjax.gradcheck.paths.backwards`)."""
    comps = measure.compare(manual, reference, rtol)
    fd_rows = [] if finite_differences is False else \
        list(range(len(comps))) if finite_differences else [i for i, c in enumerate(comps) if not c.agree]
    arb = measure.arbiter(dtype, rtol, fd_rtol)
    errs: dict = {}
    if fd_rows:
        point, value, manual64 = world()
        errs = _fd.directional_errors(value, point, {"fd": manual64, "fd manual": manual, "fd reference": reference},
                                      fd_rows, eps=fd_eps, directions=fd_directions, seed=seed,
                                      smooth_tol=fd_rtol / 2)
    rows = []
    for i, (name, label, m, c, backward) in enumerate(zip(names, labels, manual, comps, backwards)):
        failed = () if c.agree else ("reference",)
        e = errs.get(i)
        if i not in errs:
            verdict = report.OK if c.agree else report.UNDECIDED
        elif e is None:  # finite differences inconclusive: every direction crossed a kink
            verdict = report.OK if c.agree else report.UNDECIDED
        else:
            bad = {"fd": e["fd"] > fd_rtol, "fd manual": e["fd manual"] > arb, "fd reference": e["fd reference"] > arb}
            failed += tuple(k for k, v in bad.items() if v)  # type: ignore[assignment]
            manual_ok = not bad["fd"] and (c.agree or not bad["fd manual"])
            if c.agree:  # the float64 hand-written gradient alone can be off: the reference only beyond arb
                verdict = report.OK if manual_ok else report.BOTH_WRONG if bad["fd reference"] else report.MANUAL_WRONG
            elif manual_ok:
                verdict = report.REFERENCE_WRONG if bad["fd reference"] else report.OK
            else:
                verdict = report.BOTH_WRONG if bad["fd reference"] else report.MANUAL_WRONG
        rows.append(LeafCheck(name, tuple(getattr(m, "shape", ())), c.max_abs_error, c.max_rel_error, c.cosine,
                              None if not e else e["fd"], label, verdict, None if not e else e["fd manual"],
                              None if not e else e["fd reference"], failed, backward))
    inconclusive = [rows[i].label or rows[i].name for i in fd_rows if errs.get(i) is None]
    tol = measure.tolerances(dtype, rtol, rtol_given, (fd_rtol, arb, fd_eps) if fd_rows else None)
    return rows, inconclusive, tol


def _own(rows: Sequence[LeafCheck]) -> str:
    """What the sentences call the model's gradient: hand-written, or with JAX's from ``Autodiff`` layers."""
    kinds = {r.backward for r in rows}
    return "the hand-written gradient" if kinds <= {report.HAND_WRITTEN} else \
        "the model's gradient (jax.vjp: Autodiff layers only)" if kinds == {report.JAX_VJP} else \
        "the model's gradient (hand-written, and jax.vjp in Autodiff layers)"


def _autodiff_sentences(rows: Sequence[LeafCheck]) -> List[str]:
    """Which rows carry JAX's gradient (``bp.layers.Autodiff``) rather than a hand-written one."""
    if rows and all(r.backward == report.JAX_VJP for r in rows):
        return ["every row's gradient is JAX's (jax.vjp in Autodiff layers): the check compares JAX with itself, "
                "so it tests how the layers fit together, not a hand-written backward"]
    layers = list(dict.fromkeys(r.label.rsplit(": ", 1)[0] for r in rows
                                if r.backward == report.JAX_VJP and ": " in r.label))
    if not layers:
        return []
    one = len(layers) == 1
    return [f"{_listing(layers)} {'is an Autodiff layer: its' if one else 'are Autodiff layers: their'} gradient is "
            f"JAX's (jax.vjp), not hand-written (column 'backward'), so {'its' if one else 'their'} rows test the "
            f"model around {'it' if one else 'them'}"]


def sentences(rows: Sequence[LeafCheck], ref: str, finite_differences, inconclusive: List[str]) -> Tuple[str, ...]:
    """The report's verdict in words: which gradient is wrong on which rows (``ref``: the reference's name;
    ``inconclusive``: the rows where finite differences found only kinks)."""
    out = []
    own = _own(rows)
    wrong_ref, wrong_man = _which(rows, report.REFERENCE_WRONG), _which(rows, report.MANUAL_WRONG)
    both, undecided = _which(rows, report.BOTH_WRONG), _which(rows, report.UNDECIDED)
    upstream = [r for r in rows if r.verdict == report.UPSTREAM_WRONG]
    if not (wrong_ref or wrong_man or both or undecided or upstream):
        tail = ", and float64 finite differences agree" if finite_differences else ""
        resolved = [r.label or r.name for r in rows if "reference" in r.failed]
        out.append(f"{own} agrees with {ref} on all {len(rows)} rows{tail}" if not resolved else
                   f"{own} and {ref} differ on {_listing(resolved)} by less than finite "
                   f"differences resolve: both agree with them")
    if wrong_ref:
        hint = " (the XLA CPU behaviour in docs/guides/gradient_checks.md, 'jax.grad under jit on XLA CPU'; " \
               "reference='eager' avoids it)" if ref == "jax.grad under jit" else ""
        out.append(f"{ref} disagrees with finite differences on {_listing(wrong_ref)}; {own} "
                   f"agrees{hint}")
    if wrong_man:
        out.append(f"{own} disagrees with finite differences on {_listing(wrong_man)}; "
                   f"{ref} agrees")
    for culprit in dict.fromkeys(r.upstream_of for r in upstream):
        mine = [r.label or r.name for r in upstream if r.upstream_of == culprit]
        out.append(f"{own} disagrees with finite differences on {_listing(mine)}, wrong upstream of {culprit}: the "
                   f"gradient its backward hands down is wrong, and the per-layer sweep finds "
                   f"{'its' if len(mine) == 1 else 'their'} own layer's backward right")
    if both:
        out.append(f"finite differences contradict both {own} and {ref} on {_listing(both)}")
    if undecided:
        why = "finite differences are off (finite_differences=False)" if finite_differences is False else \
            "finite differences are inconclusive (every direction crossed a kink within eps)"
        out.append(f"{own} and {ref} disagree on {_listing(undecided)}; {why}, so nothing "
                   f"decides which one is wrong")
    out += _autodiff_sentences(rows)
    if inconclusive and not undecided:
        out.append(f"finite differences inconclusive on {_listing(inconclusive)} (kinks within eps)")
    return tuple(out)


def pinned_sentence(pinned: Optional[str], what: str) -> str:
    return f"pinned to {pinned}: the first layer, going backward, whose own backward disagrees with jax.vjp " \
           f"of its forward ({what})"
