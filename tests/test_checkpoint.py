"""Checkpoints: exact round trips, deterministic bytes, integrity checks, no pickle, and atomic saves under SIGKILL."""

import io
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bpjax as bp
from bpjax import checkpoint

REPO = Path(bp.__file__).resolve().parents[1]


def _model():
    return bp.serial(bp.layers.Dense(8), bp.layers.Relu(), bp.layers.Dense(3))


def _train_tree(seed=0):
    """Params, Adam state, a layer-state-like tree, step, typed key, bfloat16 and Python numbers."""
    model = _model()
    _, params = model.init(jax.random.key(seed), (5,))
    opt_state = optax.adam(1e-2).init(params)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.1), params)
    _, opt_state = optax.adam(1e-2).update(grads, opt_state, params)  # non-trivial moments, count 1
    state = {"running_mean": jnp.arange(8.0), "feedback": jax.random.normal(jax.random.key(7), (8, 3))}
    return {"params": params, "opt_state": opt_state, "state": state, "step": 12, "key": jax.random.key(seed + 1),
            "raw_key": jax.random.PRNGKey(3), "half": jnp.linspace(0, 1, 5, dtype=jnp.bfloat16),
            "lr": 0.25, "done": False, "nothing": None}


def _bits(x):
    """A leaf as bytes + dtype + shape: equality of these is bitwise equality."""
    if hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return ("key", str(jax.random.key_impl(x)), np.asarray(jax.random.key_data(x)).tobytes(), x.shape)
    if isinstance(x, (bool, int, float)):
        return (type(x).__name__, x)
    a = np.asarray(x)
    return (str(a.dtype), a.shape, a.tobytes())


def assert_bitwise_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        assert _bits(x) == _bits(y), jax.tree_util.keystr(path)


def test_round_trip_with_like_is_bitwise_exact(tmp_path):
    tree = _train_tree()
    path = checkpoint.save(tmp_path / "ck.npz", tree, metadata={"run": "a", "epochs": 3}, model=_model())
    assert path == str(tmp_path / "ck.npz")
    out = checkpoint.restore(path, like=_train_tree(seed=5))  # same structure, other values
    assert_bitwise_equal(out, tree)
    assert isinstance(out["opt_state"][0], optax.ScaleByAdamState)  # NamedTuples come back as such
    assert int(out["opt_state"][0].count) == 1
    meta = checkpoint.read_metadata(path)
    assert meta["bpjax_version"] == bp.__version__
    assert meta["model"] == "serial(Dense(8), Relu, Dense(3))"
    assert meta["metadata"] == {"run": "a", "epochs": 3}
    assert [r["path"] for r in meta["leaves"]][:2] == ["['done']", "['half']"]


def test_restore_accepts_shape_dtype_structs(tmp_path):
    tree = _train_tree()
    checkpoint.save(tmp_path / "ck.npz", tree)
    like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype) if isinstance(x, jax.Array) else x, tree)
    assert_bitwise_equal(checkpoint.restore(tmp_path / "ck.npz", like=like), tree)


def test_round_trip_without_like_gives_plain_containers(tmp_path):
    tree = _train_tree()
    checkpoint.save(tmp_path / "ck.npz", tree)
    out = checkpoint.restore(tmp_path / "ck.npz")
    adam = out["opt_state"][0]
    assert isinstance(adam, dict) and set(adam) == {"count", "mu", "nu"}  # NamedTuple -> dict of fields
    assert out["params"][1] == () and out["nothing"] is None and out["step"] == 12 and out["done"] is False
    assert_bitwise_equal(out["params"], tree["params"])
    assert_bitwise_equal(adam["mu"], tree["opt_state"][0].mu)
    assert _bits(out["key"]) == _bits(tree["key"])
    assert _bits(out["half"]) == _bits(tree["half"])
    assert out["opt_state"][1] == {}  # optax EmptyState has no fields


def test_same_tree_same_bytes_and_plain_npz(tmp_path):
    tree = _train_tree()
    a, b = checkpoint.save(tmp_path / "a.npz", tree), checkpoint.save(tmp_path / "b.npz", tree)
    assert Path(a).read_bytes() == Path(b).read_bytes()
    checkpoint.save(tmp_path / "c.npz", _train_tree(seed=1))
    assert Path(a).read_bytes() != (tmp_path / "c.npz").read_bytes()
    with np.load(a, allow_pickle=False) as z:  # an ordinary npz: numpy reads it without pickle
        arrays = [z[k] for k in z.files if k.startswith("leaf_")]
    assert len(arrays) == len(jax.tree.leaves(tree))
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind


def test_float64_round_trip(tmp_path):
    with jax.enable_x64(True):
        tree = {"w": jnp.linspace(0, 1, 7, dtype=jnp.float64) / 3, "i": jnp.arange(4, dtype=jnp.int64)}
        checkpoint.save(tmp_path / "ck.npz", tree)
        assert_bitwise_equal(checkpoint.restore(tmp_path / "ck.npz", like=tree), tree)


# ---------------------------------------------------------------- mismatches against `like`


def _mismatch_cases():
    model2 = bp.serial(bp.layers.Dense(4), bp.layers.Dense(3))
    _, other_params = model2.init(jax.random.key(0), (5,))
    return {
        "shape": (lambda t: {**t, "state": {**t["state"], "running_mean": jnp.zeros(9)}},
                  ["['state']['running_mean']", "float32[9]", "float32[8]"]),
        "dtype": (lambda t: {**t, "lr": 0.25, "half": jnp.zeros(5, jnp.float16)},
                  ["['half']", "float16[5]", "bfloat16[5]"]),
        "other model": (lambda t: {**t, "params": other_params}, ["in `like` only", "in the file only"]),
        "missing leaf": (lambda t: {k: v for k, v in t.items() if k != "step"}, ["expected 20 leaves", "found 21",
                                                                                 "in the file only: ['step']"]),
        "key vs array": (lambda t: {**t, "key": jnp.zeros(())}, ["['key']", "expected a array", "found a key"]),
    }


@pytest.mark.parametrize("case", list(_mismatch_cases()))
def test_restore_mismatch_names_leaf_expected_and_found(tmp_path, case):
    tree = _train_tree()
    path = checkpoint.save(tmp_path / "ck.npz", tree)
    change, fragments = _mismatch_cases()[case]
    with pytest.raises(bp.BpjaxError) as e:
        checkpoint.restore(path, like=change(tree))
    for fragment in [str(path), *fragments]:
        assert fragment in str(e.value)


# ---------------------------------------------------------------- damaged and foreign files


def _damage(kind, path: Path):
    data = path.read_bytes()
    if kind == "truncated half":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "truncated tail":
        path.write_bytes(data[:-10])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "flipped byte":  # inside an array member: zip's CRC-32 catches it
        i = data.index(b"\x93NUMPY") + 200
        path.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])
    elif kind == "text file":
        path.write_text("step,loss\n1,0.5\n")
    elif kind == "plain npy":
        np.save(path.open("wb"), np.zeros(3))
    elif kind == "npz without metadata":
        np.savez(path.open("wb"), a=np.zeros(3))
    elif kind == "missing":
        path.unlink()
    elif kind == "directory":
        path.unlink()
        path.mkdir()
    return {"truncated half": "corrupted or truncated", "truncated tail": "corrupted or truncated",
            "empty": "corrupted or truncated", "flipped byte": "corrupted", "text file": "corrupted or truncated",
            "plain npy": "corrupted or truncated", "npz without metadata": "no bpjax.json member",
            "missing": "no such file", "directory": "got a directory"}[kind]


@pytest.mark.parametrize("kind", ["truncated half", "truncated tail", "empty", "flipped byte", "text file",
                                  "plain npy", "npz without metadata", "missing", "directory"])
def test_damaged_file_gives_clear_error(tmp_path, kind):
    path = Path(checkpoint.save(tmp_path / "ck.npz", _train_tree()))
    expected = _damage(kind, path)
    for fn in (lambda: checkpoint.restore(path), lambda: checkpoint.restore(path, like=_train_tree()),
               lambda: checkpoint.read_metadata(path)):
        with pytest.raises(bp.BpjaxError) as e:
            fn()
        assert str(path) in str(e.value) and expected in str(e.value)


def _rewrite_member(path: Path, name: str, data: bytes) -> None:
    """Replace one member, with a correct zip CRC: only the SHA-256 can notice."""
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members[name] = data
    with zipfile.ZipFile(path, "w") as zf:
        for n, d in members.items():
            zf.writestr(n, d)


def test_sha256_catches_consistent_tampering(tmp_path):
    path = Path(checkpoint.save(tmp_path / "ck.npz", {"w": jnp.ones(4)}))
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.array([1, 1, 1, 2], np.float32))
    _rewrite_member(path, "leaf_00000.npy", buf.getvalue())
    with pytest.raises(bp.BpjaxError, match="checksum mismatch.*expected sha256 [0-9a-f]{64}, got [0-9a-f]{64}"):
        checkpoint.restore(path)


class _Trap:
    """Unpickling this would create a file: the test checks that loading never does."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pickled_member_is_never_unpickled(tmp_path):
    path = Path(checkpoint.save(tmp_path / "ck.npz", {"w": jnp.ones(4)}))
    target = tmp_path / "pwned"
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.array([_Trap(str(target))], dtype=object), allow_pickle=True)
    _rewrite_member(path, "leaf_00000.npy", buf.getvalue())
    with pytest.raises(bp.BpjaxError, match=str(path)):
        checkpoint.restore(path)
    assert not target.exists()


@pytest.mark.parametrize("tree, metadata, fragments", [
    ({"w": "a string"}, None, ["['w']", "expected an array, PRNG key or Python number", "got str"]),
    ({"w": np.array([{}], dtype=object)}, None, ["['w']", "dtype object cannot be saved"]),
    ({(1, 2): jnp.ones(2)}, None, ["dict keys must be str or int", "(1, 2)"]),
    ({"w": jnp.ones(2)}, {"f": jnp.ones(2)}, ["JSON-serialisable", "metadata"]),
    ({"w": jnp.ones(2)}, {"x": float("nan")}, ["JSON-serialisable", "nan"]),
    ({"w": jnp.ones(2)}, ["not", "a dict"], ["metadata: expected a dict, got list"]),
])
def test_save_rejects_unsavable_input(tmp_path, tree, metadata, fragments):
    with pytest.raises(bp.BpjaxError) as e:
        checkpoint.save(tmp_path / "ck.npz", tree, metadata=metadata)
    for fragment in [str(tmp_path / "ck.npz"), *fragments]:
        assert fragment in str(e.value)
    assert not list(tmp_path.iterdir())  # nothing written


def test_save_into_missing_directory(tmp_path):
    with pytest.raises(bp.BpjaxError, match="expected an existing directory.*does not exist"):
        checkpoint.save(tmp_path / "nope" / "ck.npz", {"w": jnp.ones(2)})


# ---------------------------------------------------------------- atomicity under SIGKILL

_WRITER = r"""
import sys
import jax, jax.numpy as jnp, numpy as np
from bpjax import checkpoint
path, step = sys.argv[1], int(sys.argv[2])
first = step
while True:
    step += 1
    checkpoint.save(path, {"w": np.full(1_000_000, step, np.float32), "b": np.arange(1000) + step,
                           "step": step, "key": jax.random.key(step)}, metadata={"step": step})
    if step == first + 1:
        print("ready", flush=True)  # after the first save: jax is warm, saves now follow each other
"""


def _check_consistent(path):
    """The checkpoint loads, and it is exactly one of the trees the writer wrote (all parts of one step)."""
    out = checkpoint.restore(path)
    step = out["step"]
    assert checkpoint.read_metadata(path)["metadata"] == {"step": step}
    assert out["w"].shape == (1_000_000,) and bool(jnp.all(out["w"] == step))
    np.testing.assert_array_equal(np.asarray(out["b"]), np.arange(1000) + step)
    assert _bits(out["key"]) == _bits(jax.random.key(step))
    return step


def test_sigkill_during_saves_never_breaks_the_checkpoint(tmp_path):
    """Kill a real writer process at random moments: the file always loads and is one whole tree.

    Each save writes ~4 MB and fsyncs, so most of the writer's time is spent inside ``save`` and
    most kills land mid-save (checked: at least one kill leaves a temporary file behind).
    """
    path = tmp_path / "ck.npz"
    step = 0
    checkpoint.save(path, {"w": np.full(1_000_000, 0, np.float32), "b": np.arange(1000), "step": 0,
                           "key": jax.random.key(0)}, metadata={"step": 0})
    rng = np.random.default_rng(0)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    interrupted = 0
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(step)], stdout=subprocess.PIPE,
                                env=env, cwd=tmp_path)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.1, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
        temps = list(tmp_path.glob(".ck.npz.tmp-*"))
        interrupted += bool(temps)
        new_step = _check_consistent(path)  # stray temporary files do not disturb loading
        assert new_step >= step
        step = new_step
    assert step > 0, "the writer never completed a save"
    assert interrupted >= 1, "no kill landed inside a save"
