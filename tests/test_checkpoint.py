"""Checkpoints: exact round trips, deterministic bytes, integrity checks, no pickle, clear errors for bad input,
plain trees named when restored without `like`, unique temporary files, and atomic saves under SIGKILL."""

import collections
import io
import os
import select
import signal
import subprocess
import sys
import time
import types
import warnings
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import assert_bitwise_equal, bits

import bpjax as bp
from bpjax import checkpoint

REPO = Path(bp.__file__).resolve().parents[1]


def _model():
    return bp.serial(bp.layers.Dense(8), bp.layers.Relu(), bp.layers.Dense(3))


@jax.jit
def _train_arrays(seed):
    model = _model()
    _, params = model.init(jax.random.key(seed), (5,))
    opt_state = optax.adam(1e-2).init(params)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.1), params)
    _, opt_state = optax.adam(1e-2).update(grads, opt_state, params)  # non-trivial moments, count 1
    state = {"running_mean": jnp.arange(8.0), "feedback": jax.random.normal(jax.random.key(7), (8, 3))}
    return {"params": params, "opt_state": opt_state, "state": state, "key": jax.random.key(seed + 1),
            "raw_key": jax.random.PRNGKey(3), "half": jnp.linspace(0, 1, 5, dtype=jnp.bfloat16)}


def _train_tree(seed=0):
    """Params, Adam state, a layer-state-like tree, step, typed key, bfloat16 and Python numbers. The arrays come
    from one compiled program (eagerly, each draw and optax operation compiles on its own)."""
    return {**_train_arrays(seed), "step": 12, "lr": 0.25, "done": False, "nothing": None}


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
    with pytest.warns(checkpoint.PlainTreeWarning) as record:
        out = checkpoint.restore(tmp_path / "ck.npz")
    assert len(record) == 1
    for fragment in ["without `like`, 2 saved container(s) come back as plain dicts/lists",
                     "['opt_state'][0] (ScaleByAdamState -> dict)", "['opt_state'][1] (EmptyState -> dict)",
                     "'dict' object has no attribute 'mu'", "like=optimizer.init(params)"]:
        assert fragment in str(record[0].message)
    adam = out["opt_state"][0]
    assert isinstance(adam, dict) and set(adam) == {"count", "mu", "nu"}  # NamedTuple -> dict of fields
    assert out["params"][1] == () and out["nothing"] is None and out["step"] == 12 and out["done"] is False
    assert_bitwise_equal(out["params"], tree["params"])
    assert_bitwise_equal(adam["mu"], tree["opt_state"][0].mu)
    assert bits(out["key"]) == bits(tree["key"])
    assert bits(out["half"]) == bits(tree["half"])
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
        "key vs array": (lambda t: {**t, "key": jnp.zeros(())}, ["['key']", "expected a float32[] array",
                                                                  "found a typed PRNG key key<fry>[]"]),
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
    ({"w": jnp.ones(2)}, {"f": jnp.ones(2)}, ["metadata['f']: expected a JSON value", "got ArrayImpl", "float(x)"]),
    ({"w": jnp.ones(2)}, {"x": float("nan")}, ["metadata['x']: expected a finite number", "got nan"]),
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


# ---------------------------------------------------------------- ordinary mistakes at every entry point

E, T = bp.BpjaxError, bp.BpjaxTypeError


def _small_tree():
    return {"w": jnp.ones(3), "key": jax.random.key(0), "raw": jax.random.PRNGKey(0), "lr": 0.5, "n": 3}


def _donated():
    x = jnp.ones(3)
    jax.jit(lambda a: a + 1, donate_argnums=0)(x)  # x's buffer now belongs to the output
    return x


def _file_object(path):
    with open(path, "rb") as f:
        return checkpoint.restore(f)


# (case, call(tmp_path, path of a saved _small_tree), error type, place, fragments of the message)
_MISTAKES = [
    # ---- save: the path
    ("save path None", lambda t, p: checkpoint.save(None, {"w": jnp.ones(2)}), T, "checkpoint.save",
     ["path: expected a file path (str or os.PathLike)", "got None"]),
    ("save path int", lambda t, p: checkpoint.save(123, {"w": jnp.ones(2)}), T, "checkpoint.save",
     ["path: expected a file path", "got 123"]),
    ("save arguments swapped", lambda t, p: checkpoint.save({"w": jnp.ones(2)}, t / "ck.npz"), T, "checkpoint.save",
     ["path: expected a file path", "got dict", "arguments look swapped: it is save(path, tree)"]),
    ("save path empty", lambda t, p: checkpoint.save("", {"w": jnp.ones(2)}), E, "checkpoint.save",
     ["path: expected a file path", "got an empty string"]),
    ("save path trailing slash", lambda t, p: checkpoint.save(f"{t}/new/", {"w": jnp.ones(2)}), E,
     "checkpoint.save(", ["expected a file path", "got a directory path (it ends with a separator)"]),
    ("save path is a directory", lambda t, p: checkpoint.save(t, {"w": jnp.ones(2)}), E, "checkpoint.save(",
     ["expected a file path, got a directory"]),
    ("save parent is a file", lambda t, p: checkpoint.save(Path(p) / "ck.npz", {"w": jnp.ones(2)}), E,
     "checkpoint.save(", ["expected an existing directory", "ck.npz' is a file"]),
    ("save path with ~", lambda t, p: checkpoint.save("~/no-such-dir-bpjax/ck.npz", {"w": jnp.ones(2)}), E,
     "checkpoint.save(~/no-such-dir-bpjax/ck.npz)", ["expected an existing directory", "does not exist",
                                                     "'~' is not expanded: pass os.path.expanduser(path)"]),
    ("save name too long", lambda t, p: checkpoint.save(t / ("a" * 300), {"w": jnp.ones(2)}), E, "checkpoint.save(",
     ["could not write the checkpoint", "OSError", "File name too long"]),
    # ---- save: the tree
    ("save a str as the tree", lambda t, p: checkpoint.save(t / "ck.npz", "run 1"), T, "checkpoint.save(",
     ["leaf (the whole tree): expected an array, PRNG key or Python number", "got str", "metadata="]),
    ("save an object", lambda t, p: checkpoint.save(t / "ck.npz", {"o": object()}), T, "checkpoint.save(",
     ["leaf ['o']: expected an array, PRNG key or Python number", "got object"]),
    ("save the model", lambda t, p: checkpoint.save(t / "ck.npz", _model()), T, "checkpoint.save(",
     ["leaf .init: expected an array", "got function", "not the model or optimizer"]),
    ("save the optimizer", lambda t, p: checkpoint.save(t / "ck.npz", {"opt": optax.adam(1e-3)}), T,
     "checkpoint.save(", ["leaf ['opt'].init: expected an array", "got function", "not the model or optimizer"]),
    ("save a complex number", lambda t, p: checkpoint.save(t / "ck.npz", {"c": 1 + 2j}), T, "checkpoint.save(",
     ["leaf ['c']: expected an array, PRNG key or Python number", "got complex"]),
    ("save an int beyond int64", lambda t, p: checkpoint.save(t / "ck.npz", {"step": 2 ** 70}), E,
     "checkpoint.save(", ["leaf ['step']: expected a Python int in int64's range", "got 1180591620717411303424"]),
    ("save a str array", lambda t, p: checkpoint.save(t / "ck.npz", {"s": np.array(["a", "b"])}), T,
     "checkpoint.save(", ["leaf ['s']: dtype <U1 cannot be saved without pickle"]),
    ("save a float0 gradient", lambda t, p: checkpoint.save(t / "ck.npz", {"g": np.zeros(3, jax.dtypes.float0)}), T,
     "checkpoint.save(", ["leaf ['g']: dtype [('float0', 'V')] cannot be saved without pickle"]),
    ("save inside jit", lambda t, p: jax.jit(lambda x: (checkpoint.save(t / "ck.npz", {"x": x}), x)[1])(jnp.ones(2)),
     T, "checkpoint.save(", ["leaf ['x']: expected a concrete array", "got a traced value", "outside jax.jit"]),
    ("save a donated array", lambda t, p: checkpoint.save(t / "ck.npz", {"x": _donated()}), E, "checkpoint.save(",
     ["leaf ['x']: expected a live array", "deleted or donated", "make_step(donate=True)"]),
    # ---- save: metadata and model
    ("metadata numpy int", lambda t, p: checkpoint.save(t / "ck.npz", {"w": jnp.ones(2)}, metadata={"n": np.int64(3)}),
     T, "checkpoint.save(", ["metadata['n']: expected a JSON value", "got int64", "int(x)"]),
    ("metadata nested set", lambda t, p: checkpoint.save(t / "ck.npz", {"w": jnp.ones(2)},
                                                         metadata={"run": {"tags": {"a"}}}),
     T, "checkpoint.save(", ["metadata['run']['tags']: expected a JSON value", "got set"]),
    ("metadata inf in a list", lambda t, p: checkpoint.save(t / "ck.npz", {"w": jnp.ones(2)},
                                                            metadata={"losses": [0.5, float("inf")]}),
     E, "checkpoint.save(", ["metadata['losses'][1]: expected a finite number (JSON has no nan or inf)", "got inf"]),
    ("metadata int key", lambda t, p: checkpoint.save(t / "ck.npz", {"w": jnp.ones(2)}, metadata={1: "a"}), T,
     "checkpoint.save(", ["metadata: expected str keys", "read 1 back as '1'", "got the int key 1"]),
    ("metadata a str", lambda t, p: checkpoint.save(t / "ck.npz", {"w": jnp.ones(2)}, metadata="run 1"), T,
     "checkpoint.save(", ["metadata: expected a dict, got str"]),
    ("model params", lambda t, p: checkpoint.save(t / "ck.npz", {"w": jnp.ones(2)}, model={"w": jnp.ones(2)}), T,
     "checkpoint.save(", ["model: expected a bp.Layer or a description str", "got dict"]),
    ("model int", lambda t, p: checkpoint.save(t / "ck.npz", {"w": jnp.ones(2)}, model=3), T, "checkpoint.save(",
     ["model: expected a bp.Layer or a description str", "got int"]),
    # ---- restore and read_metadata: the path
    ("restore None", lambda t, p: checkpoint.restore(None), T, "checkpoint.restore",
     ["path: expected a file path (str or os.PathLike)", "got None"]),
    ("restore int", lambda t, p: checkpoint.restore(123), T, "checkpoint.restore", ["path: expected", "got 123"]),
    ("restore a file object", lambda t, p: _file_object(p), T, "checkpoint.restore",
     ["path: expected a file path", "got BufferedReader"]),
    ("restore empty path", lambda t, p: checkpoint.restore(""), E, "checkpoint.restore",
     ["path: expected a file path", "got an empty string"]),
    ("restore without the suffix", lambda t, p: checkpoint.restore(p[:-4]), E, "checkpoint.restore(",
     ["no such file: expected a checkpoint", "ck.npz' exists (save adds no suffix)"]),
    ("restore path with ~", lambda t, p: checkpoint.restore("~/no-such-dir-bpjax/ck.npz"), E, "checkpoint.restore(",
     ["no such file", "'~' is not expanded"]),
    ("read_metadata None", lambda t, p: checkpoint.read_metadata(None), T, "checkpoint.read_metadata",
     ["path: expected a file path", "got None"]),
    ("read_metadata int", lambda t, p: checkpoint.read_metadata(7), T, "checkpoint.read_metadata",
     ["path: expected a file path", "got 7"]),
    ("read_metadata directory", lambda t, p: checkpoint.read_metadata(t), E, "checkpoint.read_metadata(",
     ["expected a checkpoint file, got a directory"]),
    ("read_metadata missing", lambda t, p: checkpoint.read_metadata(t / "none.npz"), E, "checkpoint.read_metadata(",
     ["none.npz", "no such file: expected a checkpoint written by bp.checkpoint.save"]),
    # ---- restore: like
    ("like holds a str", lambda t, p: checkpoint.restore(p, like={**_small_tree(), "lr": "0.5"}), T,
     "checkpoint.restore(", ["like: leaf ['lr']: expected an array, jax.ShapeDtypeStruct, PRNG key or Python "
                             "number", "got str"]),
    ("like is the optimizer", lambda t, p: checkpoint.restore(p, like=optax.adam(1e-3)), T, "checkpoint.restore(",
     ["like: leaf .init", "got function", "like=optimizer.init(params), not the optimizer"]),
    ("like int for an array", lambda t, p: checkpoint.restore(p, like={**_small_tree(), "w": 1}), T,
     "checkpoint.restore(", ["leaf ['w']: expected a Python int (as in `like`)", "found a float32[3] array"]),
    ("like int for a float", lambda t, p: checkpoint.restore(p, like={**_small_tree(), "lr": 1}), T,
     "checkpoint.restore(", ["leaf ['lr']: expected a Python int (as in `like`)", "found a Python float"]),
    ("like array for a float", lambda t, p: checkpoint.restore(p, like={**_small_tree(), "lr": jnp.float32(0.5)}), T,
     "checkpoint.restore(", ["leaf ['lr']: expected a float32[] array (as in `like`)", "found a Python float"]),
    ("like raw key for a typed key", lambda t, p: checkpoint.restore(p, like={**_small_tree(),
                                                                              "key": jax.random.PRNGKey(1)}),
     T, "checkpoint.restore(", ["leaf ['key']: expected a uint32[2] array (as in `like`)",
                                "found a typed PRNG key key<fry>[]", "take jax.random.key_data of the result"]),
    ("like typed key for a raw key", lambda t, p: checkpoint.restore(p, like={**_small_tree(),
                                                                              "raw": jax.random.key(1)}),
     T, "checkpoint.restore(", ["leaf ['raw']: expected a typed PRNG key key<fry>[] (as in `like`)",
                                "found a uint32[2] array", "jax.random.wrap_key_data"]),
    ("like key of another impl", lambda t, p: checkpoint.restore(p, like={**_small_tree(),
                                                                          "key": jax.random.key(1, impl="rbg")}),
     E, "checkpoint.restore(", ["leaf ['key']: expected key<rbg>[] (as in `like`)", "found key<fry>[]"]),
    ("like params only", lambda t, p: checkpoint.restore(p, like={"w": jnp.ones(3)}), E, "checkpoint.restore(",
     ["does not match `like`: expected 1 leaves, found 5", "in the file only: ['key'] ['lr'] ['n'] ['raw']"]),
]


@pytest.mark.parametrize("call, error, place, fragments", [c[1:] for c in _MISTAKES], ids=[c[0] for c in _MISTAKES])
def test_ordinary_mistakes_give_clear_errors(tmp_path, call, error, place, fragments):
    saved = checkpoint.save(tmp_path / "ck.npz", _small_tree())
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(bp.BpjaxError) as e:
        call(tmp_path, saved)
    assert type(e.value) is error, e.value
    assert e.value.where.startswith(place), e.value
    for fragment in fragments:
        assert fragment in str(e.value), (fragment, str(e.value))
    assert sorted(os.listdir(tmp_path)) == before  # a refused save writes nothing, not even a temporary file


def test_unreadable_file_is_not_called_corrupted(tmp_path, monkeypatch):
    path = checkpoint.save(tmp_path / "ck.npz", {"w": jnp.ones(2)})

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(checkpoint.reading, "open", denied, raising=False)  # module-level name: only checkpoint's reads
    for fn in (checkpoint.restore, checkpoint.read_metadata):
        with pytest.raises(bp.BpjaxError) as e:
            fn(path)
        assert "expected a readable file, got PermissionError: Permission denied" in str(e.value)
        assert str(path) in e.value.where and "corrupted" not in str(e.value)


def test_accepted_paths_and_trees(tmp_path):
    """Inputs accepted on purpose: bytes and PathLike paths, empty and None trees, tuples in metadata."""
    tree = {"w": jnp.arange(3.0)}
    assert checkpoint.save(os.fsencode(tmp_path / "b.npz"), tree) == str(tmp_path / "b.npz")
    assert_bitwise_equal(checkpoint.restore(os.fsencode(tmp_path / "b.npz")), tree)
    for empty in ({}, None, ()):
        checkpoint.save(tmp_path / "e.npz", empty)
        assert checkpoint.restore(tmp_path / "e.npz") == empty
    checkpoint.save(tmp_path / "m.npz", tree, metadata={"shape": (5, 2), "lr": np.float64(0.1)})
    assert checkpoint.read_metadata(tmp_path / "m.npz")["metadata"] == {"shape": [5, 2], "lr": 0.1}


# ---------------------------------------------------------------- restored without `like`: plain trees, named


def test_optimizer_state_needs_like_to_train(tmp_path):
    """Without `like` an optax state is a dict and optax refuses it; with like=optimizer.init(params) it trains."""
    model, optimizer = _model(), optax.adam(1e-2)
    _, params = model.init(jax.random.key(0), (5,))
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.1), params)
    _, opt_state = optimizer.update(grads, optimizer.init(params), params)
    path = checkpoint.save(tmp_path / "ck.npz", {"params": params, "opt_state": opt_state, "step": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("error", checkpoint.PlainTreeWarning)  # the way to make it an error
        with pytest.raises(checkpoint.PlainTreeWarning, match=r"\['opt_state'\]\[0\] \(ScaleByAdamState -> dict\)"):
            checkpoint.restore(path)
        params_only = checkpoint.save(tmp_path / "params.npz", params)
        assert_bitwise_equal(checkpoint.restore(params_only), params)  # dicts and tuples only: no warning
    with pytest.warns(checkpoint.PlainTreeWarning):
        plain = checkpoint.restore(path)
    with pytest.raises(AttributeError, match="'dict' object has no attribute 'mu'"):  # what the warning foretells
        optimizer.update(grads, plain["opt_state"], plain["params"])
    back = checkpoint.restore(path, like={"params": params, "opt_state": optimizer.init(params), "step": 0})
    assert back["step"] == 1
    assert_bitwise_equal(optimizer.update(grads, back["opt_state"], back["params"]),
                         optimizer.update(grads, opt_state, params))


def test_ordered_dict_keeps_its_keys(tmp_path):
    tree = collections.OrderedDict([("z", jnp.ones(2)), ("a", jnp.zeros(3))])
    checkpoint.save(tmp_path / "ck.npz", tree)
    with pytest.warns(checkpoint.PlainTreeWarning, match=r"\(the whole tree\) \(OrderedDict -> dict\)"):
        plain = checkpoint.restore(tmp_path / "ck.npz")
    assert type(plain) is dict and bits(plain["z"]) == bits(tree["z"]) and bits(plain["a"]) == bits(tree["a"])
    assert_bitwise_equal(checkpoint.restore(tmp_path / "ck.npz", like=tree), tree)


# ---------------------------------------------------------------- temporary files: unique, exclusive, never read


def test_a_temporary_name_in_use_is_never_opened(tmp_path, monkeypatch):
    """Two writers drawing the same temporary name (same pid on two hosts, say): the second draws again."""
    taken = f".ck.npz.tmp-{os.getpid()}-{'0' * 16}"
    (tmp_path / taken).write_bytes(b"another writer's partial file")
    draws = iter(["0" * 16, "0" * 16, "1" * 16])
    monkeypatch.setattr(checkpoint.atomic, "secrets", types.SimpleNamespace(token_hex=lambda n: next(draws)))
    checkpoint.save(tmp_path / "ck.npz", {"w": jnp.ones(2)})
    assert (tmp_path / taken).read_bytes() == b"another writer's partial file"
    assert sorted(os.listdir(tmp_path)) == [taken, "ck.npz"]
    assert_bitwise_equal(checkpoint.restore(tmp_path / "ck.npz"), {"w": jnp.ones(2)})
    monkeypatch.setattr(checkpoint.atomic, "secrets", types.SimpleNamespace(token_hex=lambda n: "0" * 16))
    with pytest.raises(bp.BpjaxError, match="expected a free temporary file name in .*, found 16 taken"):
        checkpoint.save(tmp_path / "ck.npz", {"w": jnp.zeros(2)})
    assert sorted(os.listdir(tmp_path)) == [taken, "ck.npz"]


def test_restore_never_reads_a_temporary_file(tmp_path):
    path = tmp_path / "ck.npz"
    stray = tmp_path / f".ck.npz.tmp-{os.getpid()}-{'ab' * 8}"
    checkpoint.save(stray, {"w": jnp.ones(2)})  # a whole checkpoint under a temporary name: still refused
    for fn in (checkpoint.restore, checkpoint.read_metadata):
        with pytest.raises(bp.BpjaxError) as e:
            fn(stray)
        assert "expected a checkpoint, got the temporary file of a save" in str(e.value)
        assert f"restore {str(path)!r}" in str(e.value)
        with pytest.raises(bp.BpjaxError) as e:  # only temporary files there: the checkpoint is missing
            fn(path)
        assert "no such file" in str(e.value) and "1 temporary file(s) of unfinished saves" in str(e.value)


# ---------------------------------------------------------------- atomicity under SIGKILL, with real processes

_WRITER = r'''
"""A checkpoint writer driven over stdin. With a pause armed it reports "inside <temporary file>" from
within a save and waits for a line on stdin: the test SIGKILLs it there, or answers "go"."""
import os, sys, zipfile
import jax, numpy as np
from bpjax import checkpoint

pause = [None]  # "member": before the last array member is written; "rename": after the fsync, before os.replace

def report(line):
    os.write(1, (line + "\n").encode())

def hold(tmp):
    report(f"inside {tmp}")
    sys.stdin.readline()

real_writestr, real_replace = zipfile.ZipFile.writestr, os.replace

def writestr(self, info, data, *args, **kwargs):
    if pause[0] == "member" and getattr(info, "filename", info) == "leaf_00003.npy":
        self.fp.flush()  # the three members so far reach the file: a partly written temporary file
        hold(self.fp.name)
    return real_writestr(self, info, data, *args, **kwargs)

def replace(src, dst, *args, **kwargs):
    if pause[0] == "rename":
        hold(src)
    return real_replace(src, dst, *args, **kwargs)

zipfile.ZipFile.writestr, os.replace = writestr, replace  # in this process only

def save(path, step):  # leaves in order: b, key, step, w (4 MB)
    checkpoint.save(path, {"w": np.full(1_000_000, step, np.float32), "b": np.arange(1000) + step,
                           "step": step, "key": jax.random.key(step)}, metadata={"step": step})

save("warm.npz", 0)
report("ready")
while True:
    cmd, path, step, *how = sys.stdin.readline().split()
    step = int(step)
    if cmd == "loop":
        report("looping")
        while True:
            step += 1
            save(path, step)
    pause[0] = how[0] if how else None
    save(path, step)
    report(f"saved {step}")
'''


def _tree_of_step(step):
    return {"w": np.full(1_000_000, step, np.float32), "b": np.arange(1000) + step, "step": step,
            "key": jax.random.key(step)}


def _check_consistent(path):
    """The checkpoint loads, and it is exactly one of the trees the writer wrote (all parts of one step)."""
    out = checkpoint.restore(path)
    step = out["step"]
    assert checkpoint.read_metadata(path)["metadata"] == {"step": step}
    assert out["w"].shape == (1_000_000,) and bool(jnp.all(out["w"] == step))
    np.testing.assert_array_equal(np.asarray(out["b"]), np.arange(1000) + step)
    assert bits(out["key"]) == bits(jax.random.key(step))
    return step


class _Writer:
    """One writer process (``_WRITER``) and the line protocol to drive it."""

    def __init__(self, directory: Path):
        directory.mkdir()
        self.stderr = directory / "stderr.txt"
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
        with self.stderr.open("wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-c", _WRITER], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=err, bufsize=0, cwd=directory, env=env)
        self.pid, self.ready = self.proc.pid, False

    def send(self, *words):
        self.proc.stdin.write((" ".join(map(str, words)) + "\n").encode())

    def expect(self, word: str, timeout: float = 120.0) -> str:
        """The rest of the writer's next line, which must start with ``word``."""
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode().strip() if ready else "(nothing)"
        assert line.startswith(word), f"writer said {line!r}, expected {word!r}; its stderr:\n" + \
            self.stderr.read_text()[-3000:]
        return line[len(word):].strip()

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        assert self.proc.returncode == -signal.SIGKILL

    def close(self):
        if self.proc.poll() is None:
            self.kill()
        self.proc.stdin.close()
        self.proc.stdout.close()


# writers each SIGKILL test takes, and gives back alive for a later test
_WRITERS_USED = {"test_sigkill_inside_a_save_leaves_the_previous_checkpoint": (1, 0),
                 "test_sigkill_one_of_two_writers_before_its_rename": (2, 1),
                 "test_sigkill_at_a_random_moment_never_breaks_the_checkpoint": (1, 0)}


def _writers_to_start(names):
    """How many writers the tests ``names`` need, run in this order, when given-back ones are reused."""
    started = free = 0
    for taken, given_back in (_WRITERS_USED[n] for n in names if n in _WRITERS_USED):
        started += max(0, taken - free)
        free = max(0, free - taken) + given_back
    return started


class _WriterPool:
    """Writer processes for the selected SIGKILL tests, all started at once when the module's first test
    runs (each spends seconds importing jax: they do it in parallel, beside the in-process tests)."""

    def __init__(self, root: Path, count: int):
        self.root, self.started = root, []
        self.free = [self._start() for _ in range(count)]

    def _start(self):
        self.started.append(_Writer(self.root / f"w{len(self.started)}"))
        return self.started[-1]

    def take(self, n):
        while len(self.free) < n:  # more than announced (a test failed before giving one back)
            self.free.append(self._start())
        taken, self.free = self.free[:n], self.free[n:]
        for w in taken:
            if not w.ready:
                w.expect("ready")
                w.ready = True
        return taken

    def give_back(self, writer):
        self.free.append(writer)

    def close(self):
        for w in self.started:
            w.close()


@pytest.fixture(scope="module", autouse=True)
def writers(request, tmp_path_factory):
    names = [getattr(item, "originalname", item.name) for item in request.session.items
             if item.module is sys.modules[__name__]]
    count = _writers_to_start(names)
    pool = _WriterPool(tmp_path_factory.mktemp("writers") if count else Path(), count)
    yield pool
    pool.close()


def test_sigkill_inside_a_save_leaves_the_previous_checkpoint(tmp_path, writers):
    """SIGKILL while the temporary file is partly written: the checkpoint is the previous whole tree."""
    (w,) = writers.take(1)
    path = tmp_path / "ck.npz"
    w.send("save", path, 1)
    assert w.expect("saved") == "1"
    w.send("save", path, 2, "member")
    tmp = Path(w.expect("inside"))
    assert tmp.parent == tmp_path and tmp.name.startswith(f".ck.npz.tmp-{w.pid}-")
    assert tmp.stat().st_size > 8000 and not zipfile.is_zipfile(tmp)  # b, key, step written; no w, no directory
    assert _check_consistent(path) == 1  # a reader meanwhile sees the previous checkpoint
    w.kill()
    assert _check_consistent(path) == 1  # all of step 1: no leaf of step 2
    assert sorted(os.listdir(tmp_path)) == sorted(["ck.npz", tmp.name])  # the stray temporary file, never read
    partial = tmp.read_bytes()
    checkpoint.save(path, _tree_of_step(3), metadata={"step": 3})  # the next save leaves the stray alone
    assert _check_consistent(path) == 3 and tmp.read_bytes() == partial


def test_sigkill_one_of_two_writers_before_its_rename(tmp_path, writers):
    """Two processes save to one path at once, each paused after its fsync: distinct temporary files; one is
    killed there, the other renames; the checkpoint is always one whole tree."""
    a, b = writers.take(2)
    path = tmp_path / "ck.npz"
    checkpoint.save(path, _tree_of_step(0), metadata={"step": 0})
    a.send("save", path, 1, "rename")
    b.send("save", path, 2, "rename")
    tmp_a, tmp_b = Path(a.expect("inside")), Path(b.expect("inside"))
    assert tmp_a.name.startswith(f".ck.npz.tmp-{a.pid}-") and tmp_b.name.startswith(f".ck.npz.tmp-{b.pid}-")
    assert zipfile.is_zipfile(tmp_a) and zipfile.is_zipfile(tmp_b)  # both whole, neither renamed yet
    assert _check_consistent(path) == 0
    a.kill()
    assert _check_consistent(path) == 0
    b.send("go")
    assert b.expect("saved") == "2"
    assert _check_consistent(path) == 2
    assert sorted(os.listdir(tmp_path)) == sorted(["ck.npz", tmp_a.name])  # a's file stays, untouched by b
    writers.give_back(b)


def test_sigkill_at_a_random_moment_never_breaks_the_checkpoint(tmp_path, writers):
    """A writer saving in a loop, killed after a random delay: the file loads and is one whole tree."""
    (w,) = writers.take(1)
    path = tmp_path / "ck.npz"
    checkpoint.save(path, _tree_of_step(0), metadata={"step": 0})
    delay = float(np.random.default_rng().uniform(0.05, 0.5))
    w.send("loop", path, 0)
    w.expect("looping")
    time.sleep(delay)
    w.kill()
    temps = [n for n in os.listdir(tmp_path) if n != "ck.npz"]
    assert len(temps) <= 1 and all(n.startswith(f".ck.npz.tmp-{w.pid}-") for n in temps), (delay, temps)
    assert _check_consistent(path) >= 0, delay
