"""Backward rules other than the exact gradient: feedback alignment, sign symmetry, DFA, and how far they stray.

The forward pass never changes; only the backward does. Per layer (``Dense(..., backward_rule=...)``)::

    exact               da_prev = dz @ W.T
    feedback_alignment  da_prev = dz @ B.T     B: (D_in, D_out), fixed random, in the layer's state
    sign_symmetry       da_prev = dz @ B.T     B = mean(|W|) sign(W)

and alike for ``Conv1D``/``Conv2D``: ``dx`` is the transposed convolution of ``dy`` with a feedback
kernel ``B`` (shape of ``W``) in place of ``W``; ``dW`` and ``db`` stay exact for every rule. The
per-layer machinery (:data:`BACKWARD_RULES`, :func:`rule_tag`, :func:`with_backward_rule`,
:func:`sign_feedback`) comes first below; the layers with weights ``W`` import it from here.

and for a whole serial model, :func:`DFA` (direct feedback alignment, Nokland 2016): the output
error ``e = dL/dy`` (``(N, C)`` for a batch of ``N``) goes straight to every hidden layer through a fixed ``B_l``.

Metrics, all jit-able: :func:`gradient_angles` (the rule's update against ``jax.grad``'s, per
parameter leaf) and :func:`feedback_angles` (``W`` against ``B`` per feedback-alignment layer).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from bpjax import errors
from bpjax.combinators import serial, serial_backward
from bpjax.core import Layer, check_model, forward_of
from bpjax.core import init_state as _init_state
from bpjax.grad import check_inputs, gradients
from bpjax.initializers import Initializer, initializer
from bpjax.losses import as_loss

__all__ = ["BACKWARD_RULES", "DFA", "angle", "feedback_angles", "gradient_angles", "rule_tag", "sign_feedback",
           "with_backward_rule"]


BACKWARD_RULES = ("exact", "feedback_alignment", "sign_symmetry")
"""The names a layer's ``backward_rule`` takes (:func:`bpjax.layers.Dense`, ``Conv1D``, ``Conv2D``)."""


def sign_feedback(W: jax.Array) -> jax.Array:
    """The sign-symmetry feedback matrix ``B = mean(|W|) * sign(W)``, shape of ``W``.

    ``sign(W)`` scaled by one number: the closest matrix to ``W`` (in Frobenius norm) with ``W``'s
    sign pattern and a single magnitude, so the backward signal keeps the size of the exact one.
    The scale does not change any angle (Liao, Leibo and Poggio 2016, "uniform sign-concordant").

    Examples:
      >>> bp.rules.sign_feedback(jnp.array([[1.0, -3.0], [2.0, -2.0]])).tolist()   # mean(|W|) = 2
      [[2.0, -2.0], [2.0, -2.0]]
    """
    return jnp.mean(jnp.abs(W)) * jnp.sign(W)


def rule_tag(where: str, backward_rule: str) -> str:
    """Check ``backward_rule`` (raising a :class:`~bpjax.errors.BpjaxError` naming ``where``); its tag for layer names.

    Examples:
      >>> bp.rules.rule_tag("Dense", "exact"), bp.rules.rule_tag("Dense", "feedback_alignment")
      ('', ', FA')
      >>> bp.rules.rule_tag("Dense", "hebbian")
      Traceback (most recent call last):
      ...
      bpjax.errors.BpjaxError: Dense: unknown backward_rule 'hebbian'; expected one of ('exact', ...
    """
    if backward_rule not in BACKWARD_RULES:
        raise errors.BpjaxError(where, f"unknown backward_rule {backward_rule!r}; expected one of {BACKWARD_RULES}")
    return {"exact": "", "feedback_alignment": ", FA", "sign_symmetry": ", sign"}[backward_rule]


def with_backward_rule(name: str, backward_rule: str, init_fn, forward, backward_with,
                       feedback_init: Initializer, stddev: float = 1.0) -> Layer:
    """The layer ``(init_fn, forward)`` with the backward of ``backward_rule``, for any layer with weights ``W``.

    ``backward_with(B, residuals, dz) -> (grads, dx)`` is the exact backward with ``B`` standing for
    ``W`` wherever the input gradient needs it (``dW``, ``db`` never use it). It gets ``B = W``
    (``"exact"``), ``B = sign_feedback(W)`` (``"sign_symmetry"``), or a fixed random ``B`` with the
    shape of ``W`` drawn by ``feedback_init`` (``"feedback_alignment"``: the layer becomes contextual,
    ``state = {"B": B}``, and ``B`` travels to the backward in the residuals ``(residuals, B)``).

    Examples:
      >>> def init(key, shape):                     # y = x @ W, W: (D, 2)
      ...     return (2,), {"W": jax.random.normal(key, shape + (2,))}
      >>> def forward(params, x):
      ...     return x @ params["W"], x             # the backward needs x
      >>> def backward_with(B, x, dz):              # B stands for W in dx only
      ...     return {"W": x.T @ dz}, dz @ B.T
      >>> layer = bp.rules.with_backward_rule("Linear", "sign_symmetry", init, forward, backward_with, "normal")
      >>> _, params = layer.init(jax.random.key(0), (3,))
      >>> y, x = layer.forward(params, jnp.ones((4, 3)))
      >>> dparams, dx = layer.backward(params, x, jnp.ones_like(y))
      >>> dparams["W"].shape, dx.shape
      ((3, 2), (4, 3))
    """
    if backward_rule == "exact":
        def backward(params, residuals, dz):
            return backward_with(params["W"], residuals, dz)
        return Layer(init_fn, forward, backward, name)

    if backward_rule == "sign_symmetry":
        def backward_sign(params, residuals, dz):
            return backward_with(sign_feedback(params["W"]), residuals, dz)
        return Layer(init_fn, forward, backward_sign, name)

    with errors.context(name):  # a bad feedback_init names the layer
        b_init = initializer(feedback_init, stddev)

    def init_state(key, input_shape):
        out_shape, params = init_fn(key, input_shape)  # same shapes; B gets its own key below
        W = params["W"]
        return out_shape, {"B": b_init(jax.random.fold_in(key, 1), W.shape, W.dtype)}

    def forward_fa(params, x, *, state, key=None, train=True):
        if not isinstance(state, dict) or set(state) != {"B"}:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise errors.BpjaxError(name, f"state does not match the layer: expected keys ['B'], got {got} "
                                          f"(use bp.init_state(model, key, input_shape))")
        z, residuals = forward(params, x)
        B = state["B"]
        if B.shape != params["W"].shape:
            raise errors.BpjaxError(name, f"feedback weights B must have the shape of W {tuple(params['W'].shape)}, "
                                          f"got {tuple(B.shape)}")
        return z, (residuals, B), state  # the backward needs the layer's residuals and the fixed B

    def backward_fa(params, residuals, dz):
        inner, B = residuals
        return backward_with(B, inner, dz)

    return Layer(init_fn, forward_fa, backward_fa, name, init_state)


def angle(a, b) -> jax.Array:
    """The angle in degrees between two arrays (or pytrees) taken as flat vectors.

    ``angle = arccos(<a, b> / (|a| |b|))``; 90 when either is zero (no alignment to speak of).

    Examples:
      >>> round(float(bp.rules.angle(jnp.array([1.0, 0.0]), jnp.array([1.0, 1.0]))), 4)
      45.0
      >>> round(float(bp.rules.angle({"W": jnp.ones(3)}, {"W": -jnp.ones(3)})), 4)    # pytrees too
      180.0
    """
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    dot = sum(jnp.vdot(x, y) for x, y in zip(la, lb))
    na = jnp.sqrt(sum(jnp.vdot(x, x) for x in la))
    nb = jnp.sqrt(sum(jnp.vdot(y, y) for y in lb))
    denom = na * nb
    cos = jnp.where(denom > 0, dot / jnp.where(denom > 0, denom, 1.0), 0.0)
    return jnp.degrees(jnp.arccos(jnp.clip(cos, -1.0, 1.0)))


def gradient_angles(model: Layer, loss):
    """Per parameter leaf, the angle (degrees) between the model's own update and the true gradient.

    The update is the model's hand-written backward (whatever rule its layers use); the true gradient
    is ``jax.grad`` of the same forward and loss. 0 for exact layers (up to roundoff), below 90 when
    the rule's update still descends the loss.

    Returns ``fn(params, x, y, *, state=None, key=None, train=True) -> angles``, ``angles`` a pytree
    with the structure of ``params`` and one scalar per leaf; jit-able.

    Examples:
      >>> model = bp.serial(L.Dense(4, backward_rule="sign_symmetry"), L.Tanh(), L.Dense(2))
      >>> _, params = model.init(jax.random.key(0), (3,))
      >>> x, y = jnp.linspace(-1, 1, 24).reshape(8, 3), jnp.arange(8) % 2
      >>> angles = bp.rules.gradient_angles(model, bp.losses.softmax_cross_entropy)(params, x, y)
      >>> jax.tree.map(lambda a: bool(a < 90), angles)    # 0 for the exact last layer, below 90 for the first
      ({'W': True, 'b': True}, (), {'W': True, 'b': True})
    """
    check_model(model)
    loss = as_loss(loss)
    manual = gradients(model, loss)
    true = gradients(model, loss, backward="autodiff")
    where = f"gradient_angles({model.name})"

    def fn(params, x, y, *, state=None, key=None, train=True):
        x, y, state = check_inputs(where, model, x, y, state, key)
        g_rule = manual(params, x, y, state, key, train)[2]
        g_true = true(params, x, y, state, key, train)[2]
        return jax.tree.map(angle, g_rule, g_true)

    return fn


def feedback_angles(params, state) -> tuple:
    """Angles (degrees) between ``W`` and its feedback matrix ``B``, one per feedback-alignment layer.

    Walks ``params`` and ``state`` together (tuples of ``serial``, dicts of layers) and pairs every
    params ``{"W": ...}`` with a state ``{"B": ...}`` of the same shape (Dense matrices and
    convolution kernels alike, each taken as one flat vector). For sign symmetry use
    ``angle(W, sign_feedback(W))``.

    Returns:
      A tuple of scalars, in layer order (empty when the model has no such layer).

    Examples:
      >>> model = bp.serial(L.Dense(4, backward_rule="feedback_alignment"), L.Tanh(), L.Dense(2))
      >>> _, params = model.init(jax.random.key(0), (3,))
      >>> state = bp.init_state(model, jax.random.key(1), (3,))
      >>> angles = bp.rules.feedback_angles(params, state)          # one per feedback-alignment layer
      >>> len(angles), bool(0 < angles[0] < 180)
      (1, True)
    """
    out = []

    def walk(p, s):
        if isinstance(s, dict) and isinstance(p, dict) and "B" in s and "W" in p:
            if jnp.shape(s["B"]) == jnp.shape(p["W"]):
                out.append(angle(p["W"], s["B"]))
        elif isinstance(s, (tuple, list)) and isinstance(p, (tuple, list)) and len(s) == len(p):
            for pi, si in zip(p, s):
                walk(pi, si)

    walk(params, state)
    return tuple(out)


def _is_dense_params(p) -> bool:
    return isinstance(p, dict) and "W" in p and jnp.ndim(p["W"]) == 2


def DFA(*layers: Layer, feedback_init: Initializer = "glorot_uniform", name: Optional[str] = None) -> Layer:
    """Direct feedback alignment (Nokland 2016) over a serial stack of Dense and elementwise layers.

    Forward: exactly ``serial(*layers)``. Backward, in the reverse order of the forward pass, with
    ``e = dL/dy`` the error at the model output ``(N, C)`` (a batch of ``N``: ``B`` names the feedback
    matrices here), every layer runs its own backward, except that the gradient arriving at the
    *input* of each Dense layer after the first (the output of the hidden layer below it) is not
    ``dz @ W.T`` but the direct projection::

        da_l = e @ B_l          # B_l: (C, D_l), fixed random, D_l the width of hidden layer l

    so an activation below it gives ``dz_l = (e @ B_l) * f'(z_l)`` and ``dW_l = a_{l-1}.T @ dz_l``.
    The last Dense layer (the output layer) gets the exact ``dz = e`` through any layers after it.

    Limits: a *serial* model whose Dense layers (recognised by 2-D ``W`` params) take inputs
    ``(N, D)`` and whose output is ``(N, C)``; other layers between them (activations, dropout,
    normalisation) run their exact backward. No residual connections or convolutions.

    State: ``{"layers": <the children's state>, "B": (B_l or () per layer)}``; the model is contextual.

    Args:
      *layers: the layers, first to last, as for :func:`bpjax.serial`.
      feedback_init: initialiser of each ``B_l`` (a name or callable, see :func:`bpjax.layers.initializer`).
      name: display name (default ``DFA(...)``).

    Examples:
      >>> model = bp.rules.DFA(L.Dense(8), L.Tanh(), L.Dense(8), L.Tanh(), L.Dense(2))
      >>> _, params = model.init(jax.random.key(0), (3,))
      >>> state = bp.init_state(model, jax.random.key(1), (3,))    # the fixed feedback matrices B_l
      >>> x, y = jnp.linspace(-1, 1, 24).reshape(8, 3), jnp.arange(8) % 2
      >>> (loss, state), grads = bp.value_and_grad(model, bp.losses.softmax_cross_entropy)(params, x, y, state=state)
      >>> [getattr(B, "shape", None) for B in state["B"]]   # B_l: (C, D_l), for the Dense layers after the first
      [None, None, (2, 8), None, (2, 8)]
    """
    inner = serial(*layers)
    name = name or "DFA(" + ", ".join(layer.name for layer in layers) + ")"
    b_init = initializer(feedback_init)

    def init_state(key, input_shape):
        key, input_shape = errors.init_arguments(f"{name}.init_state", key, input_shape, key_needed=True)
        k_inner, k_b = jax.random.split(key)
        out_shape, params = inner.init(k_inner, input_shape)
        C = out_shape[-1]
        Bs, shape, first = [], tuple(input_shape), True
        for i, (layer, p, k) in enumerate(zip(layers, params, jax.random.split(k_b, len(layers)))):
            if _is_dense_params(p):
                if not first and len(shape) != 1:
                    raise errors.BpjaxError(f"{name} serial[{i}]", f"DFA needs Dense inputs of shape (N, D), "
                                                                   f"got per-example shape {shape}")
                Bs.append(() if first else b_init(k, (C, shape[0]), p["W"].dtype))
                first = False
            else:
                Bs.append(())
            shape, _ = layer.init(k, shape)
        if len(out_shape) != 1:
            raise errors.BpjaxError(name, f"expected a model output of shape (N, C), got per-example shape "
                                          f"{out_shape}")
        state = {"layers": _init_state(inner, k_inner, input_shape), "B": tuple(Bs)}
        return out_shape, state

    init = inner.init

    def forward(params, x, *, state, key=None, train=True):
        if not isinstance(state, dict) or set(state) != {"layers", "B"}:
            raise errors.BpjaxError(name, "state does not match the model: expected {'layers', 'B'} from "
                                          "bp.init_state(model, key, input_shape)")
        y, residuals, new_inner = forward_of(inner, params, x, state=state["layers"], key=key, train=train)
        return y, (residuals, state["B"]), {"layers": new_inner, "B": state["B"]}

    def backward(params, saved, dy):
        residuals, Bs = saved
        errors.check_ndim(name, dy, 2, "output gradient")
        e = dy                                     # the output error e = dL/dy: (N, C)

        def direct(i, d):                          # DFA: da_{l-1} = e @ B_l instead of dz_l @ W_l.T
            return d if isinstance(Bs[i], tuple) else e @ Bs[i]

        return serial_backward(layers, params, residuals, dy, after=direct)

    return Layer(init, forward, backward, name, init_state, kind="DFA")
