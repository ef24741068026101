"""The one abstraction: a layer is a NamedTuple of pure functions with a hand-written backward.

A :class:`Layer` is three pure functions (and a name)::

    init(key, input_shape)          -> (output_shape, params)
    forward(params, x)              -> (y, residuals)
    backward(params, residuals, dy) -> (dparams, dx)

``input_shape`` is the shape of one example (no batch axis); ``forward`` takes a batch whose
leading axis is the batch axis. ``dparams`` has exactly the tree structure of ``params`` and
``residuals`` is a pytree: this is the ``fwd``/``bwd`` pair of ``jax.custom_vjp``, so any layer can
be handed to JAX as a custom VJP (see :func:`bpjax.as_custom_vjp`).

Stateful and stochastic layers
------------------------------
Most layers are *simple*: the three functions above and nothing else. A layer that keeps
non-trained state (batch-norm running statistics, fixed feedback matrices) or draws random numbers
(dropout) is *contextual*: it sets ``init_state`` and its forward takes the context as keywords::

    init_state(key, input_shape)                  -> (output_shape, state)
    forward(params, x, *, state, key, train)      -> (y, residuals, new_state)

``state`` is a pytree that the optimiser never sees; ``key`` is a PRNG key (or ``None`` when the
layer needs none, e.g. in eval mode); ``train`` is a Python bool. Its backward is unchanged:
whatever the backward needs (a dropout mask, batch statistics, a feedback matrix) travels in the
residuals. Containers (``serial`` and friends) are contextual when any child is, and then split
the key and thread the state for their children, so the training step handles every model alike.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Tuple

import jax

from bpjax import _errors, contract

Array = jax.Array
Shape = Tuple[int, ...]
Params = Any
State = Any
Residuals = Any
PRNGKey = jax.Array

InitFn = Callable[[PRNGKey, Shape], Tuple[Shape, Params]]
ForwardFn = Callable[..., Tuple[Any, ...]]
BackwardFn = Callable[[Params, Residuals, Array], Tuple[Params, Array]]
InitStateFn = Callable[[PRNGKey, Shape], Tuple[Shape, State]]


class Layer(NamedTuple):
    """A layer: pure ``init``/``forward``/``backward`` functions, a name, and optional state.

    Attributes:
      init: ``(key, input_shape) -> (output_shape, params)``; ``input_shape`` excludes the batch.
      forward: simple layers ``(params, x) -> (y, residuals)``; contextual layers
        ``(params, x, *, state, key, train) -> (y, residuals, new_state)``.
      backward: ``(params, residuals, dy) -> (dparams, dx)``, the hand-written VJP.
      name: shown in error messages and gradient-check reports, e.g. ``"Dense(100)"``.
      init_state: ``None`` for simple layers; ``(key, input_shape) -> (output_shape, state)`` for
        contextual ones.
      children: the sub-layers of a container (``serial``, ``Residual``, ``parallel``, ...), in
        order; ``()`` for a leaf layer. Walk a model with it, e.g. ``model.children[2]``.
    """

    init: InitFn
    forward: ForwardFn
    backward: BackwardFn
    name: str = "layer"
    init_state: Optional[InitStateFn] = None
    children: Tuple["Layer", ...] = ()

    def __repr__(self) -> str:
        return self.name


def check_model(model, where: str = "model") -> Layer:
    """``model`` itself when it is a :class:`Layer`; a :class:`BpjaxTypeError` naming ``where`` otherwise."""
    if not isinstance(model, Layer):
        raise _errors.BpjaxTypeError(where, f"expected a bpjax Layer (e.g. bp.serial(...)), got "
                                            f"{type(model).__name__}")
    return model


def split_key(key: Optional[PRNGKey], n: int) -> list:
    """``n`` keys for ``n`` children, split once from ``key`` (``n`` Nones without a key).

    The one key split of every container (``serial``, ``parallel``) and of everything that walks a
    container's children the way it does (diagnostics, DFA).
    """
    return [None] * n if key is None else list(jax.random.split(key, n))


def is_contextual(layer: Layer) -> bool:
    """True when ``layer`` keeps state or draws random numbers (its ``init_state`` is set)."""
    return layer.init_state is not None


def init_state(layer: Layer, key: PRNGKey, input_shape: Shape) -> State:
    """The initial non-trained state of ``layer`` (``()`` for a simple layer)."""
    if layer.init_state is None:
        return ()
    return contract.init_output(layer.name, layer.init_state(key, tuple(input_shape)))[1]


def init(layer: Layer, key: PRNGKey, input_shape: Shape, *, state: bool = False) -> Tuple[Shape, Any]:
    """``layer.init(key, input_shape) -> (output_shape, params)``, its contract checked.

    With ``state=True``: ``(output_shape, state)`` from ``layer.init_state`` (``()`` for a simple layer).
    """
    if state and layer.init_state is None:
        return contract.init_output(layer.name, layer.init(key, tuple(input_shape)))[0], ()
    fn = layer.init_state if state else layer.init
    return contract.init_output(layer.name, fn(key, tuple(input_shape)))


def apply(layer: Layer, params: Params, x: Array, *, state: State = (), key: Optional[PRNGKey] = None,
          train: bool = True) -> Tuple[Array, Residuals, State]:
    """Run any layer's forward with a uniform signature: ``-> (y, residuals, new_state)``.

    Simple layers ignore ``state``, ``key`` and ``train`` and return ``state`` unchanged. The
    layer's output is checked against the contract (:mod:`bpjax.contract`).
    """
    if is_contextual(layer):
        return contract.forward_output(layer.name, layer.forward(params, x, state=state, key=key, train=train), True)
    y, residuals = contract.forward_output(layer.name, layer.forward(params, x), False)
    return y, residuals, state


def vjp(layer: Layer, params: Params, residuals: Residuals, dy, like_x=None) -> Tuple[Params, Any]:
    """``layer.backward(params, residuals, dy) -> (dparams, dx)``, checked: ``dparams`` mirrors ``params``
    (structure, shapes, dtypes) and ``dx`` mirrors ``like_x`` (the input, or shape/dtype structs of it) when given."""
    return contract.backward_output(layer.name, layer.backward(params, residuals, dy), params, like_x)
