"""Central finite differences in float64 along random unit directions, with kinks stepped around.

For a row (one inexact leaf ``p`` with ``n`` entries) and a random unit direction ``u``::

    d(h)  = (L(p + h u) - L(p - h u)) / (2 h)
    fd    = (4 d(eps / 2) - d(eps)) / 3           # Richardson: truncation ~eps^4
    error = |fd - <g, u>| sqrt(n) / S              # for a random u, an estimate of |g_error|_2 / S

with ``S = max(|g|_2, FLOOR * largest |g|_2 over the rows)`` (the floor of :mod:`.measure`, in the
2-norm). A direction along which the loss has a kink within ``eps`` (a ReLU or a max changes its
choice) says nothing about the gradient: it is drawn again, up to ``4 * directions`` draws, and a
row with no smooth direction is *inconclusive* (``None``). Two tests find the kinks, each relative
as ``error``:

- a kink at distance ``delta`` in ``(eps / 6, eps)`` makes ``d(eps)`` and ``d(eps / 2)`` differ;
- a kink closer than that leaves them equal but shows in the second differences
  ``D2(h) = (L(p + h u) - 2 L(p) + L(p - h u)) / h``, which are ``h u'Hu`` (linear in ``h``) where
  the loss is smooth and ``~ the slope jump`` (constant in ``h``) across a kink: ``2 D2(eps / 2) - D2(eps)``
  vanishes only in the smooth case.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from bpjax.gradcheck.measure import FLOOR


def directional_errors(value: Callable[[List[np.ndarray]], float], point: Sequence[np.ndarray],
                       grads: Dict[str, Sequence], rows: Sequence[int], *, eps: float, directions: int,
                       seed: int, smooth_tol: float) -> Dict[int, Optional[Dict[str, float]]]:
    """Finite-difference errors of each gradient in ``grads`` on each row in ``rows``.

    Args:
      value: ``value(leaves) -> float``, the float64 objective at the row leaves ``leaves``.
      point: the float64 row leaves to differentiate at.
      grads: ``{name: per-row gradients}`` to compare with the differences (float64 or not).
      rows: the rows to check.
      eps, directions, seed: step, number of smooth directions per row, and their seed.
      smooth_tol: the largest ``|d(eps) - d(eps/2)|`` (relative, as ``error``) of a smooth direction.

    Returns:
      ``{row: {name: max error over the directions}}``, ``None`` for an inconclusive row.
    """
    gs = {k: [np.asarray(g, np.float64) for g in v] for k, v in grads.items()}
    norms = [max(float(np.linalg.norm(g[i])) for g in gs.values()) for i in range(len(point))]
    floor = FLOOR * max(norms, default=0.0)
    out: Dict[int, Optional[Dict[str, float]]] = {}
    for i in rows:
        p = np.asarray(point[i], np.float64)
        n, scale = max(p.size, 1), max(norms[i], floor)
        if scale == 0:
            scale = 1.0
        rng = np.random.default_rng([seed, i])

        def at(h, u):  # (L(p + h u), L(p - h u))
            leaves = list(point)
            leaves[i] = p + h * u
            plus = value(leaves)
            leaves[i] = p - h * u
            return plus, value(leaves)

        f0 = value(list(point))

        worst: Dict[str, float] = {k: 0.0 for k in gs}
        found = 0
        for _ in range(4 * directions):
            if found == directions:
                break
            u = rng.standard_normal(p.shape)
            u /= max(float(np.linalg.norm(u)), 1e-300)
            (p1, m1), (p2, m2) = at(eps, u), at(eps / 2, u)
            d1, d2 = (p1 - m1) / (2 * eps), (p2 - m2) / eps
            bend = 2 * (p2 - 2 * f0 + m2) / (eps / 2) - (p1 - 2 * f0 + m1) / eps
            if max(abs(d1 - d2), abs(bend)) * np.sqrt(n) / scale > smooth_tol:
                continue  # a kink within eps along u
            found += 1
            fd = (4 * d2 - d1) / 3
            for k, g in gs.items():
                worst[k] = max(worst[k], abs(fd - float(np.vdot(g[i], u))) * np.sqrt(n) / scale)
        out[i] = worst if found else None
    return out
