"""One process of the 2-process job of ``tests/test_checkpoint_sharded.py``: a sharded checkpoint of a training tree
whose model axis spans both processes, and the bytes each process moves against a full gather.

    python -m bpjax.train.launch --processes 2 --cpu-devices 2 tests/sharded_checkpoint_worker.py OUT_DIR

The mesh is ``(data 2, model 2)`` over the 4 devices, laid out so that each model pair holds one device of
each process: a matrix split by columns (``bp.train.shard_params``) has half of its columns in each process,
and no process can read it whole. Every process saves with ``backend="orbax"``, restores into the same
sharding, into another one (the model axis inside each process) and without ``like``, checks the values of
the shards it holds, and writes ``OUT_DIR/result_<process>.json``: the outcomes, the error of a ``.npz``
save, and the bytes it wrote and read (TensorStore's file counters, and the raw bytes of the shards it
holds) against the bytes a full gather (``multihost_utils.process_allgather``, what ``fit`` does before a
``.npz`` save) brings to it.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings

import numpy as np


def file_bytes() -> dict:
    """TensorStore's counters of the bytes this process has written and read through local files."""
    import tensorstore as ts

    out = {"written": 0, "read": 0}
    for m in ts.experimental_collect_matching_metrics("/tensorstore/kvstore/file/"):
        for key in out:
            if m["name"].endswith("/bytes_" + key):
                out[key] = int(m["values"][0]["value"])
    return out


def shard_bytes(tree) -> dict:
    """Raw bytes of ``tree``'s arrays (``jax.Array`` leaves, no keys): ``total`` (whole arrays), ``held``
    (distinct blocks this process holds), ``written`` (the blocks it writes: replica 0 of each block it holds,
    as orbax picks the writer)."""
    import jax

    out = {"total": 0, "held": 0, "written": 0}
    for a in jax.tree.leaves(tree):
        itemsize = np.dtype(a.dtype).itemsize
        out["total"] += a.size * itemsize
        blocks = {}
        for s in a.addressable_shards:
            blocks.setdefault(str(s.index), (s.data.size * itemsize, s.replica_id))
            if s.replica_id == 0:
                blocks[str(s.index)] = (s.data.size * itemsize, 0)
        out["held"] += sum(n for n, _ in blocks.values())
        out["written"] += sum(n for n, r in blocks.values() if r == 0)
    return out


def main(out_dir: str) -> None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import bpjax as bp

    bp.train.initialize()  # from the BPJAX_* variables the launcher sets
    import jax
    import optax
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh, NamedSharding

    from bpjax import checkpoint
    from bpjax.train import sharding

    p = jax.process_index()
    assert jax.process_count() == 2 and jax.local_device_count() == 2, jax.devices()
    devices = np.asarray(jax.devices()).reshape(2, 2)  # row i: process i's two devices
    mesh = Mesh(devices.T, ("data", "model"))  # a model pair = one device of each process
    inner = Mesh(devices, ("data", "model"))  # a model pair = the two devices of one process
    model = bp.serial(bp.layers.Dense(512), bp.layers.Relu(), bp.layers.Dense(256))
    _, params = model.init(jax.random.key(0), (256,))
    adam = optax.adam(1e-3)
    host = {"params": params, "opt_state": adam.init(params)}
    rng = np.random.default_rng(1)  # random moments, not zeros: they compress no better than trained ones
    host = jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(a.dtype) if a.dtype == np.float32 else
                        np.asarray(a), host)
    tree = sharding.shard_params(host, mesh)
    tree.update(step=7, key=jax.random.key(3))
    W = tree["params"][0]["W"]
    assert not W.is_fully_addressable and not W.is_fully_replicated and checkpoint.spans_processes(W)
    result: dict = {"process": p}

    # 1. the .npz backend refuses it, naming the leaf and the fix (process 0 alone would write)
    try:
        checkpoint.save(os.path.join(out_dir, f"refused_{p}.npz"), tree)
        result["npz_error"] = "none"
    except bp.BpjaxError as e:
        result["npz_error"] = str(e)

    # 2. sharded save: every process writes its own shards
    path = os.path.join(out_dir, "ck.orbax")
    before, t = file_bytes(), time.perf_counter()
    checkpoint.save(path, tree, metadata={"step": 7}, backend="orbax")
    result["save_s"] = time.perf_counter() - t
    after = file_bytes()
    result["files"] = {"written": after["written"] - before["written"]}
    t = time.perf_counter()  # a second save, orbax imported and the save's programs compiled
    checkpoint.save(path + "-again", tree, backend="orbax")
    result["save_again_s"] = time.perf_counter() - t

    # 3. restore into the same sharding: each process reads only its devices' shards
    before, t = after, time.perf_counter()
    out = checkpoint.restore(path, like=tree)
    result["restore_s"] = time.perf_counter() - t
    result["files"]["read"] = file_bytes()["read"] - before["read"]
    result["raw"] = shard_bytes({"params": tree["params"], "opt_state": tree["opt_state"]})
    result["raw"]["read"] = result["raw"]["held"]

    def same(a, b):
        if jax.dtypes.issubdtype(getattr(a, "dtype", np.float32), jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        if not isinstance(a, jax.Array):
            return bool(np.array_equal(a, b))
        return a.sharding == b.sharding and all(np.array_equal(x.data, y.data) for x, y in
                                                zip(a.addressable_shards, b.addressable_shards))

    result["values_equal"] = all(jax.tree.leaves(jax.tree.map(same, out, tree)))

    # 4. restore into another sharding (model axis inside each process), and whole without `like`
    other = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(
        inner, a.sharding.spec)) if isinstance(a, jax.Array) and not jax.dtypes.issubdtype(
        a.dtype, jax.dtypes.prng_key) else a, tree)
    moved = checkpoint.restore(path, like=other)
    ref = jax.tree.leaves(host)
    got = jax.tree.leaves({"opt_state": moved["opt_state"], "params": moved["params"]})
    result["resharded_equal"] = all(
        b.sharding.mesh == inner and all(np.array_equal(s.data, a[s.index]) for s in b.addressable_shards)
        for a, b in zip(ref, got))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", checkpoint.PlainTreeWarning)
        plain = checkpoint.restore(path)
    result["plain_equal"] = all(np.array_equal(np.asarray(a), b) for a, b in zip(
        jax.tree.leaves({"opt_state": plain["opt_state"], "params": plain["params"]}), ref))

    # 5. what fit does today before a .npz save: every split leaf gathered whole onto every process
    split = [a for a in jax.tree.leaves(tree) if checkpoint.spans_processes(a)]
    t = time.perf_counter()
    gathered = multihost_utils.process_allgather(split, tiled=True)
    result["gather_s"] = time.perf_counter() - t
    held = shard_bytes(split)["held"]
    result["gather"] = {"received": sum(g.nbytes for g in gathered) - held, "whole": sum(g.nbytes for g in gathered)}
    t = time.perf_counter()
    result["npz_file"] = os.path.getsize(checkpoint.save(os.path.join(out_dir, f"gathered_{p}.npz"),
                                                         jax.tree.map(np.asarray, gathered)))
    result["npz_save_s"] = time.perf_counter() - t

    # 6. fit on this mesh with a run folder: its entries go to the sharded backend; stopped by its callback at
    # step 4 and resumed (every process reading its own shards), it ends as the uninterrupted run
    rng = np.random.default_rng(2)
    x = rng.standard_normal((32, 256)).astype(np.float32)
    y = rng.integers(0, 256, 32).astype(np.int32)
    kw = dict(steps=8, batch_size=8, verbose=False, mesh=mesh)
    xent = bp.losses.softmax_cross_entropy
    full = bp.train.fit(model, xent, adam, params, (x, y), **kw)
    run = os.path.join(out_dir, "run")

    def stop(step, _):
        if step == 4:
            raise KeyboardInterrupt

    try:
        bp.train.fit(model, xent, adam, params, (x, y), checkpoint_path=run, checkpoint_every=4, callback=stop, **kw)
    except (KeyboardInterrupt, bp.BpjaxError):
        pass
    result["fit_start"] = bp.train.resume_step(run)
    resumed = bp.train.fit(model, xent, adam, params, (x, y), checkpoint_path=run, checkpoint_every=4, **kw)
    result["fit_equal"] = all(jax.tree.leaves(jax.tree.map(same, resumed.params, full.params)))
    with open(os.path.join(out_dir, f"result_{p}.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
