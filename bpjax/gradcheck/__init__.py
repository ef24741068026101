"""Gradient checks that never cry wolf: hand-written gradients, ``jax.grad`` and float64 finite differences.

Two entry points, one report:

- :func:`check_gradients` checks a whole model and loss: every parameter leaf and the input.
- :func:`check_layer` checks one layer's backward against ``jax.vjp`` of its forward on a cotangent.

The verdict is three-way (:mod:`.judge`): the hand-written gradient against the reference in the
model's dtype; where they disagree, float64 finite differences of the same model with the same
random draws (:mod:`.world64`, :mod:`.fd`) decide, and the report says in words which one is wrong.
The reference itself can be wrong: on XLA CPU, ``jax.jit(jax.grad)`` of a batch norm, ReLU and a
stacked-slice max pool is off by up to 70% (guide "How the gradients are checked", section
"jax.grad under jit on XLA CPU");
``reference="eager"`` runs ``jax.grad`` op by op, which is not. Rows are named by layer path
(:mod:`.paths`); a failure in a ``serial`` is pinned to its layer by the per-layer sweep
(:mod:`.sweep`). Measures and tolerances (:mod:`.measure`) are printed in every report with their
reasons: manual vs reference relative to each leaf's largest entry, floored at 1% of the model's
largest (a leaf whose true gradient is zero is judged on the whole gradient's scale), f64 1e-10,
f32 1e-4; finite differences 1e-6 of the gradient's 2-norm. A row whose gradient comes from a
``bp.layers.Autodiff`` layer (``jax.vjp``, not hand-written) says so in a ``backward`` column
(:func:`.paths.backwards`), and the report names those layers.
"""

from bpjax.gradcheck.layer import check_layer
from bpjax.gradcheck.measure import FLOOR, RTOL
from bpjax.gradcheck.model import check_gradients
from bpjax.gradcheck.report import GradientReport, LeafCheck, Tolerance

__all__ = ["FLOOR", "RTOL", "GradientReport", "LeafCheck", "Tolerance", "check_gradients", "check_layer"]
