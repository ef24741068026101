"""The driver of a run: compiled chunks one after the other, with progress, checkpoints, callbacks and history.

Between two chunks (never inside the compiled program) it updates the progress bar, checks the
NaN guard, writes a checkpoint and calls the user's ``callback``. A streamed run's next block is
read and sent while the current chunk runs. With several processes, the bar and the callback
run in process 0 (a callback wrapped in :func:`~bpjax.train.distributed.every_process` in all),
and every process stops where any of them raised.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from bpjax import errors
from bpjax.train import distributed, guard, resume
from bpjax.train.cache import compiled_chunk
from bpjax.train.history import FitResult, history
from bpjax.train.loop import Plan
from bpjax.train.stream import Stream

STREAM_BLOCK_BYTES = 16 << 20  # a streamed run's default block of batches at most (two are on the devices)


def chunk_bounds(start: int, steps: int, chunk_size: int, checkpoint_every) -> list:
    """``[(lo, hi), ...]`` from ``start`` to ``steps``, cut every ``chunk_size`` and ``checkpoint_every`` steps."""
    every = set(range(0, steps, chunk_size)) | {steps}
    if checkpoint_every:
        every |= set(range(0, steps, checkpoint_every))
    cuts = sorted(c for c in every if c >= start)
    if not cuts or cuts[0] != start:
        cuts = [start, *cuts]
    return list(zip(cuts[:-1], cuts[1:]))


def default_chunk(steps: int, verbose: bool, batch_bytes=None) -> int:
    """One chunk when silent; about 20 (a divisor of ``steps`` when one is near, to compile once) with a bar.

    A streamed run (``batch_bytes``: one batch's bytes) always takes about 20 chunks, each a block of
    at most ``STREAM_BLOCK_BYTES``: few enough for the per-chunk cost to vanish, and the next block
    is read while the current one trains.
    """
    streamed = batch_bytes is not None
    target = max(1, math.ceil(steps / 20)) if verbose or streamed else steps
    if streamed:
        target = min(target, max(1, STREAM_BLOCK_BYTES // max(1, batch_bytes)))
    if target == steps:
        return steps
    for d in range(target, min(steps, 2 * target) + 1):
        if steps % d == 0:
            return d
    return target


def chunking(where: str, steps: int, chunk_size, checkpoint_path, checkpoint_every, verbose, batch_bytes=None):
    """Validated ``(chunk_size, checkpoint_every)``; a checkpoint path alone saves after every chunk."""
    if chunk_size is None:
        chunk_size = default_chunk(steps, verbose, batch_bytes)
    chunk_size = errors.positive_int(where, "chunk_size", chunk_size)
    if checkpoint_every is not None:
        checkpoint_every = errors.positive_int(where, "checkpoint_every", checkpoint_every)
        if checkpoint_path is None:
            raise errors.BpjaxError(where, "checkpoint_every is set but checkpoint_path is None")
    elif checkpoint_path is not None:
        checkpoint_every = chunk_size
    return chunk_size, checkpoint_every


def progress_bar(total: int, initial: int, desc: str):
    """A tqdm bar (tqdm is a dependency of bpjax)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", leave=True)


@distributed.reports_lost_processes
def drive(plan: Plan, carry, hp, keys, data, eval_data, *, batched: int, verbose, chunk_size,
          checkpoint: Optional[resume.RunFolder], checkpoint_every, callback, desc):
    """Run ``plan.steps`` steps in chunks from a fresh start or from the run folder; returns ``(carry, history)``.

    ``carry = (params, opt_state, state)``; ``data`` is the device-resident ``(x, y)`` or a
    :class:`~bpjax.train.stream.Stream`; ``checkpoint`` the open run folder (or ``None``), released at the
    end however the run ends.
    """
    steps = plan.steps
    names = [n for n, _ in plan.metrics]
    losses, evals = [], []
    start = 0
    bar = None
    try:  # the run folder is released however the run ends
        if checkpoint is not None:
            start, carry, loss0, evals0 = resume.resume(checkpoint, plan, carry, names, batched)
            if start:
                losses.append(loss0)
                evals.append(evals0)

        bounds = chunk_bounds(start, steps, chunk_size, checkpoint_every)
        stream = data if isinstance(data, Stream) else None
        block = stream.take(bounds[0][1] - bounds[0][0]) if stream is not None and bounds else data
        bar = progress_bar(steps, start, desc) if verbose and distributed.is_main() else None
        for k, (lo, hi) in enumerate(bounds):
            carry_in, current = carry, block
            carry, (loss_c, ev_c, inputs_finite, finite, _) = compiled_chunk(plan, hi - lo, batched)(
                carry_in, hp, keys, current, eval_data, lo)
            if stream is not None and k + 1 < len(bounds):  # read and send the next block while this one runs
                block = stream.take(bounds[k + 1][1] - bounds[k + 1][0])
            losses.append(np.asarray(loss_c))
            evals.append(tuple(np.asarray(e) for e in ev_c))
            if stream is not None:
                resume.raise_if_bad_input(inputs_finite, lo)
            ok = guard.healthy(losses[-1], finite)
            if plan.nan_guard and not ok:
                guard.stop(plan, carry_in, hp, keys, current, lo, hi, batched)
            if bar is not None:
                post = {"loss": f"{float(np.mean(losses[-1][..., -1])):.4g}"}
                if evals[-1] and names and np.isfinite(evals[-1][-1][..., -1]).all():
                    post["eval_" + names[-1]] = f"{float(np.mean(evals[-1][-1][..., -1])):.4g}"
                bar.set_postfix(post, refresh=False)
                bar.update(hi - lo)
            save = checkpoint is not None and checkpoint_every and (hi % checkpoint_every == 0 or hi == steps)
            so_far = history(plan, losses, evals, names, hi) if save or callback else {}
            if save and checkpoint is not None:
                resume.save(checkpoint, plan, carry, so_far, hi, bool(np.asarray(finite).all()))
            if callback is not None:
                distributed.on_main(lambda: callback(hi, FitResult(carry[0], carry[1], carry[2], so_far)),
                                    f"the callback at step {hi}",
                                    all_processes=isinstance(callback, distributed.EveryProcess))
    finally:
        if bar is not None:
            bar.close()
        if checkpoint is not None:
            resume.close_folder(checkpoint)
    return carry, history(plan, losses, evals, names, steps)
