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

What a layer is
---------------
``kind`` says what built a layer (``"serial"``, ``"parallel"``, ``"Residual"``, ``"Autodiff"``,
``"gpt"``, ...) for code that must know it, such as the gradient checker's row labels; ``settings``
holds a model's static settings as ``(name, value)`` pairs (a GPT's ``context``). Both are plain
fields: a :class:`Layer` is a NamedTuple of pure functions and values, equal to another one built
from the same functions, and hashable, so it can be a static argument of ``jax.jit``.

Arguments of ``init`` and ``init_state``
----------------------------------------
Each layer's ``init`` checks its own arguments (:func:`bpjax.errors.init_arguments`), as its
forward checks its params and input: ``key`` must be a PRNG key (``jax.random.key(0)``, or a
legacy ``jax.random.PRNGKey(0)``), or ``None`` for a layer without parameters; an int seed is
refused with a :class:`bpjax.BpjaxTypeError` that names the layer and shows the fix, since silently
turning ``0`` into ``jax.random.key(0)`` would give every layer seeded alike the same weights. An
int ``input_shape`` is taken as a one-axis shape: ``init(key, 8)`` is ``init(key, (8,))``.
A container's ``init_state`` checks its arguments the same way.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Tuple

import jax

from bpjax import contract, errors

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
      kind: what built the layer, for code that must know it: ``"serial"``, ``"parallel"``,
        ``"Residual"``, ``"remat"``, ``"Autodiff"``, ``"gpt"``, ...; ``"layer"`` by default.
      settings: a model's static settings, ``(name, value)`` pairs (hashable), e.g. a GPT's
        ``context``: ``dict(model.settings)``.
    """

    init: InitFn
    forward: ForwardFn
    backward: BackwardFn
    name: str = "layer"
    init_state: Optional[InitStateFn] = None
    children: Tuple["Layer", ...] = ()
    kind: str = "layer"
    settings: Tuple[Tuple[str, Any], ...] = ()

    def __repr__(self) -> str:
        return self.name


def check_model(model, where: str = "model") -> Layer:
    """``model`` itself when it is a :class:`Layer`; a :class:`~bpjax.errors.BpjaxTypeError` naming ``where``
    otherwise."""
    if not isinstance(model, Layer):
        hint = (" (a JAX function apply(params, x) -> y becomes a layer with bp.layers.Autodiff(apply, init))"
                if callable(model) else "")
        raise errors.BpjaxTypeError(where, f"expected a bpjax Layer (e.g. bp.serial(...)), got "
                                           f"{type(model).__name__}{hint}")
    return model


def split_key(key: Optional[PRNGKey], n: int) -> list:
    """``n`` keys for ``n`` children, split once from ``key`` (``n`` Nones without a key).

    The one key split of every container (``serial``, ``parallel``) and of everything that walks a
    container's children the way it does (diagnostics, DFA).
    """
    return [None] * n if key is None else list(jax.random.split(key, n))


def is_contextual(layer: Layer) -> bool:
    """True when ``layer`` keeps state or draws random numbers (its ``init_state`` is set).

    Examples:
      >>> bp.is_contextual(L.Dense(4)), bp.is_contextual(L.Dropout(0.5))
      (False, True)
      >>> bp.is_contextual(bp.serial(L.Dense(4), L.BatchNorm()))       # a container is when a child is
      True
    """
    return layer.init_state is not None


def check_state(where: str, model: Layer, state, fix: str = "state=bp.init_state(model, key, input_shape)"):
    """``state`` as given, ``()`` for a simple model given none; a contextual model given none is a
    :class:`~bpjax.errors.BpjaxError` naming ``where``, the model and ``fix``."""
    if state is not None:
        return state
    if is_contextual(model):
        raise errors.BpjaxError(where, f"{model.name} keeps state or draws random numbers: pass {fix}")
    return ()


def init_state(layer: Layer, key: PRNGKey, input_shape: Shape) -> State:
    """The initial non-trained state of ``layer`` (``()`` for a simple layer).

    Examples:
      >>> model = bp.serial(L.Dense(4), L.BatchNorm(), L.Dropout(0.5))
      >>> state = bp.init_state(model, jax.random.key(0), (3,))
      >>> jax.tree.map(jnp.shape, state)
      ((), {'mean': (4,), 'var': (4,)}, ())
    """
    if layer.init_state is None:
        return ()
    return contract.init_output(layer.name, layer.init_state(key, input_shape))[1]


def init_of(layer: Layer, key: PRNGKey, input_shape: Shape, *, state: bool = False) -> Tuple[Shape, Any]:
    """``layer.init(key, input_shape) -> (output_shape, params)``, its contract checked (:mod:`bpjax.contract`).

    With ``state=True``: ``(output_shape, state)`` from ``layer.init_state`` (``()`` for a simple layer).
    """
    if state and layer.init_state is None:
        return contract.init_output(layer.name, layer.init(key, input_shape))[0], ()
    fn: Any = layer.init_state if state else layer.init
    return contract.init_output(layer.name, fn(key, input_shape))


def forward_of(layer: Layer, params: Params, x: Array, *, state: State = (), key: Optional[PRNGKey] = None,
               train: bool = True) -> Tuple[Array, Residuals, State]:
    """Any layer's forward with one signature, ``-> (y, residuals, new_state)``, its contract checked.

    Simple layers ignore ``state``, ``key`` and ``train`` and return ``state`` unchanged. Every
    container runs its children through it; the key is the caller's to have checked (:func:`apply`).
    """
    if is_contextual(layer):
        return contract.forward_output(layer.name, layer.forward(params, x, state=state, key=key, train=train), True)
    y, residuals = contract.forward_output(layer.name, layer.forward(params, x), False)
    return y, residuals, state


def backward_of(layer: Layer, params: Params, residuals: Residuals, dy, like_x=None) -> Tuple[Params, Any]:
    """``layer.backward(params, residuals, dy) -> (dparams, dx)``, the pullback of the forward at ``dy``.

    A leaf layer's output is checked (:func:`bpjax.contract.backward_output`): ``dparams`` mirrors ``params``
    (structure, shapes, dtypes) and ``dx`` mirrors ``like_x`` (the input, or shape/dtype structs of it) when
    given. A container's (a layer with ``children``) is not: its ``dparams`` and ``dx`` are its children's,
    each checked where that child's backward ran.
    """
    out = layer.backward(params, residuals, dy)
    if layer.children:
        return out
    return contract.backward_output(layer.name, out, params, like_x)


def apply(layer: Layer, params: Params, x: Array, *, state: State = (), key: Optional[PRNGKey] = None,
          train: bool = True) -> Tuple[Array, Residuals, State]:
    """Run any layer's forward with a uniform signature: ``-> (y, residuals, new_state)``.

    Simple layers ignore ``state``, ``key`` and ``train`` and return ``state`` unchanged. The
    layer's output is checked against the contract (:mod:`bpjax.contract`); a contextual layer's
    ``key`` must be a PRNG key or ``None`` (:func:`bpjax.errors.check_key`). The public form of
    :func:`forward_of`.

    Examples:
      >>> layer = L.Dense(2)
      >>> _, params = layer.init(jax.random.key(0), (3,))
      >>> y, residuals, state = bp.apply(layer, params, jnp.ones((4, 3)))
      >>> y.shape, residuals.shape, state
      ((4, 2), (4, 3), ())
    """
    if is_contextual(layer):
        errors.check_key(layer.name, key)
    return forward_of(layer, params, x, state=state, key=key, train=train)


def tag_mode(train: bool, residuals: Residuals) -> dict:
    """Residuals that remember the mode they were made in: ``{"train": residuals}`` or ``{"eval": residuals}``.

    The one convention for a backward that differs between modes (BatchNorm's statistics, Dropout's
    mask, a rematerialised block's recompute): the backward keeps its signature and reads the mode
    from the residuals with :func:`read_mode`. The mode is a dict key, so it stays static under
    ``jit``, ``vmap`` and ``scan``.
    """
    return {("train" if train else "eval"): residuals}


def read_mode(saved: dict) -> Tuple[bool, Residuals]:
    """``(train, residuals)`` from residuals made by :func:`tag_mode`."""
    (mode, residuals), = saved.items()
    return mode == "train", residuals
