"""Data parallelism: a run sharded over 8 (simulated) CPU devices equals the single-device run.

The device count is fixed when jax starts, so the check runs in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` set before jax is imported.
"""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, optax
    import bpjax as bp
    from bpjax.layers import Dense, Relu
    assert jax.device_count() == 8, jax.devices()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 12)).astype(np.float32)
    y = (x[:, :4].argmax(1)).astype(np.int32)
    model = bp.serial(Dense(32), Relu(), Dense(4))
    _, p0 = model.init(jax.random.key(0), (12,))
    kw = dict(steps=6, batch_size=64, key=jax.random.key(1), shuffle=True, eval_data=(x, y), verbose=False)
    single = bp.train.fit(model, bp.losses.softmax_cross_entropy, optax.adam(1e-2), p0, (x, y), **kw)
    sharded = bp.train.fit(model, bp.losses.softmax_cross_entropy, optax.adam(1e-2), p0, (x, y),
                           data_parallel=True, **kw)
    # params come back replicated over all 8 devices
    w = sharded.params[0]["W"]
    assert len(w.sharding.device_set) == 8 and w.sharding.is_fully_replicated, w.sharding
    # f32 tolerance: each device sums its 8-row slice of the gradient and the all-reduce adds the 8
    # partial sums, a different summation order than one 64-row sum (~1e-7 relative per sum); over 6
    # Adam steps this stays below 1e-5 relative / 1e-6 absolute.
    for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(sharded.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(single.history["loss"], sharded.history["loss"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(single.history["eval_accuracy"], sharded.history["eval_accuracy"], rtol=0)
    assert not np.allclose(np.asarray(p0[0]["W"]), np.asarray(w))  # it trained
    # the helpers: a batch split over the mesh, one row block per device
    mesh = bp.train.data_parallel_mesh()
    xb = bp.train.shard_batch(jnp.asarray(x[:64]), mesh)
    assert {s.data.shape for s in xb.addressable_shards} == {(8, 12)}
    # a batch that does not split evenly is refused before compiling
    try:
        bp.train.fit(model, bp.losses.softmax_cross_entropy, optax.adam(1e-2), p0, (x, y), steps=2,
                     batch_size=60, data_parallel=True, verbose=False)
    except bp.BpjaxError as e:
        assert "divisible by the 8 devices" in str(e), e
    else:
        raise AssertionError("batch_size=60 on 8 devices did not raise")
    print("SHARDED-OK")
""")


def test_sharded_run_equals_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "SHARDED-OK" in out.stdout, out.stdout[-2000:] + out.stderr[-4000:]
