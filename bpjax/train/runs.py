"""Whole training runs in one compiled program: ``fit`` (one model), ``fit_many`` (N models under ``vmap``).

See :mod:`bpjax.train.loop` for what one compiled chunk computes (batches, keys, evaluation, the NaN
guard) and :mod:`bpjax.train.driver` for what happens between chunks (progress, checkpoints,
callbacks). This module validates the inputs, builds the run's static :class:`~bpjax.train.loop.Plan`
and hands both to the driver.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from bpjax import errors
from bpjax.core import Layer, check_model, check_state, init_of, is_contextual
from bpjax.grad import check_backward
from bpjax.losses import as_loss
from bpjax.train import fingerprint, resume
from bpjax.train.cache import cached
from bpjax.train.driver import chunking, drive
from bpjax.train.history import FitResult
from bpjax.train.loop import Fixed, Metric, Plan
from bpjax.train.sharding import (
    check_mesh,
    data_parallel_mesh,
    data_sharding,
    replicate,
    shard_params,
    shard_rows,
    split_or_replicate,
)
from bpjax.train.stream import Stream, is_stream
from bpjax.train.validate import (
    check_data,
    check_factory,
    check_keys,
    check_opt_state,
    resolve_metrics,
    trace_forward,
)

__all__ = ["fit", "fit_many", "init_many"]


def prepare(model, loss, params, train_data, *, steps, batch_size, key, shuffle, eval_data, eval_every,
             backward, state, metrics, nan_guard, unroll, make_optimizer, hp0, mesh, where, checks=True):
    """Validate eagerly and build the static plan and the data: device-resident ``(x, y)`` (laid out over the
    mesh's data axis on a mesh) or a :class:`~bpjax.train.stream.Stream` of batches. ``checks=False`` skips the
    value checks of the data (finite, targets in range) and the traced loss (fit's switch)."""
    def arrays(pair, what):
        return check_data(where, pair, what) if checks else tuple(jnp.asarray(a) for a in pair)

    loss = as_loss(loss)  # one Loss per function (as_loss): the plan, and so the compiled program, are reused
    check_backward(where, backward)
    check_mesh(where, mesh)
    streamed = isinstance(train_data, Stream) or is_stream(train_data)
    if streamed:  # the checks below see the first batch; the chunks check that every batch is finite
        batch_size = errors.positive_int(where, "batch_size", batch_size)
        if shuffle:
            raise errors.BpjaxError(where, "shuffle=True needs train_data=(x, y) on the devices; a stream of "
                                           "batches comes in the order its iterator yields them")
        stream = train_data if isinstance(train_data, Stream) else Stream(where, train_data, batch_size, mesh)
        (x, y), N = arrays(stream.first, "train_data batch 0"), batch_size
    else:  # on a mesh, laid out over the data axis first: no device ever holds the whole set
        train_data, N = shard_rows(train_data, mesh) if mesh is not None else (train_data, None)
        x, y = arrays(train_data, "train_data")
        N = int(x.shape[0]) if N is None else N
    steps = errors.positive_int(where, "steps", steps)
    batch_size = errors.positive_int(where, "batch_size", batch_size, upper=N)
    sharding = data_sharding(where, mesh, batch_size)
    unroll = errors.positive_int(where, "unroll", unroll)
    if shuffle and key is None:
        raise errors.BpjaxError(where, "shuffle=True needs key=jax.random.key(...)")
    state = check_state(where, model, state)
    # trace one forward + loss on a batch now: shape errors surface here, not deep inside the scan, named after
    # the dataset at fault ("fit train_data: serial[0] Dense(4): ...")
    with errors.context(f"{where} train_data:"):
        pred = trace_forward(model, params, state, x[:batch_size], key=None if key is None else jax.random.key(0))
        if checks:
            jax.eval_shape(loss.value, pred, y[:batch_size])
            loss.check_targets(y, pred.shape)  # the loss's own rule (labels in range, ...) on the whole dataset
    metrics = resolve_metrics(where, metrics, y, pred.shape)
    if eval_data is not None:
        ex, ey = arrays(eval_data, "eval_data")
        with errors.context(f"{where} eval_data:"):
            if ex.shape[1:] != x.shape[1:] or ex.dtype != x.dtype:  # else the train trace above covers it
                trace_forward(model, params, state, ex, train=False)  # evaluated whole
            if checks:
                loss.check_targets(ey, pred.shape)
        eval_every = steps if eval_every is None else errors.positive_int(where, "eval_every", eval_every)
        eval_arrays = (ex, ey)
    else:
        if eval_every is not None:
            raise errors.BpjaxError(where, "eval_every is set but eval_data is None")
        eval_arrays = ()
    jax.eval_shape(lambda p, h: make_optimizer(h).init(p), params, hp0)
    if mesh is not None:
        eval_arrays = split_or_replicate(eval_arrays, mesh)
    plan = Plan(model, loss, make_optimizer, backward, batch_size, N // batch_size, N, bool(shuffle), steps,
                 eval_every if eval_data is not None else None, tuple(metrics.items()), bool(nan_guard), sharding,
                 unroll, streamed)
    return plan, stream if streamed else (x, y), eval_arrays, state


def open_run(where, plan, carry, data, make_optimizer, hparams, batched, checkpoint_path, keep, accept):
    """The open run folder of a run with a checkpoint path (its fingerprint computed), or ``None``.

    Params split over several processes' devices are saved by the sharded backend.
    """
    checkpoint_path, keep = resume.check_folder_args(where, checkpoint_path, keep)
    accept = fingerprint.check_accept(where, accept)
    if checkpoint_path is None:
        return None
    from bpjax import checkpoint

    params = carry[0]
    x, y = data.first if plan.streamed else data
    record = fingerprint.fingerprint(
        model=plan.model, loss=plan.loss, params=params, batch_size=plan.batch_size, shuffle=plan.shuffle,
        optimizer=fingerprint.optimizer_probe(make_optimizer, params, hparams, batched),
        data=fingerprint.data_record(x, y, plan.streamed), batched=batched)
    sharded = any(checkpoint.spans_processes(a) for a in jax.tree.leaves(carry))
    return resume.open_folder(where, checkpoint_path, keep, record, accept, sharded)


def shuffle_and_step_keys(key, needed):
    """``(shuffle_key, step_key)`` from the run's key (``(None, None)`` without one, or when not ``needed``)."""
    if key is None:
        return (None, None)
    if not needed:
        return (None, None)
    k1, k2 = jax.random.split(key)
    return (k1, k2)


@jax.jit
def split_many(keys):
    """``(keys_a, keys_b)``: ``jax.random.split(keys[i])`` for each ``i``, in one compiled call."""
    a, b = jax.vmap(jax.random.split, out_axes=1)(keys)
    return a, b


def fit(model: Layer, loss, optimizer: optax.GradientTransformation, params, train_data: Tuple[Any, Any], *,
        steps: int, batch_size: int, key: Optional[jax.Array] = None, shuffle: bool = False,
        eval_data: Optional[Tuple[Any, Any]] = None, eval_every: Optional[int] = None,
        backward: str = "manual", state=None, opt_state=None, metrics: Union[Sequence[str], Dict[str, Metric],
                                                                                  None] = None,
        verbose: bool = True, chunk_size: Optional[int] = None, unroll: int = 1,
        mesh: Optional[Mesh] = None, data_parallel: bool = False,
        checkpoint_path: Optional[str] = None, checkpoint_every: Optional[int] = None,
        keep_checkpoints: int = resume.KEEP, accept_changes: Sequence[str] = (), nan_guard: bool = True,
        callback: Optional[Callable[[int, FitResult], None]] = None, checks: bool = True) -> FitResult:
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
      train_data: ``(x, y)``, ``x: (N, ...)``, ``y: (N, ...)`` (integer labels ``(N,)`` or targets), kept on
        the devices; or an iterable (not a tuple/list) of batches ``(xb: (B, ...), yb: (B, ...))``, one
        per step, streamed to the devices a chunk ahead of the compiled program
        (:mod:`bpjax.train.stream`; its position is the caller's: resuming at step ``s``, it must
        yield the batch of step ``s`` first; :func:`bpjax.train.resume_step`).
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
      chunk_size: steps per compiled chunk; default the whole run when silent, about 1/20 of it otherwise
        (streamed data: about 1/20 of it, a block of at most 16 MB of batches).
      unroll: ``lax.scan`` unroll factor.
      mesh, data_parallel: data parallelism. ``mesh`` is a :class:`jax.sharding.Mesh` whose first axis
        splits the data; ``data_parallel=True`` builds one over all devices of all processes
        (:func:`data_parallel_mesh`). Each of its ``D`` devices holds ``ceil(N / D)`` rows of the training
        set (:func:`bpjax.train.sharding.shard_rows`; ``train_data`` may be host arrays or global
        arrays from :func:`bpjax.train.process_local`) and ``B / D`` rows of each batch, the same
        batches as on one device; the evaluation set is split too when its rows divide evenly.
        Params are replicated and the compiler inserts the gradient all-reduce; on a 2-D mesh
        ``(data, model)`` the weight matrices are also split by columns over ``model``
        (:func:`bpjax.train.sharding.param_spec`). ``batch_size`` must divide evenly. With several
        processes (:func:`bpjax.train.initialize`), process 0 alone shows progress, writes
        checkpoints and runs ``callback``.
      checkpoint_path, checkpoint_every: the run folder (created when missing; its parent must exist),
        checked writable and locked before the first step (a second run on the same folder is refused,
        naming the holder). Every ``checkpoint_every`` steps (default: after every chunk) a new entry
        ``step_<s>.npz`` holds params, opt_state, state, the step, the history and the run's
        fingerprint (:mod:`bpjax.train.fingerprint`), written atomically (:mod:`bpjax.checkpoint`);
        a non-finite state is never written. When the folder holds a checkpoint, the run resumes
        from the newest readable one and ends exactly as an uninterrupted run would; a checkpoint
        of another run (model, loss, optimizer, batch size, shuffle or data differ) is refused with
        the list of differences.
      keep_checkpoints: how many entries the run folder keeps (the newest ones).
      accept_changes: fingerprint fields that may differ on resume, on purpose: any of ``"model"``,
        ``"loss"``, ``"optimizer"`` (e.g. a new learning rate; an optimizer whose state has another
        structure starts from its ``init``), ``"batch_size"``, ``"shuffle"``, ``"data"``.
      nan_guard: stop at the first step whose loss, gradients, new params, optimizer state or state
        are not finite, and raise a ``BpjaxError`` naming the step, the cause and the leaf
        (``err.params``, ``err.opt_state``, ``err.state`` hold the last finite carry). It costs
        nothing per step (:mod:`bpjax.train.guard`). With ``nan_guard=False`` the run goes on, and
        checkpoints stop at the last finite state (a warning says so).
      callback: ``callback(steps_done, FitResult)`` between chunks (logging, early stopping by raising),
        in process 0 only unless wrapped in :func:`bpjax.train.every_process`; when it raises, every
        process stops.
      checks: check the data eagerly before compiling (default): pairs of arrays, finite values, targets
        in range for the loss, the loss traced on a batch. ``checks=False`` skips these (the compiled
        program is the same); it is there to measure what they cost (``benchmarks/bench_checks.py``): a bad
        input then surfaces inside the program, or as a NaN loss.

    Returns:
      :class:`FitResult` ``(params, opt_state, state, history)``.

    Examples:
      >>> model = bp.serial(L.Dense(4), L.Relu(), L.Dense(2))
      >>> _, params = model.init(jax.random.key(0), (3,))
      >>> x, y = jnp.linspace(-1, 1, 24).reshape(8, 3), jnp.arange(8) % 2
      >>> result = bp.train.fit(model, bp.losses.softmax_cross_entropy, optax.sgd(0.1), params, (x, y),
      ...                       steps=3, batch_size=4, verbose=False)
      >>> sorted(result.history), result.history["loss"].shape, result.params[0]["W"].shape
      (['loss', 'step'], (3,), (3, 4))
    """
    where = "fit"
    check_model(model, where)
    optimizer = errors.as_transformation(where, optimizer)
    errors.check_key(where, key)
    if data_parallel and mesh is None:
        mesh = data_parallel_mesh()
    plan, data, eval_arrays, state = prepare(
        model, loss, params, train_data, steps=steps, batch_size=batch_size, key=key, shuffle=shuffle,
        eval_data=eval_data, eval_every=eval_every, backward=backward, state=state, metrics=metrics,
        nan_guard=nan_guard, unroll=unroll, make_optimizer=Fixed(optimizer), hp0=None, mesh=mesh, where=where,
        checks=checks)
    chunk_size, checkpoint_every = chunking(where, plan.steps, chunk_size, checkpoint_path, checkpoint_every,
                                             verbose, data.batch_bytes if plan.streamed else None)
    if opt_state is None:
        opt_state = optimizer.init(params)
    else:
        check_opt_state(where, optimizer, params, opt_state)
    keys = shuffle_and_step_keys(key, plan.shuffle or is_contextual(model))
    carry = (params, opt_state, state)
    if mesh is not None:  # every input of the program on the mesh: a process can only pass its own devices'
        carry, keys = (*shard_params(carry[:2], mesh), *replicate(carry[2:], mesh)), replicate(keys, mesh)
    run_folder = open_run(where, plan, carry, data, plan.make_optimizer, None, 0, checkpoint_path,
                          keep_checkpoints, accept_changes)
    carry, history = drive(plan, carry, None, keys, data, eval_arrays, checkpoint=run_folder, batched=0,
                           verbose=verbose, chunk_size=chunk_size, checkpoint_every=checkpoint_every,
                           callback=callback, desc=f"fit {model.name}"[:40])
    return FitResult(carry[0], carry[1], carry[2], history)


def init_many(model: Layer, keys: jax.Array, input_shape, *, state: bool = False) -> Any:
    """Stacked initial params of ``len(keys)`` models: leaf ``i`` along axis 0 is ``model.init(keys[i], ...)``.

    With ``state=True``, the stacked initial states instead (``bp.init_state(model, keys[i], input_shape)``;
    ``()`` for a simple model): per-model feedback matrices, running statistics, ... for
    :func:`fit_many`'s ``state``.

    Examples:
      >>> model = bp.serial(L.Dense(4), L.Relu(), L.Dense(2))
      >>> params = bp.train.init_many(model, jax.random.split(jax.random.key(0), 3), (3,))
      >>> params[0]["W"].shape, params[2]["b"].shape                                 # a leading model axis
      ((3, 3, 4), (3, 2))
    """
    where = "init_many"
    check_model(model, where)
    # One eager init per key, then a stack. Measured alternatives: an eager vmap compiles every batched
    # primitive on its own, and a jitted vmap spends seconds compiling the batched threefry sampler
    # (3.6 s CPU for the MNIST-1D MLP); eager inits reuse the per-primitive programs that any
    # model.init call of the same shapes has compiled already.
    input_shape = tuple(input_shape)
    inits = [init_of(model, k, input_shape, state=True)[1] if state else model.init(k, input_shape)[1]
             for k in keys]
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *inits)


def as_hparams(hparams):
    """``hparams`` with every list or tuple of numbers as an array (``[1e-3, 1e-2]``: two models' values)."""
    numbers = lambda v: isinstance(v, (list, tuple)) and bool(v) and all(  # noqa: E731
        isinstance(e, (int, float)) and not isinstance(e, bool) for e in v)
    return jax.tree.map(lambda v: jnp.asarray(v) if numbers(v) else v, hparams, is_leaf=numbers)


def many_states(where: str, model: Layer, state, n: int, init_keys, input_shape):
    """``fit_many``'s starting states with a leading axis ``n``: ``state`` itself when it has one, ``state``
    repeated when it is one model's, or each model's own from ``init_keys`` when ``None``."""
    if state is None:
        if init_keys is None:  # every model's state drawn from its own key, or the caller's
            return check_state(where, model, None, "keys= (each model's state is then drawn from its own key) or "
                                                   "state=")
        return init_many(model, init_keys, input_shape, state=True) if is_contextual(model) else ()
    one = jax.eval_shape(lambda k: init_of(model, k, input_shape, state=True)[1], jax.random.key(0))
    shapes = [tuple(a.shape) for a in jax.tree.leaves(one)]
    given = [tuple(np.shape(a)) for a in jax.tree.leaves(state)]
    same = str(jax.tree.structure(state)) == str(jax.tree.structure(one))
    if same and given == shapes:
        return jax.tree.map(lambda a: jnp.broadcast_to(a, (n, *jnp.shape(a))), state)  # shared by every model
    if same and given == [(n, *s) for s in shapes]:
        return state
    raise errors.BpjaxError(where, f"state: expected one model's state (leaf shapes {shapes[:3]}...) or one per "
                                   f"model with a leading axis {n} (bp.train.init_many(model, keys, input_shape, "
                                   f"state=True)), got leaf shapes {given[:3]}...")


def fit_many(model: Layer, loss, optimizer, params, train_data: Tuple[Any, Any], *, steps: int, batch_size: int,
             keys: Optional[jax.Array] = None, hparams=None, shuffle: bool = False,
             eval_data: Optional[Tuple[Any, Any]] = None, eval_every: Optional[int] = None,
             backward: str = "manual", state=None, metrics=None, verbose: bool = True,
             chunk_size: Optional[int] = None, unroll: int = 1, nan_guard: bool = True,
             checkpoint_path: Optional[str] = None, checkpoint_every: Optional[int] = None,
             keep_checkpoints: int = resume.KEEP, accept_changes: Sequence[str] = (),
             callback=None, mesh: Optional[Mesh] = None, data_parallel: bool = False) -> FitResult:
    """Train ``N`` models in one call: :func:`fit` under ``jax.vmap`` over seeds and/or hyperparameters.

    Model ``i`` takes the steps that ``fit(model, loss, optimizer(hparams[i]), params[i], ..., key=keys[i])``
    would take (same batches, same keys, same maths), all in one compiled program. The numbers agree
    with the separate ``fit`` to float32 roundoff, not bit for bit: under ``vmap`` XLA orders the
    batched reductions differently (about 1e-7 relative per step; ``tests/test_runs.py`` holds them to
    1e-5 relative after 10 Adam steps).

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
      state: contextual models' starting state: one model's state, shared by every model; or one per
        model, with a leading axis ``N`` (:func:`init_many` with ``state=True``); default (``None``) each
        model's own, drawn from its init key ``jax.random.split(keys[i])[0]`` (independent feedback
        matrices, dropout and statistics per seed).
      mesh, data_parallel: as in :func:`fit`: the data (and each model's batch) split over the mesh's
        first axis, every model's params replicated.
      others: as in :func:`fit`.

    Returns:
      :class:`FitResult` whose params/opt_state/state leaves and history arrays have a leading axis ``N``.

    Examples:
      >>> model = bp.serial(L.Dense(4), L.Relu(), L.Dense(2))
      >>> params = bp.train.init_many(model, jax.random.split(jax.random.key(0), 3), (3,))   # 3 seeds
      >>> x, y = jnp.linspace(-1, 1, 24).reshape(8, 3), jnp.arange(8) % 2
      >>> result = bp.train.fit_many(model, bp.losses.softmax_cross_entropy, optax.sgd(0.1), params, (x, y),
      ...                            steps=3, batch_size=4, verbose=False)
      >>> result.history["loss"].shape, result.params[0]["W"].shape                  # (models, steps)
      ((3, 3), (3, 3, 4))
    """
    where = "fit_many"
    check_model(model, where)
    if isinstance(optimizer, optax.MultiSteps):
        optimizer = errors.as_transformation(where, optimizer)  # one optimizer for every model
    hparams = as_hparams(hparams)
    check_factory(where, optimizer, hparams)
    factory = Fixed(optimizer) if isinstance(optimizer, optax.GradientTransformation) else optimizer
    keys = check_keys(where, keys)
    if data_parallel and mesh is None:
        mesh = data_parallel_mesh()
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
        raise errors.BpjaxError(where, "give keys=(N keys), hparams=(leading axis N) or stacked params")
    scalars = [k for k, v in sizes.items() if v is None]
    if scalars:
        raise errors.BpjaxError(where, f"{', '.join(scalars[:3])}{' ...' if len(scalars) > 3 else ''}: expected one "
                                       f"value per model (a leading model axis N, e.g. jnp.array([1e-3, 1e-2])), "
                                       f"got a scalar")
    if len(set(sizes.values())) != 1:
        raise errors.BpjaxError(where, f"keys, hparams and params must share one leading model axis N, got {sizes}")
    n = next(iter(sizes.values()))
    if is_stream(train_data):  # the input shape from the first batch (kept and trained on)
        stream = Stream(where, train_data, batch_size, mesh)
        x0, train_data = stream.first[0], stream  # type: ignore[assignment]
    else:
        x0 = train_data[0] if isinstance(train_data, (tuple, list)) and train_data else None
    input_shape = np.shape(x0)[1:]
    init_keys = None
    if keys is not None:
        init_keys, run_keys_from = split_many(keys)
    if params is None:
        if keys is None or init_keys is None:
            raise errors.BpjaxError(where, "params=None needs keys to initialise the models")
        params, keys = init_many(model, init_keys, input_shape), run_keys_from
    states = many_states(where, model, state, n, init_keys, input_shape)
    first = lambda tree: jax.tree.map(lambda a: a[0], tree)  # noqa: E731
    plan, data, eval_arrays, _ = prepare(
        model, loss, first(params), train_data, steps=steps, batch_size=batch_size,
        key=None if keys is None else keys[0], shuffle=shuffle, eval_data=eval_data, eval_every=eval_every,
        backward=backward, state=first(states), metrics=metrics, nan_guard=nan_guard, unroll=unroll,
        make_optimizer=factory, hp0=None if hparams is None else first(hparams), mesh=mesh, where=where)
    chunk_size, checkpoint_every = chunking(where, plan.steps, chunk_size, checkpoint_path, checkpoint_every,
                                             verbose, data.batch_bytes if plan.streamed else None)
    opt_state = cached(("opt_init", factory), lambda: jax.jit(jax.vmap(lambda p, h: factory(h).init(p))))(
        params, hparams)
    needed = plan.shuffle or is_contextual(model)
    if keys is None or not needed:
        run_keys = (None, None)
    else:
        run_keys = split_many(keys)
    carry = (params, opt_state, states)
    if mesh is not None:
        carry = (*shard_params(carry[:2], mesh, lead=1), *replicate(carry[2:], mesh))
        run_keys, hparams = replicate((run_keys, hparams), mesh)
    run_folder = open_run(where, plan, carry, data, factory, hparams, n, checkpoint_path, keep_checkpoints,
                          accept_changes)
    carry, history = drive(plan, carry, hparams, run_keys, data, eval_arrays, checkpoint=run_folder, batched=n,
                           verbose=verbose, chunk_size=chunk_size, checkpoint_every=checkpoint_every,
                           callback=callback, desc=f"fit_many x{n}")
    return FitResult(carry[0], carry[1], carry[2], history)
