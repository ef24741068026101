"""Data parallelism: runs on 8 (simulated) CPU devices equal the single-device runs, with the data sharded.

The device count is fixed when jax starts, so the checks run in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` set before jax is imported.

f32 tolerance throughout: each device sums its 8-row slice of the gradient and the all-reduce adds
the 8 partial sums, a different summation order than one 64-row sum (~1e-7 relative per sum); over
a few Adam steps this stays below 1e-5 relative / 1e-6 absolute.
"""

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import math
    import jax, jax.numpy as jnp, numpy as np, optax
    import bpjax as bp
    from bpjax.layers import Dense, Relu
    from bpjax.train import sharding
    assert jax.device_count() == 8, jax.devices()
    rng = np.random.default_rng(0)
    N = 203  # not a multiple of 8 devices, nor of the batch: padding and the ragged tail are exercised
    x = rng.normal(size=(N, 12)).astype(np.float32)
    y = (x[:, :4].argmax(1)).astype(np.int32)
    xe, ye = x[:96], y[:96]
    model = bp.serial(Dense(32), Relu(), Dense(4))
    _, p0 = model.init(jax.random.key(0), (12,))
    XENT, adam = bp.losses.softmax_cross_entropy, optax.adam(1e-2)

    def close(a, b, what):
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=1e-6, err_msg=what)

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
    assert len(w.sharding.device_set) == 8 and w.sharding.is_fully_replicated, w.sharding
    close(single.params, sharded.params, "params")
    np.testing.assert_allclose(single.history["loss"], sharded.history["loss"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(single.history["eval_loss"], sharded.history["eval_loss"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(single.history["eval_accuracy"], sharded.history["eval_accuracy"])
    assert not np.allclose(np.asarray(p0[0]["W"]), np.asarray(w))  # it trained
    # no device held more than its 26 = ceil(203 / 8) rows of the training set (nor 12 of the eval set)
    assert rows_seen and max(rows_seen) == math.ceil(N / 8), sorted(set(rows_seen))

    # 2. bytes of training data per device fall as 1/devices
    row_bytes = 12 * 4 + 4
    table = {}
    for D in (1, 2, 4, 8):
        (xs, ys), n = sharding.shard_rows((x, y), bp.train.data_parallel_mesh(jax.devices()[:D]))
        per_device = sharding.device_bytes((xs, ys))
        assert n == N and len(per_device) == D
        assert set(per_device.values()) == {math.ceil(N / D) * row_bytes}, per_device
        table[D] = max(per_device.values())
    print("BYTES", table)

    # 6. the helpers: a batch split over the mesh, one row block per device
    mesh = bp.train.data_parallel_mesh()
    xb = bp.train.shard_batch(jnp.asarray(x[:64]), mesh)
    assert {s.data.shape for s in xb.addressable_shards} == {(8, 12)}
    xl = bp.train.process_local(x[:64], mesh)  # one process: its rows are all rows
    np.testing.assert_array_equal(np.asarray(xl), x[:64])
    # a batch that does not split evenly is refused before compiling
    try:
        bp.train.fit(model, XENT, adam, p0, (x, y), steps=2, batch_size=60, data_parallel=True, verbose=False)
    except bp.BpjaxError as e:
        assert "divisible by the 8 devices" in str(e), e
    else:
        raise AssertionError("batch_size=60 on 8 devices did not raise")
    print("SHARDED-OK")
""")

# fit_many, streamed batches and a 2-D (data x model) mesh on the same 8 devices; run after SCRIPT, in its process.
MORE = textwrap.dedent("""
    # 3. fit_many on the mesh equals fit_many on one device (seeds, batches in order, evaluated)
    mkw = dict(steps=8, batch_size=64, keys=jax.random.split(jax.random.key(3), 3), eval_data=(xe, ye),
               verbose=False)
    one = bp.train.fit_many(model, XENT, adam, None, (x, y), **mkw)
    many = bp.train.fit_many(model, XENT, adam, None, (x, y), data_parallel=True, **mkw)
    close(one.params, many.params, "fit_many params")
    np.testing.assert_allclose(one.history["loss"], many.history["loss"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(one.history["eval_loss"], many.history["eval_loss"], rtol=1e-5, atol=1e-6)

    # 4. streamed batches split over the mesh equal the device-resident run (batches in order)
    def batches(steps):
        for s in range(steps):
            b = s % (N // 64)
            yield x[b * 64:(b + 1) * 64], y[b * 64:(b + 1) * 64]

    skw = dict(steps=9, batch_size=64, eval_data=(xe, ye), eval_every=3, chunk_size=3, verbose=False)
    resident = bp.train.fit(model, XENT, adam, p0, (x, y), **skw)
    streamed = bp.train.fit(model, XENT, adam, p0, batches(9), data_parallel=True, **skw)
    close(resident.params, streamed.params, "streamed params")
    np.testing.assert_allclose(resident.history["loss"], streamed.history["loss"], rtol=1e-5, atol=1e-6)

    # 5. a 2-D mesh (data 4 x model 2): the weight matrices split by columns, the same run
    mesh2 = bp.train.make_mesh((4, 2), ("data", "model"))
    tp = bp.train.fit(model, XENT, adam, p0, (x, y), mesh=mesh2, **kw)
    close(single.params, tp.params, "2-D mesh params")
    np.testing.assert_allclose(single.history["loss"], tp.history["loss"], rtol=1e-5, atol=1e-6)
    W1, b1, W2 = tp.params[0]["W"], tp.params[0]["b"], tp.params[2]["W"]
    assert {s.data.shape for s in W1.addressable_shards} == {(12, 16)} and b1.sharding.is_fully_replicated
    assert {s.data.shape for s in W2.addressable_shards} == {(32, 2)}
    mu = tp.opt_state[0].mu[0]["W"]  # Adam's moments lie as their params do
    assert {s.data.shape for s in mu.addressable_shards} == {(12, 16)}
    full, split = (max(sharding.device_bytes(p).values()) for p in (sharded.params, tp.params))
    assert (full, split) == ((12 * 32 + 32 + 32 * 4 + 4) * 4, (12 * 16 + 32 + 32 * 2 + 4) * 4), (full, split)
    print("PARAM-BYTES", {"replicated": full, "data4_model2": split})

    print("MORE-OK")
""")


def _run(script):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "SHARDED-OK" in out.stdout, out.stdout[-2000:] + out.stderr[-4000:]
    print(out.stdout)
    return out.stdout


def test_sharded_runs_equal_single_device():
    _run(SCRIPT)


# ~10 s more of compiling on 8 simulated devices: slow. The default suite trains sharded (above), and streamed
# over a mesh of two processes (test_multiprocess.py).
@pytest.mark.slow
def test_sharded_fit_many_streamed_and_2d_mesh_equal_single_device():
    assert "MORE-OK" in _run(SCRIPT + MORE)
