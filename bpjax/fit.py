"""Whole training runs in one compiled program: ``fit`` (one model), ``fit_many`` (N models under ``vmap``).

A run is a ``lax.scan`` over steps. The data lives on the device; step ``s`` takes batch
``b = s mod n_b`` (``n_b = N // batch_size``, a ragged tail is dropped) of epoch ``e = s // n_b``:
rows ``b*B .. b*B+B-1`` in order, or of ``permutation(fold_in(shuffle_key, e), N)`` when shuffled.
A contextual model gets the key ``fold_in(step_key, s)`` at step ``s``. Both are functions of the
step alone, so a run split into chunks (for the progress bar, checkpoints, the NaN guard) or
stopped and resumed from a checkpoint computes exactly the same steps.

Evaluation runs inside the program (``lax.cond``) after every ``eval_every`` steps and after the
last one; the history comes back as arrays.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bpjax import _errors
from bpjax.core import Layer, apply, is_contextual
from bpjax.grad import _check_model
from bpjax.losses import accuracy, as_loss
from bpjax.train import BACKWARDS, _check_optimizer, grad_fn

__all__ = ["FitResult", "fit", "fit_many", "init_many", "data_parallel_mesh", "shard_batch", "replicate"]

Metric = Callable[[jax.Array, jax.Array], jax.Array]


class FitResult(NamedTuple):
    """What :func:`fit` returns (for :func:`fit_many`, every leaf has a leading model axis ``N``).

    Attributes:
      params: the trained parameters.
      opt_state: the optimiser state after the last step.
      state: the model's non-trained state (``()`` for a simple model).
      history: a dict of numpy arrays: ``step`` (1..steps) and ``loss`` (the training loss of each
        step), ``eval_step`` (the number of steps done at each evaluation) and ``eval_<metric>`` for
        each metric (``eval_loss``, ``eval_accuracy``, ...). With ``fit_many`` every array except
        ``step``/``eval_step`` is ``(N, ...)``.
    """

    params: Any
    opt_state: Any
    state: Any
    history: Dict[str, np.ndarray]


# ----------------------------------------------------------------------------------------------
# validation (eager, on concrete values, before anything is compiled)


def _positive_int(where, name, value, upper=None):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1 or \
            (upper is not None and value > upper):
        rng = f"in [1, {upper}]" if upper is not None else "a positive int"
        raise _errors.BpjaxError(where, f"{name} must be {rng}, got {value!r}")
    return int(value)


def _check_data(where, data, what):
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise _errors.BpjaxTypeError(where, f"{what} must be a pair (x, y) of arrays, got {type(data).__name__}")
    x, y = data
    x, y = jnp.asarray(x), jnp.asarray(y)
    _errors.check_floating(where, x, f"{what} x")
    if x.ndim < 1 or y.ndim < 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise _errors.BpjaxError(where, f"{what}: x and y must share a non-empty leading (example) axis, got "
                                        f"x {tuple(x.shape)} and y {tuple(y.shape)}")
    if not bool(jnp.all(jnp.isfinite(x))):
        bad = int(np.argwhere(~np.isfinite(np.asarray(x)))[0][0])
        raise _errors.BpjaxError(where, f"{what} x contains NaN or Inf (first at example {bad})")
    if jnp.issubdtype(y.dtype, jnp.floating) and not bool(jnp.all(jnp.isfinite(y))):
        raise _errors.BpjaxError(where, f"{what} y contains NaN or Inf")
    return x, y


def _check_labels(where, pred_shape, y, what):
    """Integer class labels must lie in [0, C) where C is the model's output width."""
    if jnp.issubdtype(y.dtype, jnp.integer) and len(pred_shape) == 2:
        C = pred_shape[-1]
        lo, hi = int(jnp.min(y)), int(jnp.max(y))
        if lo < 0 or hi >= C:
            raise _errors.BpjaxError(where, f"{what} labels must lie in [0, {C}) for a model with {C} outputs, "
                                            f"got min {lo} and max {hi}")


def _resolve_metrics(metrics, y):
    if metrics is None:
        metrics = ("loss", "accuracy") if jnp.issubdtype(y.dtype, jnp.integer) else ("loss",)
    if isinstance(metrics, dict):
        return dict(metrics)
    known = {"accuracy": accuracy}
    out = {}
    for m in metrics:
        if m == "loss":
            out["loss"] = None  # filled in with the training loss
        elif m in known:
            out[m] = known[m]
        else:
            raise _errors.BpjaxError("fit", f"unknown metric {m!r}: expected 'loss', 'accuracy' or a dict "
                                            f"name -> fn(pred, y)")
    return out


# ----------------------------------------------------------------------------------------------
# the compiled chunk: ``length`` steps of ``lax.scan``


class _Fixed(NamedTuple):
    """``hp -> optimizer`` for one fixed optax transformation; equal (and hashed) by that transformation."""

    optimizer: optax.GradientTransformation

    def __call__(self, hp):
        return self.optimizer


class _Plan(NamedTuple):
    """Everything static about a run; it is the key of the compiled-chunk cache, so every field is hashable
    (functions compare by identity: an optax transformation, a layer and a loss are tuples of functions)."""

    model: Layer
    loss: Any
    make_optimizer: Callable
    backward: str
    batch_size: int
    n_batches: int
    n_examples: int
    shuffle: bool
    steps: int
    eval_every: Optional[int]
    metrics: Tuple[Tuple[str, Optional[Metric]], ...]
    nan_guard: bool
    sharding: Optional[NamedSharding]
    unroll: int


def _tree_all_finite(tree):
    leaves = jax.tree.leaves(tree)
    return jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]) if leaves else jnp.ones((0,), bool)


def _make_chunk(plan: _Plan, length: int):
    """``chunk(carry, hp, keys, data, eval_data, start) -> (carry, (losses, eval_values))``."""
    model, loss = plan.model, as_loss(plan.loss)
    vg = grad_fn(model, loss, plan.backward)
    contextual = is_contextual(model)
    B = plan.batch_size

    def evaluate(params, state, ex, ey):
        pred, _, _ = apply(model, params, ex, state=state, key=None, train=False)
        return tuple(loss.value(pred, ey) if fn is None else fn(pred, ey) for _, fn in plan.metrics)

    def chunk(carry, hp, keys, data, eval_data, start):
        optimizer = plan.make_optimizer(hp)
        shuffle_key, step_key = keys
        x, y = data

        def permutation(step):
            return jax.random.permutation(jax.random.fold_in(shuffle_key, step // plan.n_batches), plan.n_examples)

        def body(c, _):
            params, opt_state, state, step, perm, bad = c
            b = step % plan.n_batches
            if plan.shuffle:
                perm = lax.cond(b == 0, lambda: permutation(step), lambda: perm)
                idx = lax.dynamic_slice_in_dim(perm, b * B, B)
                xb, yb = jnp.take(x, idx, axis=0), jnp.take(y, idx, axis=0)
            else:
                xb, yb = lax.dynamic_slice_in_dim(x, b * B, B), lax.dynamic_slice_in_dim(y, b * B, B)
            if plan.sharding is not None:
                xb = lax.with_sharding_constraint(xb, plan.sharding)
                yb = lax.with_sharding_constraint(yb, plan.sharding)
            if contextual:
                k = None if step_key is None else jax.random.fold_in(step_key, step)
                (value, new_state), grads = vg(params, xb, yb, state=state, key=k, train=True)
            else:
                (value, grads), new_state = vg(params, xb, yb), state
            updates, new_opt = optimizer.update(grads, opt_state, params)
            new_params = optax.apply_updates(params, updates)
            if plan.nan_guard:
                # freeze everything at the first non-finite loss or gradient; remember where it happened
                finite = _tree_all_finite(grads)
                ok = jnp.isfinite(value) & jnp.all(finite) & (bad[0] < 0)
                keep = lambda new, old: jax.tree.map(lambda a, b_: jnp.where(ok, a, b_), new, old)  # noqa: E731
                new_params, new_opt, new_state = keep(new_params, params), keep(new_opt, opt_state), \
                    keep(new_state, state)
                first = (bad[0] < 0) & ~ok
                bad = (jnp.where(first, step, bad[0]), jnp.where(first, finite, bad[1]))
            done = step + 1
            if plan.eval_every is not None:
                is_eval = (done % plan.eval_every == 0) | (done == plan.steps)
                nan = tuple(jnp.full((), jnp.nan, jnp.float32) for _ in plan.metrics)
                ev = lax.cond(is_eval,
                              lambda: tuple(v.astype(jnp.float32)
                                            for v in evaluate(new_params, new_state, *eval_data)),
                              lambda: nan)
            else:
                ev = ()
            return (new_params, new_opt, new_state, done, perm, bad), (value.astype(jnp.float32), ev)

        params, opt_state, state, bad = carry
        perm = permutation(start) if plan.shuffle else jnp.zeros((0,), jnp.int32)
        c0 = (params, opt_state, state, jnp.asarray(start, jnp.int32), perm, bad)
        c, out = lax.scan(body, c0, None, length=length, unroll=plan.unroll)
        params, opt_state, state, _, _, bad = c
        return (params, opt_state, state, bad), out

    return chunk


# ----------------------------------------------------------------------------------------------
# data parallelism


def data_parallel_mesh(devices: Optional[Sequence[jax.Device]] = None, axis: str = "data") -> Mesh:
    """A 1-D :class:`jax.sharding.Mesh` over ``devices`` (default: all of ``jax.devices()``)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (axis,))


def shard_batch(x, mesh: Mesh, axis: Optional[str] = None):
    """``x`` (or a pytree of arrays) placed with its leading (batch) axis split over ``mesh``'s axis."""
    axis = axis or mesh.axis_names[0]
    return jax.device_put(x, NamedSharding(mesh, PartitionSpec(axis)))


def replicate(tree, mesh: Mesh):
    """Every leaf of ``tree`` copied in full to each device of ``mesh``."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


# ----------------------------------------------------------------------------------------------
# the driver shared by fit and fit_many


def _chunk_bounds(start, steps, chunk_size, checkpoint_every):
    cuts = set(range(0, steps, chunk_size)) | {steps}
    if checkpoint_every:
        cuts |= set(range(0, steps, checkpoint_every))
    cuts = sorted(c for c in cuts if c >= start)
    if not cuts or cuts[0] != start:
        cuts = [start, *cuts]
    return list(zip(cuts[:-1], cuts[1:]))


def _default_chunk(steps, verbose):
    """One chunk when silent; about 20 (a divisor of ``steps`` when one is near, to compile once) with a bar."""
    if not verbose:
        return steps
    target = max(1, math.ceil(steps / 20))
    for d in range(target, min(steps, 2 * target) + 1):
        if steps % d == 0:
            return d
    return target


def _leaf_names(tree):
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]


def _checkpoint_module():
    try:
        from bpjax import checkpoint
    except ImportError as e:  # pragma: no cover - depends on the checkout
        raise _errors.BpjaxError("fit", "checkpoint_path needs bpjax.checkpoint, which is not available") from e
    return checkpoint


_CACHE: "OrderedDict[Any, Callable]" = OrderedDict()
_CACHE_SIZE = 32


def _compiled_chunk(plan: _Plan, length: int, batched: int):
    """The jitted chunk of ``length`` steps (vmapped when ``batched``), kept between calls.

    The cache key is ``("chunk", plan, length, batched != 0)``: the same model, loss, optimizer, backward,
    batching, metrics and options reuse the jitted function, and ``jax.jit`` then reuses its
    compiled program for the same argument shapes, dtypes and shardings. At most ``_CACHE_SIZE``
    entries are kept (least recently used dropped). A plan with an unhashable part is never cached.
    """
    def build():
        fn = _make_chunk(plan, length)
        return jax.jit(jax.vmap(fn, in_axes=(0, 0, 0, None, None, None)) if batched else fn)

    return _cached(("chunk", plan, length, bool(batched)), build)


def _cached(key, build):
    """``_CACHE[key]``, made by ``build()`` on a miss; an unhashable key builds anew every time."""
    try:
        fn = _CACHE.get(key)
    except TypeError:  # an unhashable part (e.g. a metric object): compile for this call only
        return build()
    if fn is not None:
        _CACHE.move_to_end(key)
        return fn
    fn = _CACHE[key] = build()
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return fn


def _run(plan: _Plan, carry, hp, keys, data, eval_data, *, batched: int, verbose, chunk_size,
         checkpoint_path, checkpoint_every, callback, desc):
    """Run ``plan.steps`` steps in chunks; returns (carry, history)."""
    steps = plan.steps
    names = [n for n, _ in plan.metrics]
    losses, evals = [], []
    start = 0
    if checkpoint_path is not None and os.path.exists(checkpoint_path):
        carry, start, loss0, evals0 = _resume(plan, carry, checkpoint_path, names, batched)
        losses.append(loss0)
        evals.append(evals0)

    def compiled(length):
        return _compiled_chunk(plan, length, batched)

    bar = None
    if verbose:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, initial=start, desc=desc, unit="step", leave=True)
    try:
        for lo, hi in _chunk_bounds(start, steps, chunk_size, checkpoint_every):
            carry, (loss_c, ev_c) = compiled(hi - lo)(carry, hp, keys, data, eval_data, lo)
            losses.append(np.asarray(loss_c))
            evals.append(tuple(np.asarray(e) for e in ev_c))
            if plan.nan_guard:
                _raise_if_bad(carry, lo, hi, batched)
            if bar is not None:
                post = {"loss": f"{float(np.mean(losses[-1][..., -1])):.4g}"}
                if evals[-1] and names and np.isfinite(evals[-1][-1][..., -1]).all():
                    post["eval_" + names[-1]] = f"{float(np.mean(evals[-1][-1][..., -1])):.4g}"
                bar.set_postfix(post, refresh=False)
                bar.update(hi - lo)
            save = checkpoint_path is not None and checkpoint_every and (hi % checkpoint_every == 0 or hi == steps)
            history = _history(plan, losses, evals, names, hi, batched) if save or callback else {}
            if save:
                _checkpoint_module().save(checkpoint_path, {
                    "params": carry[0], "opt_state": carry[1], "state": carry[2], "step": hi,
                    "history": {k: v for k, v in history.items() if k not in ("step", "eval_step")}},
                    metadata={"step": hi, "steps": steps, "batch_size": plan.batch_size})
            if callback is not None:
                callback(hi, FitResult(carry[0], carry[1], carry[2], history))
    finally:
        if bar is not None:
            bar.close()
    return carry, _history(plan, losses, evals, names, steps, batched)


def _resume(plan, carry, path, names, batched):
    """Restore ``(carry, start step, losses so far, evals so far)`` from the checkpoint at ``path``."""
    ckpt = _checkpoint_module()
    start = int(ckpt.read_metadata(path)["metadata"].get("step", -1))
    if not 0 < start <= plan.steps:
        raise _errors.BpjaxError("fit", f"checkpoint {path!r} is at step {start}, outside (0, steps={plan.steps}]")
    lead = (batched,) if batched else ()
    f32 = lambda *shape: jax.ShapeDtypeStruct((*lead, *shape), jnp.float32)  # noqa: E731
    history = {"loss": f32(start)}
    if plan.eval_every is not None:
        n_eval = sum(1 for s in range(1, start + 1) if s % plan.eval_every == 0 or s == plan.steps)
        history.update({"eval_" + n: f32(n_eval) for n in names})
    like = {"params": carry[0], "opt_state": carry[1], "state": carry[2], "step": 0, "history": history}
    saved = ckpt.restore(path, like=like)
    restored = tuple(jax.tree.map(jnp.asarray, saved[k]) for k in ("params", "opt_state", "state"))
    # evaluations so far sit at their steps; other steps hold NaN, as a compiled chunk returns them
    evals = []
    for n in names:
        full = np.full((*lead, start), np.nan, np.float32)
        if plan.eval_every is not None:
            idx = [s - 1 for s in range(1, start + 1) if s % plan.eval_every == 0 or s == plan.steps]
            full[..., idx] = saved["history"]["eval_" + n]
        evals.append(full)
    return (*restored, carry[3]), start, np.asarray(saved["history"]["loss"]), tuple(evals)


def _history(plan, losses, evals, names, done, batched):
    axis = -1
    loss = np.concatenate(losses, axis=axis) if losses else np.zeros((0,), np.float32)
    history = {"step": np.arange(1, done + 1), "loss": loss}
    if plan.eval_every is not None:
        eval_steps = np.asarray([s for s in range(1, done + 1) if s % plan.eval_every == 0 or s == plan.steps],
                                dtype=np.int64)
        history["eval_step"] = eval_steps
        for i, n in enumerate(names):
            full = np.concatenate([e[i] for e in evals], axis=axis)
            history["eval_" + n] = full[..., eval_steps - 1]
    return history


def _raise_if_bad(carry, lo, hi, batched):
    bad_step, finite = carry[3]
    bad_step, finite = np.asarray(bad_step), np.asarray(finite)
    if (bad_step < 0).all():
        return
    names = _leaf_names(carry[0] if not batched else jax.tree.map(lambda a: a[0], carry[0]))
    model = int(np.argmax(bad_step >= 0)) if batched else None
    step = int(bad_step[model] if batched else bad_step)
    fin = finite[model] if batched else finite
    leaf = names[int(np.argmin(fin))] if not fin.all() else None
    what = f"gradient of params{leaf}" if leaf is not None else "loss"
    who = f"model {model}: " if batched else ""
    err = _errors.BpjaxError("fit", f"{who}non-finite {what} at step {step} (0-based); the returned params "
                                    f"are those before that step (nan_guard=True)")
    err.params, err.step = carry[0], step
    raise err


# ----------------------------------------------------------------------------------------------
# public entry points


def _prepare(model, loss, params, train_data, *, steps, batch_size, key, shuffle, eval_data, eval_every,
             backward, state, metrics, nan_guard, unroll, make_optimizer, hp0, mesh, where):
    """Validate eagerly and build the static plan and the device-resident data."""
    _check_model(model)
    loss_key, loss = loss, as_loss(loss)  # the plan keeps the caller's loss: as_loss wraps a function anew
    if backward not in BACKWARDS:
        raise _errors.BpjaxError(where, f"backward must be one of {BACKWARDS}, got {backward!r}")
    x, y = _check_data(where, train_data, "train_data")
    N = int(x.shape[0])
    steps = _positive_int(where, "steps", steps)
    batch_size = _positive_int(where, "batch_size", batch_size, upper=N)
    unroll = _positive_int(where, "unroll", unroll)
    if shuffle and key is None:
        raise _errors.BpjaxError(where, "shuffle=True needs key=jax.random.key(...)")
    contextual = is_contextual(model)
    if contextual and state is None:
        raise _errors.BpjaxError(where, f"{model.name} keeps state or draws random numbers: pass "
                                        f"state=bp.init_state(model, key, input_shape)")
    state = () if state is None else state
    # trace one forward + loss on a batch now: shape errors surface here, not deep inside the scan
    pred = jax.eval_shape(lambda p, s, xb: apply(model, p, xb, state=s, key=None if key is None else
                                                 jax.random.key(0), train=True)[0],
                          params, state, x[:batch_size])
    jax.eval_shape(loss.value, pred, y[:batch_size])
    _check_labels(where, pred.shape, y, "train_data")
    metrics = _resolve_metrics(metrics, y)
    if eval_data is not None:
        ex, ey = _check_data(where, eval_data, "eval_data")
        _check_labels(where, pred.shape, ey, "eval_data")
        eval_every = steps if eval_every is None else _positive_int(where, "eval_every", eval_every)
        eval_arrays = (ex, ey)
    else:
        if eval_every is not None:
            raise _errors.BpjaxError(where, "eval_every is set but eval_data is None")
        eval_arrays = ()
    jax.eval_shape(lambda p, h: make_optimizer(h).init(p), params, hp0)
    sharding = None
    if mesh is not None:
        if not isinstance(mesh, Mesh):
            raise _errors.BpjaxTypeError(where, f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
        n_dev = mesh.shape[mesh.axis_names[0]]
        if batch_size % n_dev:
            raise _errors.BpjaxError(where, f"batch_size={batch_size} must be divisible by the {n_dev} devices "
                                            f"of the mesh axis {mesh.axis_names[0]!r}")
        sharding = NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))
        x, y = replicate((x, y), mesh)
        eval_arrays = replicate(eval_arrays, mesh)
    plan = _Plan(model, loss_key, make_optimizer, backward, batch_size, N // batch_size, N, bool(shuffle), steps,
                 eval_every if eval_data is not None else None, tuple(metrics.items()), bool(nan_guard), sharding,
                 unroll)
    return plan, (x, y), eval_arrays, state


def _split_key(key, needed):
    """``(shuffle_key, step_key)`` from the run's key (``(None, None)`` without one)."""
    if key is None:
        return (None, None)
    if not needed:
        return (None, None)
    k1, k2 = jax.random.split(key)
    return (k1, k2)


@jax.jit
def _split_many(keys):
    """``(keys_a, keys_b)``: ``jax.random.split(keys[i])`` for each ``i``, in one compiled call."""
    a, b = jax.vmap(jax.random.split, out_axes=1)(keys)
    return a, b


def _no_bad(params):
    return (jnp.asarray(-1, jnp.int32), jnp.ones((len(jax.tree.leaves(params)),), bool))


def fit(model: Layer, loss, optimizer: optax.GradientTransformation, params, train_data: Tuple[Any, Any], *,
        steps: int, batch_size: int, key: Optional[jax.Array] = None, shuffle: bool = False,
        eval_data: Optional[Tuple[Any, Any]] = None, eval_every: Optional[int] = None,
        backward: str = "manual", state=None, opt_state=None, metrics: Union[Sequence[str], Dict[str, Metric],
                                                                                  None] = None,
        verbose: bool = True, chunk_size: Optional[int] = None, unroll: int = 1,
        mesh: Optional[Mesh] = None, data_parallel: bool = False,
        checkpoint_path: Optional[str] = None, checkpoint_every: Optional[int] = None,
        nan_guard: bool = False, callback: Optional[Callable[[int, FitResult], None]] = None) -> FitResult:
    """Train ``model`` for ``steps`` optimiser steps in one compiled ``lax.scan`` (chunked for progress).

    Each step: ``xb, yb`` = the step's batch; ``value, grads`` = the ``backward`` gradient of
    ``loss(model(params, xb), yb)``; ``updates, opt_state = optimizer.update(grads, opt_state, params)``;
    ``params = optax.apply_updates(params, updates)``.

    The compiled program is kept between calls (keyed on the model, loss, optimizer object, backward,
    batching, metrics and options; ``jax.jit`` then on the argument shapes): a second call with the
    same objects and shapes runs without compiling. Like ``jax.jit``, it assumes the model's
    functions do not read Python state that changes between calls; pass the same optimizer object
    (``optax.adam(1e-2)`` built once) to reuse the program.

    Args:
      model, loss: what to train (a contextual model needs ``state``; it gets a fresh key each step).
      optimizer: an optax ``GradientTransformation``.
      params: initial parameters (``model.init(key, x.shape[1:])[1]``).
      train_data: ``(x, y)``, ``x: (N, ...)``, ``y: (N, ...)`` (integer labels ``(N,)`` or targets).
      steps: number of optimiser steps.
      batch_size: ``B`` in ``[1, N]``; an epoch is ``N // B`` batches.
      key: PRNG key for shuffling and for contextual layers (dropout). Needed with ``shuffle=True``.
      shuffle: batches from a fresh permutation each epoch (else in order, ``start = (s*B) % (N//B*B)``).
      eval_data: ``(x_eval, y_eval)`` evaluated (``train=False``) every ``eval_every`` steps and at the end.
      eval_every: default ``steps`` (only at the end).
      backward: ``"manual"`` (hand-written) or ``"autodiff"`` (``jax.grad`` of the same forward).
      state: the model's state (``bp.init_state(...)``) for contextual models.
      opt_state: resume from this optimiser state (default ``optimizer.init(params)``).
      metrics: names (``"loss"``, ``"accuracy"``) or a dict ``name -> fn(pred, y)``; default loss and,
        for integer labels, accuracy.
      verbose: show a tqdm progress bar (updated between chunks, never inside the compiled program).
      chunk_size: steps per compiled chunk; default the whole run when silent, about 1/20 of it otherwise.
      unroll: ``lax.scan`` unroll factor.
      mesh, data_parallel: data parallelism. ``mesh`` is a :class:`jax.sharding.Mesh` whose first axis
        splits the batch; ``data_parallel=True`` builds one over all devices
        (:func:`data_parallel_mesh`). Params and data are replicated, each batch is sharded, and the
        compiler inserts the gradient all-reduce. ``batch_size`` must divide evenly.
      checkpoint_path, checkpoint_every: save params, opt_state, state, the step and the history every
        ``checkpoint_every`` steps (atomic, :mod:`bpjax.checkpoint`); when the file exists, the run
        resumes from it and ends exactly as an uninterrupted run would.
      nan_guard: stop at the first non-finite loss or gradient and raise a ``BpjaxError`` naming the
        step and the first non-finite gradient leaf (``err.params`` holds the last finite params).
      callback: ``callback(steps_done, FitResult)`` between chunks (logging, early stopping by raising).

    Returns:
      :class:`FitResult` ``(params, opt_state, state, history)``.
    """
    where = "fit"
    _check_optimizer(optimizer)
    if data_parallel and mesh is None:
        mesh = data_parallel_mesh()
    plan, data, eval_arrays, state = _prepare(
        model, loss, params, train_data, steps=steps, batch_size=batch_size, key=key, shuffle=shuffle,
        eval_data=eval_data, eval_every=eval_every, backward=backward, state=state, metrics=metrics,
        nan_guard=nan_guard, unroll=unroll, make_optimizer=_Fixed(optimizer), hp0=None, mesh=mesh, where=where)
    chunk_size, checkpoint_every = _chunking(where, plan.steps, chunk_size, checkpoint_path, checkpoint_every,
                                             verbose)
    if opt_state is None:
        opt_state = optimizer.init(params)
    else:
        _errors.check_tree_like(where, opt_state, jax.eval_shape(optimizer.init, params), "opt_state")
    if mesh is not None:
        params, opt_state, state = replicate((params, opt_state, state), mesh)
    keys = _split_key(key, plan.shuffle or is_contextual(model))
    carry = (params, opt_state, state, _no_bad(params))
    carry, history = _run(plan, carry, None, keys, data, eval_arrays, batched=0, verbose=verbose,
                          chunk_size=chunk_size, checkpoint_path=checkpoint_path, checkpoint_every=checkpoint_every,
                          callback=callback, desc=f"fit {model.name}"[:40])
    return FitResult(carry[0], carry[1], carry[2], history)


def _chunking(where, steps, chunk_size, checkpoint_path, checkpoint_every, verbose):
    if chunk_size is None:
        chunk_size = _default_chunk(steps, verbose)
    chunk_size = _positive_int(where, "chunk_size", chunk_size)
    if checkpoint_every is not None:
        checkpoint_every = _positive_int(where, "checkpoint_every", checkpoint_every)
        if checkpoint_path is None:
            raise _errors.BpjaxError(where, "checkpoint_every is set but checkpoint_path is None")
    elif checkpoint_path is not None:
        checkpoint_every = chunk_size
    return chunk_size, checkpoint_every


def init_many(model: Layer, keys: jax.Array, input_shape) -> Any:
    """Stacked initial params of ``len(keys)`` models: leaf ``i`` along axis 0 is ``model.init(keys[i], ...)``."""
    _check_model(model)
    # One eager init per key, then a stack. Measured alternatives: an eager vmap compiles every batched
    # primitive on its own, and a jitted vmap spends seconds compiling the batched threefry sampler
    # (3.6 s CPU for the MNIST-1D MLP); eager inits reuse the per-primitive programs that any
    # model.init call of the same shapes has compiled already.
    input_shape = tuple(input_shape)
    inits = [model.init(k, input_shape)[1] for k in keys]
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *inits)


def fit_many(model: Layer, loss, optimizer, params, train_data: Tuple[Any, Any], *, steps: int, batch_size: int,
             keys: Optional[jax.Array] = None, hparams=None, shuffle: bool = False,
             eval_data: Optional[Tuple[Any, Any]] = None, eval_every: Optional[int] = None,
             backward: str = "manual", state=None, metrics=None, verbose: bool = True,
             chunk_size: Optional[int] = None, unroll: int = 1, nan_guard: bool = False,
             checkpoint_path: Optional[str] = None, checkpoint_every: Optional[int] = None,
             callback=None) -> FitResult:
    """Train ``N`` models in one call: :func:`fit` under ``jax.vmap`` over seeds and/or hyperparameters.

    Model ``i`` is trained exactly as ``fit(model, loss, optimizer(hparams[i]), params[i], ...,
    key=keys[i])`` would train it (same batches, same keys), all in one compiled program.

    Args:
      optimizer: an optax ``GradientTransformation`` shared by all models, or a factory
        ``hp -> GradientTransformation`` called with each model's slice of ``hparams`` inside the
        vmapped program, e.g. ``lambda lr: optax.adam(lr)`` with ``hparams=jnp.array([1e-3, 1e-2])``
        or ``lambda hp: optax.adamw(hp["lr"], weight_decay=hp["wd"])``.
      params: stacked params with a leading axis ``N`` (see :func:`init_many`), or ``None`` to
        initialise model ``i`` with ``jax.random.split(keys[i])[0]`` (it then trains with
        ``jax.random.split(keys[i])[1]``).
      keys: ``(N,)`` PRNG keys (``jax.random.split(key, N)``): one per model, for shuffling/dropout.
      hparams: a pytree whose leaves have a leading axis ``N``; passed to the optimizer factory.
      state: one model state, shared as the starting state of every model (contextual models).
      others: as in :func:`fit`.

    Returns:
      :class:`FitResult` whose params/opt_state/state leaves and history arrays have a leading axis ``N``.
    """
    where = "fit_many"
    factory = _Fixed(optimizer) if isinstance(optimizer, optax.GradientTransformation) else optimizer
    if not callable(factory):
        raise _errors.BpjaxTypeError(where, f"optimizer must be an optax GradientTransformation or a function "
                                            f"hp -> GradientTransformation, got {type(optimizer).__name__}")
    sizes: Dict[str, Any] = {}
    if keys is not None:
        sizes["keys"] = len(keys)
    if hparams is not None:
        sizes.update({f"hparams{jax.tree_util.keystr(p)}": np.shape(a)[0] if np.ndim(a) else None
                      for p, a in jax.tree_util.tree_leaves_with_path(hparams)})
    if params is not None:
        sizes.update({f"params{jax.tree_util.keystr(p)}": np.shape(a)[0] if np.ndim(a) else None
                      for p, a in jax.tree_util.tree_leaves_with_path(params)})
    if not sizes:
        raise _errors.BpjaxError(where, "give keys=(N keys), hparams=(leading axis N) or stacked params")
    if len(set(sizes.values())) != 1 or None in sizes.values():
        raise _errors.BpjaxError(where, f"keys, hparams and params must share one leading model axis N, got {sizes}")
    n = next(iter(sizes.values()))
    if params is None:
        if keys is None:
            raise _errors.BpjaxError(where, "params=None needs keys to initialise the models")
        x0 = jnp.asarray(train_data[0])
        init_keys, keys = _split_many(keys)
        params = init_many(model, init_keys, x0.shape[1:])
    first = lambda tree: jax.tree.map(lambda a: a[0], tree)  # noqa: E731
    plan, data, eval_arrays, state = _prepare(
        model, loss, first(params), train_data, steps=steps, batch_size=batch_size,
        key=None if keys is None else keys[0], shuffle=shuffle, eval_data=eval_data, eval_every=eval_every,
        backward=backward, state=state, metrics=metrics, nan_guard=nan_guard, unroll=unroll,
        make_optimizer=factory, hp0=None if hparams is None else first(hparams), mesh=None, where=where)
    chunk_size, checkpoint_every = _chunking(where, plan.steps, chunk_size, checkpoint_path, checkpoint_every,
                                             verbose)
    opt_state = _cached(("opt_init", factory), lambda: jax.jit(jax.vmap(lambda p, h: factory(h).init(p))))(
        params, hparams)
    states = jax.tree.map(lambda a: jnp.broadcast_to(a, (n, *jnp.shape(a))), state)
    needed = plan.shuffle or is_contextual(model)
    if keys is None or not needed:
        run_keys = (None, None)
    else:
        run_keys = _split_many(keys)
    bad = jax.tree.map(lambda a: jnp.broadcast_to(a, (n, *a.shape)), _no_bad(first(params)))
    carry = (params, opt_state, states, bad)
    carry, history = _run(plan, carry, hparams, run_keys, data, eval_arrays, batched=n, verbose=verbose,
                          chunk_size=chunk_size, checkpoint_path=checkpoint_path, checkpoint_every=checkpoint_every,
                          callback=callback, desc=f"fit_many x{n}")
    return FitResult(carry[0], carry[1], carry[2], history)
