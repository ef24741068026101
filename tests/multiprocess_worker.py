"""One process of the 2-process job of ``tests/test_multiprocess.py``, and the same runs on one device.

    python -m bpjax.train.launch --processes 2 --cpu-devices 2 tests/multiprocess_worker.py OUT_DIR [quick]

Every process calls :func:`run` on a mesh over all 4 devices of both processes, feeding only its own
rows (``bp.train.process_local``, a per-process stream of batches), and writes what it saw to
``OUT_DIR/result_<process>.npz``; the test calls ``run(mesh=None)`` in its own process (one
device, whole arrays) and compares. The runs: a shuffled fit with evaluation, a progress bar and a
callback; the NaN guard; a fit stopped by its callback and resumed from a checkpoint that only
process 0 can see; ``make_step`` on sharded batches; a streamed fit with an every-process callback;
the finite-input report on a global array and on a streamed batch.
"""

from __future__ import annotations

import os
import sys

import numpy as np

N, N_EVAL, FEATURES, CLASSES, B = 96, 32, 12, 4, 16
HUGE_ROW = 70  # in process 1's rows; with this key its batch comes after others


class Stop(Exception):
    """Raised by a callback to stop a run."""


def dataset():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N + N_EVAL, FEATURES)).astype(np.float32)
    y = (x[:, :CLASSES].argmax(1)).astype(np.int32)
    return x[:N], y[:N], x[N:], y[N:]


def run(mesh, tmp: str, quick: bool = False) -> dict:
    """Every run of the job; ``mesh=None``: one process, one device, the whole arrays. ``quick``: runs 1 to 3
    only (one compiled program: the default suite's share), not make_step, the streamed fit and the reports."""
    import jax
    import optax

    import bpjax as bp
    from bpjax import checkpoint
    from bpjax.layers import Dense, Relu

    P, p = (jax.process_count(), jax.process_index()) if mesh is not None else (1, 0)
    x, y, xe, ye = dataset()
    mine = lambda a, lo, n: a[lo + p * n // P: lo + (p + 1) * n // P]  # noqa: E731 -- this process's rows
    rows = (lambda *arrays: bp.train.process_local(tuple(mine(a, 0, len(a)) for a in arrays), mesh)) \
        if mesh is not None else (lambda *arrays: arrays)
    model = bp.serial(Dense(16), Relu(), Dense(CLASSES))
    _, p0 = model.init(jax.random.key(0), (FEATURES,))
    XENT, adam = bp.losses.softmax_cross_entropy, optax.adam(1e-2)
    out: dict = {}

    def record(name, res):
        for i, leaf in enumerate(jax.tree.leaves(res.params)):
            out[f"{name}/param{i}"] = np.asarray(leaf)
        for k, v in res.history.items():
            out[f"{name}/{k}"] = np.asarray(v)

    # 1. shuffled epochs, evaluation, the NaN guard on, a progress bar and a callback (process 0's only);
    # 2. and 3. below run the same plan: one compiled program for the three
    kw = dict(steps=9, batch_size=B, key=jax.random.key(1), shuffle=True, eval_data=(xe, ye), eval_every=3,
              chunk_size=3, nan_guard=True, mesh=mesh)
    seen = []
    res = bp.train.fit(model, XENT, adam, p0, rows(x, y), verbose=True, callback=lambda s, r: seen.append(s), **kw)
    record("shuffle", res)
    out["shuffle/callback_steps"] = np.asarray(seen, np.int64)

    # 2. the NaN guard: one row of process 1 so large (finite) that its batch's first layer overflows
    x_huge = x.copy()
    x_huge[HUGE_ROW] = 3e38
    try:
        bp.train.fit(model, XENT, adam, p0, rows(x_huge, y), verbose=False, **kw)
        raise AssertionError("the NaN guard did not stop the run")
    except bp.BpjaxError as e:
        out["nan/message"], out["nan/step"] = np.asarray(str(e)), np.asarray(e.step)
        for i, leaf in enumerate(jax.tree.leaves(e.params)):
            out[f"nan/param{i}"] = np.asarray(leaf)

    # 3. stopped by the callback at step 6, resumed: each process has its own directory (as hosts with
    # their own disks), and only process 0 writes and reads its checkpoint. The run of 1. with another key
    saves = []
    real_save = checkpoint.save
    checkpoint.save = lambda *a, **k: (saves.append(a[0]), real_save(*a, **k))[1]
    directory = os.path.join(tmp, f"disk_{p}")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "run")
    kw = dict(kw, key=jax.random.key(2), checkpoint_path=path, verbose=False)

    def stop_at_6(step, _):
        if step == 6:
            raise Stop(f"stopped at step {step}")

    try:
        bp.train.fit(model, XENT, adam, p0, rows(x, y), callback=stop_at_6, **kw)
        raise AssertionError("the callback did not stop the run")
    except (Stop, bp.BpjaxError) as e:
        out["resume/stop"] = np.asarray(f"{type(e).__name__}: {e}")
    out["resume/start"] = np.asarray(bp.train.resume_step(path))
    record("resume", bp.train.fit(model, XENT, adam, p0, rows(x, y), **kw))
    checkpoint.save = real_save
    out["resume/saves"] = np.asarray(len(saves))
    out["resume/files"] = np.asarray(sorted(os.listdir(directory)) or [""])
    if quick:
        return out

    # 4. make_step on batches split over the processes
    step = bp.train.make_step(model, XENT, adam)
    params = bp.train.replicate(p0, mesh) if mesh is not None else p0
    opt_state = adam.init(params)
    values = []
    for s in range(4):
        params, opt_state, value = step(params, opt_state, *rows(x[s * B:(s + 1) * B], y[s * B:(s + 1) * B]))
        values.append(float(value))
    for i, leaf in enumerate(jax.tree.leaves(params)):
        out[f"make_step/param{i}"] = np.asarray(leaf)
    out["make_step/loss"] = np.asarray(values)

    # 5. streamed: each process's iterator yields its rows of each global batch, in order
    def batches(steps, bad_step=None):
        for s in range(steps):
            b = s % (N // B)
            xb, yb = mine(x, b * B, B).copy(), mine(y, b * B, B)
            if s == bad_step and p == P - 1:
                xb[-1, 0] = np.nan
            yield xb, yb

    calls = []
    skw = dict(steps=10, batch_size=B, eval_data=(xe, ye), eval_every=5, chunk_size=5, verbose=False, mesh=mesh)
    res = bp.train.fit(model, XENT, adam, p0, batches(10), callback=bp.train.every_process(
        lambda s, r: calls.append(s)), **skw)
    record("stream", res)
    out["stream/callback_steps"] = np.asarray(calls, np.int64)
    try:
        bp.train.fit(model, XENT, adam, p0, batches(10, bad_step=7), **skw)
        raise AssertionError("a NaN batch was not reported")
    except bp.BpjaxError as e:
        out["stream/nan_message"] = np.asarray(str(e))

    # 6. the finite-input report on a global array whose NaN lies in the last process's rows
    x_bad = x.copy()
    x_bad[70, 3] = np.nan
    try:
        bp.train.fit(model, XENT, adam, p0, rows(x_bad, y), steps=2, batch_size=B, verbose=False, mesh=mesh)
        raise AssertionError("a NaN input was not reported")
    except bp.BpjaxError as e:
        out["finite/message"] = np.asarray(str(e))
    return out


def main(out_dir: str, quick: bool = False) -> None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import bpjax as bp

    bp.train.initialize()  # from the BPJAX_* variables the launcher sets
    import jax

    assert jax.process_count() == 2 and jax.local_device_count() == 2, (jax.process_count(), jax.devices())
    out = run(bp.train.data_parallel_mesh(), out_dir, quick)
    out["devices"] = np.asarray(jax.device_count())
    np.savez(os.path.join(out_dir, f"result_{jax.process_index()}.npz"), **out)


if __name__ == "__main__":
    main(sys.argv[1], quick=sys.argv[2:] == ["quick"])
