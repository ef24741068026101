"""The compiled loop: ``length`` training steps in one ``lax.scan``, with evaluation and the NaN guard inside.

A run is a ``lax.scan`` over steps. The data lives on the device; step ``s`` takes batch
``b = s mod n_b`` (``n_b = N // batch_size``, a ragged tail is dropped) of epoch ``e = s // n_b``:
rows ``b*batch_size .. (b+1)*batch_size - 1`` in order, or of ``permutation(fold_in(shuffle_key, e), N)`` when shuffled.
On a mesh the same rows are gathered from the data's shards (:func:`bpjax.train.sharding.take_rows`).
A streamed run (:mod:`bpjax.train.stream`) instead scans over the chunk's block of batches.
A contextual model gets the key ``fold_in(step_key, s)`` at step ``s``. Both are functions of the
step alone, so a run split into chunks (for the progress bar, checkpoints, the NaN guard) or
stopped and resumed from a checkpoint computes exactly the same steps.

Evaluation runs inside the program (``lax.cond``) after every ``eval_every`` steps and after the
last one. Each step is :func:`bpjax.train.step.step_function`'s, the same function ``make_step`` compiles.

Finiteness costs nothing per step: the losses come back to the host anyway, and each chunk ends by
flagging every leaf of ``(params, opt_state, state)`` finite or not (one pass per chunk). When either
fails under the NaN guard, the driver runs the chunk again from its start with ``plan.diagnose``
set: that program checks the loss, every gradient leaf and every leaf of the new params,
optimizer state and state at each step, and freezes the carry before the first step where one is
not finite, recording the step and the cause (:data:`CAUSES`).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec

from bpjax import errors
from bpjax.core import Layer, forward_of
from bpjax.train.sharding import constrain_params, take_rows
from bpjax.train.step import step_function

Metric = Callable[[jax.Array, jax.Array], jax.Array]
CAUSES = ("loss", "gradient", "params", "opt_state", "state")  # what the diagnosing chunk found first


class Fixed(NamedTuple):
    """``hp -> optimizer`` for one fixed optax transformation; equal (and hashed) by that transformation."""

    optimizer: optax.GradientTransformation

    def __call__(self, hp):
        return self.optimizer


class Plan(NamedTuple):
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
    streamed: bool = False
    diagnose: bool = False


def make_chunk(plan: Plan, length: int):
    """``chunk(carry, hp, keys, data, eval_data, start) -> (carry, (losses, eval_values, inputs_finite, finite,
    bad))``, ``carry = (params, opt_state, state)``.

    ``data`` is the device-resident ``(x, y)`` (laid out by :func:`~bpjax.train.sharding.shard_rows`
    on a mesh), or for a streamed run the chunk's block ``(xs: (length, B, ...), ys)``;
    ``inputs_finite: (length,)`` says whether each streamed batch was finite (``()`` otherwise);
    ``finite: (leaves,)`` whether each leaf of the final carry is finite. With ``plan.diagnose``,
    ``bad = (step, cause, leaf)`` of the first non-finite step (``step = -1``: none; ``cause`` indexes
    :data:`CAUSES`, ``leaf`` the leaf within it) and the carry is the one before that step;
    ``bad = ()`` otherwise.
    """
    model, loss = plan.model, plan.loss
    step_fn = step_function(model, loss, plan.backward)
    batch_size = plan.batch_size

    def evaluate(params, state, ex, ey):
        pred, _, _ = forward_of(model, params, ex, state=state, key=None, train=False)
        return tuple(loss.value(pred, ey) if fn is None else fn(pred, ey) for _, fn in plan.metrics)

    def chunk(carry, hp, keys, data, eval_data, start):
        optimizer = plan.make_optimizer(hp)
        shuffle_key, step_key = keys
        x, y = data  # streamed: the block, scanned over below

        def permutation(step):
            return jax.random.permutation(jax.random.fold_in(shuffle_key, step // plan.n_batches), plan.n_examples)

        def batch(step, perm):
            """``(xb, yb, perm)``: the rows of step ``step`` (``perm``: this epoch's permutation)."""
            b = step % plan.n_batches
            if plan.shuffle:
                perm = lax.cond(b == 0, lambda: permutation(step), lambda: perm)
                idx = lax.dynamic_slice_in_dim(perm, b * batch_size, batch_size)
            else:
                idx = b * batch_size + jnp.arange(batch_size)
            if plan.sharding is not None:
                return (*take_rows((x, y), idx, plan.sharding.mesh), perm)
            if plan.shuffle:
                return jnp.take(x, idx, axis=0), jnp.take(y, idx, axis=0), perm
            return (lax.dynamic_slice_in_dim(x, b * batch_size, batch_size),
                    lax.dynamic_slice_in_dim(y, b * batch_size, batch_size), perm)

        def diagnose(step, bad, value, grads, new):
            """The first non-finite quantity of this step as ``(step, cause, leaf)``, kept once found."""
            checks = [jnp.isfinite(value)[None], *(errors.finite_leaves(t) for t in (grads, *new))]
            ok = [jnp.all(c) for c in checks]
            cause = jnp.argmin(jnp.stack(ok))  # the first failing check, in the order of CAUSES
            leaf = lax.switch(cause, [lambda c=c: jnp.argmin(c).astype(jnp.int32) if c.shape[0] else
                                      jnp.asarray(0, jnp.int32) for c in checks])
            first = (bad[0] < 0) & ~jnp.all(jnp.stack(ok))
            return tuple(jnp.where(first, v, b).astype(jnp.int32) for v, b in zip((step, cause, leaf), bad))

        def body(c, streamed_batch):
            params, opt_state, state, step, perm, bad = c
            if plan.streamed:
                xb, yb = streamed_batch
            else:
                xb, yb, perm = batch(step, perm)
            if plan.sharding is not None:
                xb = lax.with_sharding_constraint(xb, plan.sharding)
                yb = lax.with_sharding_constraint(yb, plan.sharding)
            k = None if step_key is None else jax.random.fold_in(step_key, step)
            new_params, new_opt, new_state, value, grads = step_fn(params, opt_state, optimizer, xb, yb, state, k)
            if plan.diagnose:  # freeze the carry before the first step with a non-finite value; say which
                bad = diagnose(step, bad, value, grads, (new_params, new_opt, new_state))
                keep = lambda new, old: jax.tree.map(lambda a, b_: jnp.where(bad[0] < 0, a, b_), new, old)  # noqa
                new_params, new_opt, new_state = keep(new_params, params), keep(new_opt, opt_state), \
                    keep(new_state, state)
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
            finite = jnp.all(errors.finite_leaves((xb, yb))) if plan.streamed else ()
            return (new_params, new_opt, new_state, done, perm, bad), (value.astype(jnp.float32), ev, finite)

        params, opt_state, state = carry
        perm = permutation(start) if plan.shuffle else jnp.zeros((0,), jnp.int32)
        bad = tuple(jnp.asarray(-1, jnp.int32) for _ in range(3)) if plan.diagnose else ()
        c0 = (params, opt_state, state, jnp.asarray(start, jnp.int32), perm, bad)
        c, out = lax.scan(body, c0, data if plan.streamed else None, length=length, unroll=plan.unroll)
        params, opt_state, state, _, _, bad = c
        out = (*out, errors.finite_leaves((params, opt_state, state)), bad)
        if plan.sharding is not None:  # what the driver reads on the host: in full on every device
            out = lax.with_sharding_constraint(out, NamedSharding(plan.sharding.mesh, PartitionSpec()))
            params, opt_state = constrain_params((params, opt_state), plan.sharding.mesh)
        return (params, opt_state, state), out

    return chunk
