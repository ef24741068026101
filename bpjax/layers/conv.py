"""Convolutions ``y = conv(x, W) + b``, channels last, with ``dx`` and ``dW`` written out as convolutions.

Layout (channels last, JAX's habit; ``G = groups``, ``F = features``)::

    Conv1D: x (B, L, C_in)     W (K, C_in // G, F)        b (F,)   y (B, L_out, F)
    Conv2D: x (B, H, W, C_in)  W (KH, KW, C_in // G, F)   b (F,)   y (B, H_out, W_out, F)

Per spatial axis, with kernel size ``k``, stride ``s``, dilation ``d`` and padding ``(lo, hi)``::

    k_eff = (k - 1) * d + 1                        # the dilated window
    L_out = floor((L + lo + hi - k_eff) / s) + 1

Padding: ``"VALID"`` is ``(0, 0)``; ``"SAME"`` gives ``L_out = ceil(L / s)`` with
``total = max((L_out - 1) * s + k_eff - L, 0)``, ``lo = total // 2``, ``hi = total - lo`` (as
``lax``); an int ``p`` is ``(p, p)`` on every axis; or explicit ``[(lo, hi), ...]``, one per axis.
When ``L + lo + hi - k_eff`` is not divisible by ``s`` the last rows of the padded input are never
read; their gradient is zero.

The forward, in the code's notation (1-D; ``x_pad`` is ``x`` padded by ``(lo, hi)``, channel
``g * Cg + c`` of ``x`` feeds output ``g * Fg + f`` with ``Cg = C_in / G``, ``Fg = F / G``)::

    y[b, t, g Fg + f] = b[g Fg + f] + sum_{k, c} x_pad[b, t s + k d, g Cg + c] * W[k, c, g Fg + f]
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence, Tuple, Union

import jax.numpy as jnp
from jax import lax

from bpjax import errors
from bpjax.core import Layer
from bpjax.initializers import Initializer, initializer, param_dtype
from bpjax.rules import rule_tag, with_backward_rule

IntOrTuple = Union[int, Sequence[int]]
Padding = Union[str, int, Sequence[Tuple[int, int]]]
_SPATIAL = {1: "W", 2: "HW"}  # spatial letters of the lax dimension-number strings
# The backward gathers the windows (im2col: B * L_out * K * C_in numbers) and uses matmuls when that
# is at most this many elements (512 KiB in float32), else convolutions: on XLA CPU the first is
# faster for small layers (the MNIST-1D CNN: 0.92x the time of jax.grad), the second for large ones.
IM2COL_MAX_ELEMENTS = 1 << 17


def tuple_arg(where: str, what: str, value, n: int) -> Tuple[int, ...]:
    """``value`` (a positive int, or a length-``n`` tuple or list of them) as an ``n``-tuple of ints."""
    if not isinstance(value, (tuple, list)):
        return (errors.positive_int(where, what, value),) * n
    if len(value) != n:
        raise errors.BpjaxError(where, f"{what} must be a positive int or a tuple of {n} of them, got {value!r}")
    return tuple(errors.positive_int(where, f"{what}[{i}]", v) for i, v in enumerate(value))


def padding_arg(where: str, padding, n: int):
    """Validate ``padding``: ``"SAME"``, ``"VALID"``, an int ``>= 0``, or ``n`` pairs ``(lo, hi)`` of ints ``>= 0``."""
    if isinstance(padding, str) and padding.upper() in ("SAME", "VALID"):
        return padding.upper()
    def count(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    if count(padding):
        return ((padding, padding),) * n
    if isinstance(padding, (tuple, list)) and len(padding) == n and all(
            isinstance(p, (tuple, list)) and len(p) == 2 and all(count(v) for v in p) for p in padding):
        return tuple((int(lo), int(hi)) for lo, hi in padding)
    raise errors.BpjaxError(where, f"padding must be 'SAME', 'VALID', an int >= 0 or {n} pairs (lo, hi) of "
                                   f"ints >= 0, got {padding!r}")


def window_geometry(where: str, sizes, k_eff, stride, padding):
    """Pads ``((lo, hi), ...)`` and output sizes for windows ``k_eff`` moved by ``stride`` over ``sizes``.

    Raises a :class:`~bpjax.errors.BpjaxError` naming ``where`` when a window is bigger than the padded input.
    """
    if padding == "VALID":
        pads = ((0, 0),) * len(sizes)
    elif padding == "SAME":
        same = []
        for size, k, s in zip(sizes, k_eff, stride):
            total = max((-(-size // s) - 1) * s + k - size, 0)
            same.append((total // 2, total - total // 2))
        pads = tuple(same)
    else:
        pads = padding
    out = []
    for axis, (size, k, s, (lo, hi)) in enumerate(zip(sizes, k_eff, stride, pads)):
        if size + lo + hi < k:
            raise errors.BpjaxError(where, f"window {k} (dilated) is bigger than the padded input on spatial axis "
                                           f"{axis}: size {size} + padding ({lo}, {hi}) = {size + lo + hi}")
        out.append((size + lo + hi - k) // s + 1)
    return pads, tuple(out)


def init_geometry(name: str, n: int, input_shape, geometry):
    """Check a per-example ``input_shape`` (``n`` spatial axes, then channels); ``-> (shape, out sizes)``."""
    input_shape = tuple(input_shape)
    if len(input_shape) != n + 1:
        raise errors.BpjaxError(name, f"expected an input shape of rank {n + 1} (spatial..., C) per example, "
                                      f"got {input_shape}")
    return input_shape, geometry(input_shape)[1]


def patches(x, ks, stride, dilation, pads, out, pad_value=0.0):
    """im2col: every window of ``x: (B, *sizes, C)``, as ``P: (B, *out, prod(ks), C)``.

    ``P[b, t, j, c] = x_pad[b, t * stride + j * dilation, c]`` (per spatial axis; ``j`` runs over the
    window offsets in row-major order, ``x_pad`` is ``x`` padded with ``pad_value`` by ``pads``).
    """
    n = len(ks)
    config = [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in pads] + [(0, 0, 0)]
    xp = lax.pad(x, jnp.asarray(pad_value, x.dtype), config)
    cols = []
    for j in itertools.product(*map(range, ks)):
        start = [0] + [jj * d for jj, d in zip(j, dilation)] + [0]
        limit = [x.shape[0]] + [st + (o - 1) * s + 1 for st, o, s in zip(start[1:], out, stride)] + [x.shape[-1]]
        cols.append(lax.slice(xp, start, limit, (1, *stride, 1)))
    return jnp.stack(cols, axis=n + 1)


def col2im(dP, sizes, ks, stride, dilation, pads):
    """The transpose of :func:`patches`: ``dx[b, i, c] = sum_{t, j : t s + j d - lo = i} dP[b, t, j, c]``.

    ``dP: (B, *out, prod(ks), C)`` -> ``dx: (B, *sizes, C)``. Each window offset ``j`` is scattered
    back with one ``lax.pad``: ``s - 1`` zeros between rows, shifted by ``j d - lo`` (a negative pad
    crops the padding away), and the rows beyond (the leftover) filled with zeros.
    """
    n, out = len(ks), dP.shape[1:-2]
    zero = jnp.zeros((), dP.dtype)
    dx = None
    for idx, j in enumerate(itertools.product(*map(range, ks))):
        config = [(0, 0, 0)] + [(jj * d - lo, size + lo - jj * d - (o - 1) * s - 1, s - 1)
                                for jj, d, (lo, _), size, o, s in zip(j, dilation, pads, sizes, out, stride)]
        config.append((0, 0, 0))
        term = lax.pad(lax.index_in_dim(dP, idx, axis=n + 1, keepdims=False), zero, config)
        dx = term if dx is None else dx + term
    return dx


def _conv(n: int, cls: str, features, kernel_size, stride, padding, dilation, groups, bias, init, stddev, dtype,
          name, backward_rule, feedback_init):
    features = errors.positive_int(cls, "features", features)
    ks = tuple_arg(cls, "kernel_size", kernel_size, n)
    stride = tuple_arg(cls, "stride", stride, n)
    dilation = tuple_arg(cls, "dilation", dilation, n)
    padding = padding_arg(cls, padding, n)
    if features % errors.positive_int(cls, "groups", groups):
        raise errors.BpjaxError(cls, f"groups must divide features={features}, got groups={groups}")
    tag = rule_tag(cls, backward_rule)
    name = name or f"{cls}({features}, {ks if n > 1 else ks[0]}{tag})"
    param_dtype(name, dtype)
    k_eff = tuple((k - 1) * d + 1 for k, d in zip(ks, dilation))
    G, F = groups, features
    sp = _SPATIAL[n]
    with errors.context(name):  # a bad init names the layer
        w_init = initializer(init, stddev)

    def geometry(in_shape):
        """``in_shape`` (L, C_in) or (H, W, C_in) -> pads and output spatial sizes; checks the groups."""
        c_in = in_shape[-1]
        if c_in % G:
            raise errors.BpjaxError(name, f"groups={G} must divide the input channels, got C_in={c_in} "
                                          f"(input shape {tuple(in_shape)})")
        return window_geometry(name, in_shape[:-1], k_eff, stride, padding)

    def init_fn(key, input_shape):
        key, input_shape = errors.init_arguments(f"{name}.init", key, input_shape, key_needed=True)
        input_shape, out = init_geometry(name, n, input_shape, geometry)
        dt = param_dtype(name, dtype)
        params = {"W": w_init(key, (*ks, input_shape[-1] // G, F), dt)}
        if bias:
            params["b"] = jnp.zeros((F,), dt)
        return (*out, F), params

    def check(params, x):
        keys = {"W", "b"} if bias else {"W"}
        if not isinstance(params, dict) or set(params) != keys:
            got = sorted(params) if isinstance(params, dict) else type(params).__name__
            raise errors.BpjaxError(name, f"params do not match the layer: expected keys {sorted(keys)}, got {got}")
        errors.check_floating(name, x)
        errors.check_ndim(name, x, n + 2)
        W = params["W"]
        errors.check_input_dtype(name, x, W)
        want = f"W ({', '.join(map(str, ks))}, C_in // {G}, {F})" + (f" and b ({F},)" if bias else "")
        if W.ndim != n + 2 or W.shape[:n] != ks or W.shape[-1] != F or (bias and params["b"].shape != (F,)):
            raise errors.BpjaxError(name, f"params do not match the layer: expected {want}, got W {tuple(W.shape)}"
                                          + (f" and b {tuple(params['b'].shape)}" if bias else ""))
        if x.shape[-1] != W.shape[-2] * G:
            raise errors.BpjaxError(name, f"expected {W.shape[-2] * G} input channels on the last axis (W has "
                                          f"{W.shape[-2]} per group, groups={G}), got an input of shape "
                                          f"{tuple(x.shape)}")
        return geometry(x.shape[1:])

    def forward(params, x):
        pads, _ = check(params, x)
        y = lax.conv_general_dilated(x, params["W"], stride, pads, rhs_dilation=dilation,
                                     dimension_numbers=(f"N{sp}C", f"{sp}IO", f"N{sp}C"), feature_group_count=G)
        if bias:
            y = y + params["b"]
        return y, x  # the backward needs x (for dW); W comes with params

    def dx_dw_by_convolutions(W, x, dy, pads, out):
        sizes, Cg = x.shape[1:-1], W.shape[-2]
        # dx_pad[b, i, g Cg + c] = sum_{t, k : t s + k d = i} sum_f dy[b, t, g Fg + f] W[k, c, g Fg + f]:
        # dy dilated by s (s - 1 zeros between rows) convolved at stride 1 with the flipped kernel
        # (dilation d), in/out channels swapped. The pads make the result exactly L rows: k_eff - 1 - lo
        # in front; at the back L + lo - 1 - (L_out - 1) s, which is short of k_eff - 1 - hi by the
        # leftover rows, so those get zeros (negative pads crop).
        dx_pads = [(k - 1 - lo, size + lo - 1 - (o - 1) * s) for k, (lo, _), size, o, s in
                   zip(k_eff, pads, sizes, out, stride)]
        W_flip = W[(slice(None, None, -1),) * n]
        if G == 1:  # W read as (K, O=C_in, I=F): no transpose needed
            W_t, rhs_spec = W_flip, f"{sp}OI"
        else:  # (K, Cg, G, Fg) -> (K, Fg, G, Cg) -> (K, Fg, C_in): group g maps dy's Fg block to x's Cg block
            W_t = W_flip.reshape(*ks, Cg, G, F // G).swapaxes(-3, -1).reshape(*ks, F // G, G * Cg)
            rhs_spec = f"{sp}IO"
        dx = lax.conv_general_dilated(dy, W_t, (1,) * n, dx_pads, lhs_dilation=stride, rhs_dilation=dilation,
                                      dimension_numbers=(f"N{sp}C", rhs_spec, f"N{sp}C"), feature_group_count=G)
        # dW[k, c, g Fg + f] = sum_{b, t} x_pad[b, t s + k d, g Cg + c] * dy[b, t, g Fg + f]:
        # a convolution of x (batch B as the contracted feature axis, channels as its batch) with dy as
        # the kernel (dilated by s), moved in steps of d; it yields exactly K positions: the pad at the
        # back is (K - 1) d + (L_out - 1) s + 1 - L - lo, the leftover rows cut off. With groups, the
        # channels of x split into G batch groups, group g meeting dy's block g Fg : (g + 1) Fg.
        dw_pads = [(lo, k - 1 + (o - 1) * s + 1 - size - lo) for k, (lo, _), size, o, s in
                   zip(k_eff, pads, sizes, out, stride)]
        dW = lax.conv_general_dilated(x, dy, dilation, dw_pads, rhs_dilation=stride,
                                      dimension_numbers=(f"C{sp}N", f"I{sp}O", f"{sp}NC"), batch_group_count=G)
        return dx, dW

    def dx_dw_by_im2col(W, x, dy, pads, out):
        # The same sums with the windows gathered: P: (N, K, C_in), N = B * L_out rows,
        # P[n, k, c] = x_pad[b, t s + k d, c] (the leftover rows are never read), then matmuls.
        Cg, N, K = W.shape[-2], x.shape[0] * math.prod(out), math.prod(ks)
        P = patches(x, ks, stride, dilation, pads, out).reshape(N, K, G, Cg)
        dy2 = dy.reshape(N, G, F // G)
        W4 = W.reshape(K, Cg, G, F // G)
        if G == 1:
            dW = P.reshape(N, K * Cg).T @ dy2.reshape(N, F)                        # dW = P.T @ dy
            dP = dy2.reshape(N, F) @ W.reshape(K * Cg, F).T                        # dP = dy @ W.T
        else:  # block-diagonal: group g only pairs x's block g Cg : (g + 1) Cg with dy's g Fg : (g + 1) Fg
            dW = jnp.einsum("nkgc,ngf->kcgf", P, dy2)
            dP = jnp.einsum("ngf,kcgf->nkgc", dy2, W4)
        # dx: col2im, each window row scattered back to the x position it was read from
        dx = col2im(dP.reshape(x.shape[0], *out, K, G * Cg), x.shape[1:-1], ks, stride, dilation, pads)
        return dx, dW.reshape(W.shape)

    def backward_with(W, x, dy):
        # W is the layer's kernel for the exact rule, else the feedback kernel B: only dx reads it.
        # in the forward pass this was (1-D, see the module docstring; each spatial axis alike):
        #   y[b, t, g Fg + f] = b[g Fg + f] + sum_{k, c} x_pad[b, t s + k d, g Cg + c] * W[k, c, g Fg + f]
        # so now dx and dW are the same sum read the other way round. Two formulations of it: small
        # problems run faster on XLA CPU as im2col + matmul, large ones as convolutions (see
        # IM2COL_MAX_ELEMENTS and benchmarks/bench_conv.py).
        pads, out = geometry(x.shape[1:])
        im2col_size = x.shape[0] * math.prod(out) * math.prod(ks) * x.shape[-1]
        by = dx_dw_by_im2col if im2col_size <= IM2COL_MAX_ELEMENTS else dx_dw_by_convolutions
        dx, dW = by(W, x, dy, pads, out)
        grads = {"W": dW}
        if bias:
            grads["b"] = dy.sum(axis=tuple(range(n + 1)))  # db = dy summed over batch and positions
        return grads, dx

    feedback = feedback_init if feedback_init is not None else init
    return with_backward_rule(name, backward_rule, init_fn, forward, backward_with, feedback, stddev)


def Conv1D(features: int, kernel_size: IntOrTuple, *, stride: IntOrTuple = 1, padding: Padding = "SAME",
           dilation: IntOrTuple = 1, groups: int = 1, bias: bool = True, init: Initializer = "he_normal",
           stddev: float = 1.0, dtype=None, name: str | None = None, backward_rule: str = "exact",
           feedback_init: Initializer | None = None) -> Layer:
    """1-D convolution over ``x: (B, L, C_in)`` with ``W: (K, C_in // groups, features)``, ``b: (features,)``.

    Forward: ``y[b, t, o] = b[o] + sum_{k, c} x_pad[b, t s + k d, c'] W[k, c, o]`` (``c'`` the input
    channel of ``o``'s group), ``y: (B, L_out, features)``; see the module docstring for the
    padding rules and the output length.

    Backward (both written out as ``lax.conv_general_dilated`` calls, never ``jax.vjp``)::

        dx = conv(dilate(dy, s), flip(W) with in/out swapped)   # the transposed convolution
        dW = conv(x, dy as kernel dilated by s, moved in steps of d)
        db = dy.sum((0, 1))

    Args:
      features: output channels.
      kernel_size, stride, dilation: an int or a 1-tuple.
      padding: ``"SAME"`` (default), ``"VALID"``, an int, or ``[(lo, hi)]``.
      groups: ``C_in`` and ``features`` split into ``groups`` blocks; block ``g`` of the output sees
        only block ``g`` of the input (``groups = C_in`` is a depthwise convolution).
      bias: add ``b`` (params are ``{"W"}`` only when False).
      init: weight initialiser (a name from :func:`bpjax.layers.initializer` or a callable; fan-in
        ``K * C_in // groups``); biases start at zero.
      stddev: standard deviation for ``init="normal"`` (and ``feedback_init="normal"``).
      dtype: parameter dtype (default the canonical float: float32, or float64 with x64 on).
      name: display name (default ``Conv1D(features, K)``, with ``, FA`` or ``, sign`` for those rules).
      backward_rule: how ``dx`` is computed; ``dW`` and ``db`` are always the exact ones above, and
        both backward formulations (im2col and convolutions) take the same rule.

        - ``"exact"`` (default): ``dx`` as above, the true gradient.
        - ``"feedback_alignment"`` (Lillicrap et al. 2016): ``dx`` with a fixed random kernel ``B``
          (shape of ``W``, drawn at ``init_state`` by ``feedback_init``) in place of ``W``:
          ``dx = conv(dilate(dy, s), flip(B) with in/out swapped)``. ``B`` is non-trained state, so
          the layer is contextual: ``state = {"B": B}``.
        - ``"sign_symmetry"``: the same with ``B = mean(|W|) sign(W)``
          (:func:`bpjax.rules.sign_feedback`); no state.
      feedback_init: initialiser of ``B`` for ``"feedback_alignment"`` (default: ``init``).

    Examples:
      >>> layer = L.Conv1D(4, 3)                                   # 4 channels, kernel 3, "SAME" padding
      >>> out_shape, params = layer.init(jax.random.key(0), (8, 2))  # (L, C_in)
      >>> y, _ = layer.forward(params, jnp.ones((2, 8, 2)))
      >>> out_shape, params["W"].shape, y.shape
      ((8, 4), (3, 2, 4), (2, 8, 4))
    """
    return _conv(1, "Conv1D", features, kernel_size, stride, padding, dilation, groups, bias, init, stddev, dtype,
                 name, backward_rule, feedback_init)


def Conv2D(features: int, kernel_size: IntOrTuple, *, stride: IntOrTuple = 1, padding: Padding = "SAME",
           dilation: IntOrTuple = 1, groups: int = 1, bias: bool = True, init: Initializer = "he_normal",
           stddev: float = 1.0, dtype=None, name: str | None = None, backward_rule: str = "exact",
           feedback_init: Initializer | None = None) -> Layer:
    """2-D convolution over ``x: (B, H, W, C_in)`` with ``W: (KH, KW, C_in // groups, features)``.

    The forward, backward and arguments are those of :func:`Conv1D` on two spatial axes:
    ``y: (B, H_out, W_out, features)``; ``kernel_size``, ``stride`` and ``dilation`` are an int or a
    2-tuple, ``padding`` ``"SAME"``, ``"VALID"``, an int or ``[(lo_h, hi_h), (lo_w, hi_w)]``;
    ``db = dy.sum((0, 1, 2))``; ``init``, ``stddev``, ``dtype`` and ``name`` as there;
    ``backward_rule`` (``"exact"``, ``"feedback_alignment"``, ``"sign_symmetry"``) and
    ``feedback_init`` swap ``W`` for a feedback kernel ``B`` in ``dx`` only.

    Examples:
      >>> layer = L.Conv2D(4, 3, stride=2)
      >>> out_shape, params = layer.init(jax.random.key(0), (8, 8, 2))   # (H, W, C_in)
      >>> y, _ = layer.forward(params, jnp.ones((2, 8, 8, 2)))
      >>> out_shape, params["W"].shape, y.shape
      ((4, 4, 4), (3, 3, 2, 4), (2, 4, 4, 4))
    """
    return _conv(2, "Conv2D", features, kernel_size, stride, padding, dilation, groups, bias, init, stddev, dtype,
                 name, backward_rule, feedback_init)


__all__ = ["Conv1D", "Conv2D"]
