"""DP-SGD (Abadi et al. 2016) as a backward rule: each example's gradient clipped, their sum noised.

:func:`DPSGD` wraps a model in a layer with the same forward whose backward returns the DP-SGD
gradient instead of the batch gradient. For a batch of ``B`` examples, with ``dy`` the cotangent of
the batch-mean loss (``dy_i = dl_i/dy_i / B``)::

    g_i     = example i's own gradient, from the hand-written backward   (bp.per_example_grads on B dy_i)
    g_i     = g_i min(1, C / |g_i|)                  |g_i|: the 2-norm over all of example i's parameters
    dparams = (sum_i g_i + N(0, (sigma C)^2)) / B    fresh noise from the layer's key at every step

which is ``optax.contrib.differentially_private_aggregate(C, sigma, key)`` applied to those per-example
gradients (its own code runs here, so the two agree exactly). Any optimizer then takes ``dparams``:
``fit(DPSGD(model, ...), loss, optax.sgd(lr), ..., key=key)`` is DP-SGD, and ``make_step`` the same.
The input gradient ``dx`` is the model's ordinary one.

Privacy accounting is not done here. This gives the DP-SGD update; the guarantee ``(epsilon,
delta)`` of a run comes from an accountant (e.g. Google's ``dp_accounting``, RDP or PRV) given the
noise multiplier, the sampling rate ``B / N`` and the number of steps. The standard analyses assume
each batch is a Poisson sample of the data; ``fit`` takes batches in order or as a shuffled epoch
(sampling without replacement), for which those guarantees are approximations.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from optax.contrib import differentially_private_aggregate

from bpjax import errors
from bpjax.core import Layer, check_model, is_contextual
from bpjax.per_example import per_example_grads

__all__ = ["DPSGD"]


def DPSGD(model: Layer, *, l2_norm_clip: float, noise_multiplier: float) -> Layer:
    """``model``'s forward with the DP-SGD backward (see the module's docstring).

    Args:
      model: a simple layer or model (no batch statistics or dropout: an example's gradient is that of
        the model run on that example alone).
      l2_norm_clip: ``C``, the largest 2-norm an example's gradient keeps.
      noise_multiplier: ``sigma``: the noise's standard deviation is ``sigma C`` on the sum, ``sigma C / B``
        on the mean. ``0`` clips without noise.

    Returns:
      A contextual layer (it draws its noise from the ``key`` of each training step: ``fit(...,
      key=...)``); its params are ``model``'s, its state ``()``.

    Examples:
      >>> model = bp.privacy.DPSGD(bp.serial(L.Dense(4), L.Relu(), L.Dense(2)), l2_norm_clip=1.0, noise_multiplier=1.1)
      >>> _, params = model.init(jax.random.key(0), (3,))
      >>> state = bp.init_state(model, jax.random.key(0), (3,))
      >>> x, y = jnp.linspace(-1, 1, 24).reshape(8, 3), jnp.arange(8) % 2
      >>> result = bp.train.fit(model, bp.losses.softmax_cross_entropy, optax.sgd(0.1), params, (x, y), steps=3,
      ...                       batch_size=4, state=state, key=jax.random.key(1), verbose=False)
      >>> result.history["loss"].shape, bp.is_contextual(model)    # it draws the noise from the key
      ((3,), True)
    """
    check_model(model, "DPSGD")
    name = f"DPSGD({model.name}, clip {l2_norm_clip:g}, noise {noise_multiplier:g})"
    if is_contextual(model):
        raise errors.BpjaxError(name, f"expected a simple model, got {model.name}, which keeps state or draws "
                                      f"random numbers: an example's gradient is the model run on it alone "
                                      f"(batch norm in eval mode, or LayerNorm)")
    for what, v in (("l2_norm_clip", l2_norm_clip), ("noise_multiplier", noise_multiplier)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or (what == "l2_norm_clip" and v == 0):
            want = "a positive number" if what == "l2_norm_clip" else "a number >= 0"
            raise errors.BpjaxError("DPSGD", f"{what} must be {want}, got {v!r}")

    def cotangent(pred, t):  # L = sum(pred * t), dL/dpred = t: per-example gradients of the cotangent t
        return jnp.sum(pred * t)

    per_example = per_example_grads(model, cotangent)

    def init_state(key, input_shape):
        return model.init(key, input_shape)[0], ()

    def forward(params, x, *, state, key=None, train=True):
        if train and key is None and noise_multiplier > 0:
            raise errors.BpjaxError(name, "draws noise at every training step: pass key= (fit(..., key=...))")
        y, residuals = model.forward(params, x)
        return y, (x, residuals, key), state

    def backward(params, saved, dy):
        # in the forward pass this was: y = model(params, x), and the loss a mean over the B rows of y
        x, residuals, key = saved
        B = dy.shape[0]
        _, g = per_example(params, x, B * dy)  # g_i: (B, ...) per leaf, example i's own gradient
        aggregate = differentially_private_aggregate(l2_norm_clip, noise_multiplier,
                                                     jax.random.key(0) if key is None else key)
        dparams, _ = aggregate.update(g, aggregate.init(params))
        return dparams, model.backward(params, residuals, dy)[1]

    return Layer(model.init, forward, backward, name, init_state, kind="DPSGD")
