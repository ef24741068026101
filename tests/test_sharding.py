"""Data parallelism: runs on 8 (simulated) CPU devices equal the single-device runs, with the data sharded.

The device count is fixed when jax starts, so the runs happen in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` set before jax is imported; it prints what it
measured as one JSON line (losses, params, shard shapes, bytes per device, errors) and the test
asserts on that data.

f32 tolerance throughout: each device sums its 8-row slice of the gradient and the all-reduce adds
the 8 partial sums, a different summation order than one 64-row sum (~1e-7 relative per sum); over
a few Adam steps this stays below 1e-5 relative / 1e-6 absolute.
"""

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

SCRIPT = textwrap.dedent("""
    import json, math
    import jax, jax.numpy as jnp, numpy as np, optax
    import bpjax as bp
    from bpjax.layers import Dense, Relu
    from bpjax.train import sharding
    out = {"devices": jax.device_count()}
    rng = np.random.default_rng(0)
    N = 203  # not a multiple of 8 devices, nor of the batch: padding and the ragged tail are exercised
    x = rng.normal(size=(N, 12)).astype(np.float32)
    y = (x[:, :4].argmax(1)).astype(np.int32)
    xe, ye = x[:96], y[:96]
    model = bp.serial(Dense(32), Relu(), Dense(4))
    _, p0 = model.init(jax.random.key(0), (12,))
    XENT, adam = bp.losses.softmax_cross_entropy, optax.adam(1e-2)

    def record(res, keys=("loss", "eval_loss", "eval_accuracy")):  # a run as lists: its params and history
        return {"params": [np.asarray(a).tolist() for a in jax.tree.leaves(res.params)],
                **{k: np.asarray(res.history[k]).tolist() for k in keys if k in res.history}}

    def shard_shapes(a):
        return sorted({tuple(s.data.shape) for s in a.addressable_shards})

    # 1. shuffled (4 epochs: the permutations reach the tail rows), evaluation split 8 ways
    rows_seen = []

    def watch(step, res):  # every live array of the training set's width, while the run holds the data
        rows_seen.extend(max(s.data.shape[0] for s in a.addressable_shards)
                         for a in jax.live_arrays() if a.shape[1:] == (12,))

    kw = dict(steps=12, batch_size=64, key=jax.random.key(1), shuffle=True, eval_data=(xe, ye), eval_every=4,
              chunk_size=4, verbose=False)
    single = bp.train.fit(model, XENT, adam, p0, (x, y), **kw)
    sharded = bp.train.fit(model, XENT, adam, p0, (x, y), data_parallel=True, callback=watch, **kw)
    w = sharded.params[0]["W"]
    out.update(p0=[np.asarray(a).tolist() for a in jax.tree.leaves(p0)], single=record(single),
               sharded=record(sharded), w_devices=len(w.sharding.device_set),
               w_replicated=w.sharding.is_fully_replicated, rows_seen=sorted(set(rows_seen)))

    # 2. bytes of training data per device fall as 1/devices
    out["rows"], out["bytes"] = {}, {}
    for D in (1, 2, 4, 8):
        (xs, ys), n = sharding.shard_rows((x, y), bp.train.data_parallel_mesh(jax.devices()[:D]))
        out["rows"][D] = n
        out["bytes"][D] = sorted(sharding.device_bytes((xs, ys)).values())

    # 6. the helpers: a batch split over the mesh, one row block per device
    mesh = bp.train.data_parallel_mesh()
    out["batch_shards"] = shard_shapes(bp.train.shard_batch(jnp.asarray(x[:64]), mesh))
    out["process_local"] = np.asarray(bp.train.process_local(x[:64], mesh)).tolist()  # one process: all rows
    out["x64"] = x[:64].tolist()
    try:  # a batch that does not split evenly is refused before compiling
        bp.train.fit(model, XENT, adam, p0, (x, y), steps=2, batch_size=60, data_parallel=True, verbose=False)
        out["batch60"] = None
    except bp.BpjaxError as e:
        out["batch60"] = str(e)
""")

# fit_many, streamed batches and a 2-D (data x model) mesh on the same 8 devices; run after SCRIPT, in its process.
MORE = textwrap.dedent("""
    # 3. fit_many on the mesh equals fit_many on one device (seeds, batches in order, evaluated)
    mkw = dict(steps=8, batch_size=64, keys=jax.random.split(jax.random.key(3), 3), eval_data=(xe, ye),
               verbose=False)
    out["many_one"] = record(bp.train.fit_many(model, XENT, adam, None, (x, y), **mkw), ("loss", "eval_loss"))
    out["many_mesh"] = record(bp.train.fit_many(model, XENT, adam, None, (x, y), data_parallel=True, **mkw),
                              ("loss", "eval_loss"))

    # 4. streamed batches split over the mesh equal the device-resident run (batches in order)
    def batches(steps):
        for s in range(steps):
            b = s % (N // 64)
            yield x[b * 64:(b + 1) * 64], y[b * 64:(b + 1) * 64]

    skw = dict(steps=9, batch_size=64, eval_data=(xe, ye), eval_every=3, chunk_size=3, verbose=False)
    out["resident"] = record(bp.train.fit(model, XENT, adam, p0, (x, y), **skw), ("loss",))
    out["streamed"] = record(bp.train.fit(model, XENT, adam, p0, batches(9), data_parallel=True, **skw), ("loss",))

    # 5. a 2-D mesh (data 4 x model 2): the weight matrices split by columns, the same run
    mesh2 = bp.train.make_mesh((4, 2), ("data", "model"))
    tp = bp.train.fit(model, XENT, adam, p0, (x, y), mesh=mesh2, **kw)
    out["mesh2d"] = record(tp, ("loss",))
    out["mesh2d_shards"] = {"W1": shard_shapes(tp.params[0]["W"]),
                            "b1_replicated": tp.params[0]["b"].sharding.is_fully_replicated,
                            "W2": shard_shapes(tp.params[2]["W"]), "mu_W1": shard_shapes(tp.opt_state[0].mu[0]["W"])}
    out["param_bytes"] = [max(sharding.device_bytes(p).values()) for p in (sharded.params, tp.params)]
""")

PRINT = "\nprint(json.dumps(out))\n"
N, D = 203, 8


def _run(script) -> dict:
    """What ``script`` measured on 8 simulated devices, from the JSON line it prints."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", script + PRINT], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _same_run(a, b, keys=("loss",)):
    """Two runs' params and histories agree to the float32 tolerance of the module docstring."""
    for u, v in zip(a["params"], b["params"]):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=1e-6)
    for k in keys:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_sharded_runs_equal_single_device():
    out = _run(SCRIPT)
    assert out["devices"] == D
    # 1. the sharded run is the single-device run; its params live on all 8 devices, replicated
    _same_run(out["single"], out["sharded"], ("loss", "eval_loss"))
    assert out["single"]["eval_accuracy"] == out["sharded"]["eval_accuracy"]
    assert out["w_devices"] == D and out["w_replicated"]
    assert not np.allclose(out["p0"][0], out["sharded"]["params"][0])  # it trained
    # no device held more than its 26 = ceil(203 / 8) rows of the training set (nor 12 of the eval set)
    assert out["rows_seen"] and max(out["rows_seen"]) == math.ceil(N / D), out["rows_seen"]
    # 2. bytes of training data per device fall as 1/devices: ceil(N / D) rows of 12 floats and a label each
    for d, per_device in out["bytes"].items():
        assert out["rows"][d] == N and per_device == [math.ceil(N / int(d)) * (12 * 4 + 4)] * int(d), (d, per_device)
    # 6. a batch split over the mesh, 8 rows per device; one process's local rows are all rows
    assert out["batch_shards"] == [[8, 12]]
    assert out["process_local"] == out["x64"]
    assert out["batch60"] is not None and "divisible by the 8 devices" in out["batch60"]


# ~10 s more of compiling on 8 simulated devices: slow. The default suite trains sharded (above), and streamed
# over a mesh of two processes (test_multiprocess.py).
@pytest.mark.slow
def test_sharded_fit_many_streamed_and_2d_mesh_equal_single_device():
    out = _run(SCRIPT + MORE)
    _same_run(out["many_one"], out["many_mesh"], ("loss", "eval_loss"))  # 3. fit_many
    _same_run(out["resident"], out["streamed"])  # 4. streamed over the mesh
    _same_run(out["single"], out["mesh2d"])  # 5. the 2-D mesh: W split by columns over "model", the same run
    shards = out["mesh2d_shards"]
    assert shards["W1"] == [[12, 16]] and shards["b1_replicated"] and shards["W2"] == [[32, 2]]
    assert shards["mu_W1"] == [[12, 16]]  # Adam's moments lie as their params do
    assert out["param_bytes"] == [(12 * 32 + 32 + 32 * 4 + 4) * 4, (12 * 16 + 32 + 32 * 2 + 4) * 4]
