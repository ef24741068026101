"""Determinism: same seed and config give bitwise-identical params, state and losses on the CPU,
within a process and across processes, and a run resumed from a checkpoint equals an uninterrupted one."""

import functools
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bpjax as bp
from bpjax import checkpoint

REPO = Path(bp.__file__).resolve().parents[1]
L = bp.layers


@functools.lru_cache(maxsize=None)
def _model_and_step():
    """A contextual model (BatchNorm statistics + Dropout keys) and its Adam step, compiled once per process."""
    model = bp.serial(L.Dense(16), L.BatchNorm(), L.Relu(), L.Dropout(0.2), L.Dense(3))
    optimizer = optax.adam(1e-2)
    return model, optimizer, bp.train.make_step(model, bp.losses.softmax_cross_entropy, optimizer)


def _setup(seed):
    """The step, initial params, optimiser state and layer state from ``seed``, and a fixed data set."""
    model, optimizer, step = _model_and_step()
    kp, ks, kx = jax.random.split(jax.random.key(seed), 3)
    params = model.init(kp, (6,))[1]
    state = bp.init_state(model, ks, (6,))
    x = jax.random.normal(kx, (64, 6))
    y = jnp.argmax(x[:, :3], -1)
    return step, params, optimizer.init(params), state, x, y


def _train(seed, steps, carry=None, start=0):
    """``steps`` steps from ``carry`` (or a fresh init); batches of 16 in order; dropout key per step."""
    step, params, opt_state, state, x, y = _setup(seed)
    if carry is not None:
        params, opt_state, state = carry
    losses = []
    for s in range(start, start + steps):
        i = (s * 16) % 64
        key = jax.random.fold_in(jax.random.key(seed + 100), s)
        params, opt_state, state, loss = step(params, opt_state, x[i:i + 16], y[i:i + 16], state=state, key=key)
        losses.append(loss)
    return (params, opt_state, state), np.asarray(losses)


def _digest(tree) -> str:
    """SHA-256 over the raw bytes, dtypes and shapes of every leaf: equal digests = bitwise equal trees."""
    h = hashlib.sha256(str(jax.tree.structure(tree)).encode())
    for leaf in jax.tree.leaves(tree):
        a = np.asarray(leaf)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def test_same_seed_same_bits_different_seed_different_bits():
    carry_a, losses_a = _train(0, 12)
    carry_b, losses_b = _train(0, 12)
    assert _digest(carry_a) == _digest(carry_b)
    assert losses_a.tobytes() == losses_b.tobytes()
    carry_c, losses_c = _train(1, 12)
    assert _digest(carry_c) != _digest(carry_a) and not np.array_equal(losses_c, losses_a)
    assert np.all(np.isfinite(losses_a)) and losses_a[-1] < losses_a[0]  # it trained


def test_resume_from_checkpoint_is_bitwise_identical(tmp_path):
    """12 steps straight == 5 steps, save, restore into a fresh process-like start, 7 more steps."""
    straight, losses_straight = _train(0, 12)
    first, losses_first = _train(0, 5)
    path = checkpoint.save(tmp_path / "ck.npz", {"params": first[0], "opt_state": first[1], "state": first[2],
                                                 "step": 5, "losses": losses_first})
    _, fresh_params, fresh_opt, fresh_state, _, _ = _setup(7)  # `like`: same structure, other values
    saved = checkpoint.restore(path, like={"params": fresh_params, "opt_state": fresh_opt, "state": fresh_state,
                                           "step": 0, "losses": losses_first})
    resumed, losses_rest = _train(0, 12 - saved["step"], (saved["params"], saved["opt_state"], saved["state"]),
                                  start=saved["step"])
    assert _digest(resumed) == _digest(straight)
    assert np.concatenate([saved["losses"], losses_rest]).tobytes() == losses_straight.tobytes()


_RUN = r"""
import sys, hashlib
sys.path.insert(0, sys.argv[1])
from test_determinism import _train
from bpjax import checkpoint
carry, losses = _train(0, 6)
path = checkpoint.save(sys.argv[2], {"params": carry[0], "opt_state": carry[1], "state": carry[2], "losses": losses})
print(hashlib.sha256(open(path, "rb").read()).hexdigest())
"""


def test_another_process_writes_an_identical_checkpoint(tmp_path):
    """A fresh interpreter trains the same run: its checkpoint file is byte-for-byte this process's."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", _RUN, str(Path(__file__).parent), str(tmp_path / "other.npz")],
                          capture_output=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    carry, losses = _train(0, 6)
    path = checkpoint.save(tmp_path / "here.npz", {"params": carry[0], "opt_state": carry[1], "state": carry[2],
                                                   "losses": losses})
    assert proc.stdout.decode().strip() == hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------- bp.train.fit


class _Interrupt(Exception):
    pass


def _fit(steps=12, **kw):
    """A contextual model trained by ``fit`` with shuffling and dropout keys: every source of randomness on."""
    model, optimizer, _ = _model_and_step()
    _, params, _, state, x, y = _setup(0)
    return bp.train.fit(model, bp.losses.softmax_cross_entropy, optimizer, params, (x, y), steps=steps,
                        batch_size=16, key=jax.random.key(42), shuffle=True, state=state, verbose=False,
                        eval_data=(x, y), eval_every=4, **kw)


@pytest.mark.slow  # ~10 s of compiling; the resume test below also compares two fit runs bit for bit
def test_fit_runs_are_bitwise_identical():
    a, b = _fit(), _fit()
    assert _digest((a.params, a.opt_state, a.state)) == _digest((b.params, b.opt_state, b.state))
    assert _digest(a.history) == _digest(b.history)
    assert a.history["loss"].shape == (12,) and np.all(np.isfinite(a.history["loss"]))


# ~10 s of compiling with two workers on 2 cores: slow. The default suite stops and resumes a checkpointing fit
# of a contextual model with shuffling bit for bit in test_fit.py (test_checkpoint_resume_is_bitwise_identical).
@pytest.mark.slow
def test_fit_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    """Stop a checkpointing run after step 8 (an exception from the callback), run the same call again:
    it resumes from the checkpoint and ends bitwise equal to a run that was never interrupted."""
    straight = _fit()
    path = str(tmp_path / "run")

    def stop(step, result):
        if step == 8:
            raise _Interrupt(step)

    try:
        _fit(checkpoint_path=path, checkpoint_every=4, callback=stop)
        raise AssertionError("the run was not interrupted")
    except _Interrupt:
        pass
    assert checkpoint.read_metadata(path)["metadata"]["step"] == 8
    seen = []
    resumed = _fit(checkpoint_path=path, checkpoint_every=4, callback=lambda step, result: seen.append(step))
    assert seen == [12]  # it resumed at step 8: only the last chunk ran
    assert _digest((resumed.params, resumed.opt_state, resumed.state)) == \
        _digest((straight.params, straight.opt_state, straight.state))
    assert _digest(resumed.history) == _digest(straight.history)
