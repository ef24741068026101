"""Determinism: same seed and config give bitwise-identical params, state and losses on the CPU,
within a process and across processes, and a run resumed from a checkpoint equals an uninterrupted one."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from determinism_worker import model_and_step, setup, train

import bpjax as bp
from bpjax import checkpoint

REPO = Path(bp.__file__).resolve().parents[1]
L = bp.layers


def _digest(tree) -> str:
    """SHA-256 over the raw bytes, dtypes and shapes of every leaf: equal digests = bitwise equal trees."""
    h = hashlib.sha256(str(jax.tree.structure(tree)).encode())
    for leaf in jax.tree.leaves(tree):
        a = np.asarray(leaf)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def test_same_seed_same_bits_different_seed_different_bits():
    carry_a, losses_a = train(0, 12)
    carry_b, losses_b = train(0, 12)
    assert _digest(carry_a) == _digest(carry_b)
    assert losses_a.tobytes() == losses_b.tobytes()
    carry_c, losses_c = train(1, 12)
    assert _digest(carry_c) != _digest(carry_a) and not np.array_equal(losses_c, losses_a)
    assert np.all(np.isfinite(losses_a)) and losses_a[-1] < losses_a[0]  # it trained


def test_resume_from_checkpoint_is_bitwise_identical(tmp_path):
    """12 steps straight == 5 steps, save, restore into a fresh process-like start, 7 more steps."""
    straight, losses_straight = train(0, 12)
    first, losses_first = train(0, 5)
    path = checkpoint.save(tmp_path / "ck.npz", {"params": first[0], "opt_state": first[1], "state": first[2],
                                                 "step": 5, "losses": losses_first})
    _, fresh_params, fresh_opt, fresh_state, _, _ = setup(7)  # `like`: same structure, other values
    saved = checkpoint.restore(path, like={"params": fresh_params, "opt_state": fresh_opt, "state": fresh_state,
                                           "step": 0, "losses": losses_first})
    resumed, losses_rest = train(0, 12 - saved["step"], (saved["params"], saved["opt_state"], saved["state"]),
                                  start=saved["step"])
    assert _digest(resumed) == _digest(straight)
    assert np.concatenate([saved["losses"], losses_rest]).tobytes() == losses_straight.tobytes()


def test_another_process_writes_an_identical_checkpoint(tmp_path):
    """A fresh interpreter trains the same run: its checkpoint file is byte-for-byte this process's, its losses
    bit for bit."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(Path(__file__).parent / "determinism_worker.py"),
                           str(tmp_path / "other.npz")], capture_output=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    other = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    carry, losses = train(0, 6)
    path = checkpoint.save(tmp_path / "here.npz", {"params": carry[0], "opt_state": carry[1], "state": carry[2],
                                                   "losses": losses})
    assert other["sha256"] == hashlib.sha256(Path(path).read_bytes()).hexdigest()
    assert np.asarray(other["losses"], np.float32).tobytes() == losses.tobytes()


# ---------------------------------------------------------------- bp.train.fit


class _Interrupt(Exception):
    pass


def _fit(steps=12, **kw):
    """A contextual model trained by ``fit`` with shuffling and dropout keys: every source of randomness on."""
    model, optimizer, _ = model_and_step()
    _, params, _, state, x, y = setup(0)
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
# of a contextual model with shuffling bit for bit in test_runs.py (test_checkpoint_resume_is_bitwise_identical).
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
