"""A run folder (bpjax/checkpoint/folder.py, bpjax/train/resume.py): one writer, retention, damaged entries
skipped, temporary files of killed saves removed, and a bad path refused before the first step.

The lock test uses a real second process (tests/run_folder_worker.py) holding the folder, then SIGKILLed
inside a save: its lock goes stale, its temporary file stays, and the next run takes both over and
resumes to exactly the params of an uninterrupted run.
"""

import importlib.util
import os
import select
import signal
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

import bpjax as bp
from bpjax.checkpoint import folder

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "run_folder_worker.py")
REPO = Path(bp.__file__).resolve().parents[1]


def _worker_module():
    spec = importlib.util.spec_from_file_location("run_folder_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


class _Run:
    """The worker process and its line protocol."""

    def __init__(self, path: Path, log: Path):
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
        self.log = log
        with log.open("wb") as err:
            self.proc = subprocess.Popen([sys.executable, WORKER, str(path)], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=err, bufsize=0, env=env)

    def expect(self, word: str, timeout: float = 180.0) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode().strip() if ready else "(nothing)"
        assert line.startswith(word), f"worker said {line!r}, expected {word!r}:\n{self.log.read_text()[-3000:]}"
        return line[len(word):].strip()

    def send(self, line: str = "go"):
        self.proc.stdin.write((line + "\n").encode())

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def test_one_writer_per_folder_and_a_killed_run_is_taken_over(tmp_path):
    worker = _worker_module()
    path = tmp_path / "run"
    run = _Run(path, tmp_path / "worker.log")
    try:
        model, loss, opt, params, data, kw = worker.problem()
        full = bp.train.fit(model, loss, opt, params, data, **kw)  # the uninterrupted run, while the worker starts
        assert run.expect("at") == "5"  # the worker holds the folder, its step 5 saved
        holder = f"host {socket.gethostname()!r}, pid {run.proc.pid}"
        with pytest.raises(bp.BpjaxError, match=rf"checkpoint_path '{path}' is held by another run \({holder}, "
                                                rf"started .*\): two runs writing one folder would resume and "
                                                rf"overwrite each other's checkpoints"):
            bp.train.fit(model, loss, opt, params, data, checkpoint_path=str(path), checkpoint_every=5, **kw)
        run.send()
        temp = Path(run.expect("inside"))  # the save of step 10, flushed and synced, not yet renamed
        assert temp.parent == path and temp.name.startswith(".step_00000010.npz.tmp-")
        run.kill()
    finally:
        run.kill()
    assert sorted(p.name for p in path.iterdir()) == sorted(["LOCK", "step_00000005.npz", temp.name])
    with pytest.warns(bp.checkpoint.StaleLockWarning, match=rf"locked by a process that no longer runs \({holder}"):
        resumed = bp.train.fit(model, loss, opt, params, data, checkpoint_path=str(path), checkpoint_every=5, **kw)
    _equal(resumed.params, full.params)  # resumed from step 5: the same run
    _equal(resumed.opt_state, full.opt_state)
    # the stray temporary file is gone, the lock released, the newest three entries kept
    assert sorted(p.name for p in path.iterdir()) == ["step_00000010.npz", "step_00000015.npz", "step_00000020.npz"]


def _small():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(32, 4)).astype(np.float32)
    y = (x @ rng.normal(size=(4, 3))).argmax(-1).astype(np.int32)
    model = bp.serial(bp.layers.Dense(3))
    _, p0 = model.init(jax.random.key(0), (4,))
    return model, p0, (x, y)


MODEL, P0, DATA = _small()
SGD = optax.sgd(0.1)  # one optimizer object: the runs below share one compiled program


def _fit(path, steps=8, **kw):
    return bp.train.fit(MODEL, bp.losses.softmax_cross_entropy, SGD, P0, DATA, steps=steps, batch_size=8,
                        verbose=False, checkpoint_path=str(path), checkpoint_every=2, **kw)


def test_retention_keeps_the_newest_and_skips_a_damaged_one(tmp_path):
    path = tmp_path / "run"
    full = _fit(path, keep_checkpoints=2)
    assert sorted(p.name for p in path.iterdir()) == ["step_00000006.npz", "step_00000008.npz"]
    newest = path / "step_00000008.npz"
    newest.write_bytes(newest.read_bytes()[:-100])  # truncated on disk after the run
    with pytest.warns(folder.DamagedCheckpointWarning, match=r"skipped the damaged checkpoint .*step_00000008.npz' "
                                                             r"\(corrupted or truncated .*\); using "
                                                             r"step_00000006.npz \(step 6\)"):
        assert bp.train.resume_step(path) == 6
    with pytest.warns(folder.DamagedCheckpointWarning):
        resumed = _fit(path, keep_checkpoints=2)  # from step 6: its last two steps again
    _equal(resumed.params, full.params)
    with pytest.warns(bp.checkpoint.PlainTreeWarning):  # a run folder reads as its newest entry
        assert bp.checkpoint.restore(path)["step"] == 8
    assert bp.checkpoint.read_metadata(path)["metadata"]["step"] == 8


def test_a_bad_folder_is_refused_before_the_first_step(tmp_path):
    steps = []
    for bad, fragment in [(tmp_path / "missing" / "run", "expected its parent folder to exist"),
                          (Path("/proc/bpjax-run"), "expected a folder this process can write checkpoints to")]:
        with pytest.raises(bp.BpjaxError, match=fragment):
            _fit(bad, callback=lambda s, r: steps.append(s))
    assert steps == []  # refused before any step ran


def test_temporary_files_of_unfinished_saves_are_removed_by_the_next_run(tmp_path):
    path = tmp_path / "run"
    path.mkdir()
    stray = [path / ".step_00000004.npz.tmp-123-0123456789abcdef", path / ".probe.tmp-9-fedcba9876543210"]
    for s in stray:
        s.write_bytes(b"partial")
    _fit(path, steps=2)
    assert sorted(p.name for p in path.iterdir()) == ["step_00000002.npz"]


def test_a_lock_of_a_live_process_is_never_taken(tmp_path):
    path = tmp_path / "run"
    path.mkdir()
    lock = folder.acquire(str(path), "test")
    try:
        with pytest.raises(bp.BpjaxError, match="is held by another fit call of this process"):
            _fit(path, steps=2)
    finally:
        folder.release(str(path), lock)
    assert not (path / "LOCK").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a free folder: no warning
        _fit(path, steps=2)
