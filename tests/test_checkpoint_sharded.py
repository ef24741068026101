"""The sharded checkpoint backend (``backend="orbax"``): exact round trips, the record read without orbax, restores
into a sharding, clear errors for a damaged, partial or foreign directory, a save that fails before its commit,
and the install hint when orbax-checkpoint is missing.

On several processes (a 2-D mesh whose model axis spans 2 real processes) and on 8 simulated devices: the slow
tests at the end (tests/sharded_checkpoint_worker.py).
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import assert_bitwise_equal, normal
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import bpjax as bp
from bpjax import checkpoint
from bpjax.checkpoint import sharded

HAVE_ORBAX = importlib.util.find_spec("orbax") is not None and importlib.util.find_spec("orbax.checkpoint") is not None
needs_orbax = pytest.mark.skipif(not HAVE_ORBAX, reason='orbax-checkpoint is not installed: pip install -e ".[orbax]"')
WORKER = Path(__file__).resolve().parent / "sharded_checkpoint_worker.py"


def _train_tree(seed=0):
    """The kinds of leaves of ``test_checkpoint._train_tree`` (params, Adam state, typed and raw keys, bfloat16,
    Python numbers, None), built from numpy data without compiling a program (that one costs 1-3 s of jit)."""
    params = ({"W": normal(seed, (5, 8)), "b": normal(seed + 1, (8,))}, {},
              {"W": normal(seed + 2, (8, 3)), "b": normal(seed + 3, (3,))})
    moment = lambda k: jax.tree.map(lambda a: normal(seed + k, a.shape), params)  # noqa: E731
    adam = optax.ScaleByAdamState(count=jnp.asarray(1, jnp.int32), mu=moment(10), nu=moment(20))
    return {"params": params, "opt_state": (adam, optax.EmptyState()), "state": {"running_mean": normal(seed, (8,))},
            "key": jax.random.wrap_key_data(jnp.asarray(np.array([0, seed + 1], np.uint32))),
            "raw_key": jnp.asarray(np.array([0, 3], np.uint32)), "half": normal(seed, (5,), jnp.bfloat16),
            "step": 12, "lr": 0.25, "done": False, "nothing": None}


def _saved(tmp_path, name="ck", **kw):
    tree = _train_tree()
    return tree, checkpoint.save(tmp_path / name, tree, backend="orbax", **kw)


@needs_orbax
def test_round_trip_of_a_training_tree_and_its_record(tmp_path):
    tree, path = _saved(tmp_path, metadata={"run": "a", "step": 12}, model="mlp")
    assert os.path.isdir(path)
    out = checkpoint.restore(path, like=_train_tree(seed=5))  # same structure, other values
    assert_bitwise_equal(out, tree)  # params, Adam state (a NamedTuple), typed and raw keys, bfloat16, numbers
    assert isinstance(out["opt_state"][0], optax.ScaleByAdamState) and type(out["step"]) is int
    # the record: the same as the .npz backend's for the same tree, read without orbax
    meta = checkpoint.read_metadata(path)
    npz = checkpoint.read_metadata(checkpoint.save(tmp_path / "ck.npz", tree, metadata={"run": "a", "step": 12},
                                                   model="mlp"))
    assert (meta["backend"], npz["backend"]) == ("orbax", "npz")
    assert {k: v for k, v in meta.items() if k != "backend"} == {k: v for k, v in npz.items() if k != "backend"}
    # without `like`: plain containers, named by the warning, the same values
    with pytest.warns(checkpoint.PlainTreeWarning, match="ScaleByAdamState"):
        plain = checkpoint.restore(path)
    assert_bitwise_equal(plain["params"], tree["params"])
    assert _bits_of(plain["opt_state"][0]["mu"]) == _bits_of(tree["opt_state"][0].mu)


def _bits_of(tree):
    return [np.asarray(a).tobytes() for a in jax.tree.leaves(tree)]


@needs_orbax
def test_restore_places_each_leaf_in_the_sharding_of_like(tmp_path):
    tree, path = _saved(tmp_path)
    mesh = Mesh(np.asarray(jax.devices()[:1]), ("model",))
    cols = NamedSharding(mesh, PartitionSpec(None, "model"))
    w = tree["params"][0]["W"]
    like = {k: v for k, v in tree.items()}
    like["params"] = ({"W": jax.ShapeDtypeStruct(w.shape, w.dtype, sharding=cols), "b": tree["params"][0]["b"]},
                      *tree["params"][1:])
    out = checkpoint.restore(path, like=like)
    assert out["params"][0]["W"].sharding == cols
    np.testing.assert_array_equal(out["params"][0]["W"], w)
    # a like leaf without a sharding (numpy) is read whole, as from a file
    like["state"] = jax.tree.map(np.asarray, tree["state"])
    np.testing.assert_array_equal(checkpoint.restore(path, like=like)["state"]["running_mean"],
                                  tree["state"]["running_mean"])


# After a failed read or write, a coroutine of orbax's may find its event loop closed ("Exception ignored").
QUIET = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@QUIET
@needs_orbax
def test_damaged_partial_and_foreign_directories_give_clear_errors(tmp_path):
    tree, path = _saved(tmp_path)
    like = dict(tree)
    # a leaf that does not match `like`: the .npz backend's message
    with pytest.raises(bp.BpjaxError, match=r"leaf \['half'\]: expected float32\[5\] \(as in `like`\), found "
                                            r"bfloat16\[5\]"):
        checkpoint.restore(path, like=dict(like, half=jnp.zeros(5)))
    # damaged: a leaf's data differs from its checksum (here the record's checksum is changed)
    step_file = os.path.join(path, sharded.STEP_METADATA)
    with open(step_file) as f:
        step = json.load(f)
    sums = step["custom_metadata"]["bpjax"]["checksums"]
    sums[1] = f"{int(sums[1], 16) ^ 1:016x}"
    with open(step_file, "w") as f:
        json.dump(step, f)
    with pytest.raises(bp.BpjaxError, match=r"checksum mismatch at leaf \['half'\], the checkpoint's data is "
                                            r"corrupted"):
        checkpoint.restore(path, like=like)
    # damaged: the data files are gone
    for data in Path(path).glob("**/d/*"):
        data.unlink()
    with pytest.raises(bp.BpjaxError, match="damaged or incomplete sharded checkpoint"):
        checkpoint.restore(path, like=like)
    # foreign: orbax's record without bpjax's, or no record at all
    with open(step_file, "w") as f:
        json.dump(dict(step, custom_metadata={}), f)
    with pytest.raises(bp.BpjaxError, match="holds no bpjax record"):
        checkpoint.read_metadata(path)
    os.remove(step_file)
    with pytest.raises(bp.BpjaxError, match="expected a checkpoint file, got a directory, and not one of a sharded"):
        checkpoint.restore(path, like=like)
    # a directory exists at the path: never replaced
    with pytest.raises(bp.BpjaxError, match="expected a new path, the directory exists"):
        checkpoint.save(path, tree, backend="orbax")
    with pytest.raises(bp.BpjaxError, match=r"backend: expected one of \('npz', 'orbax'\), got 'zarr'"):
        checkpoint.save(tmp_path / "x", tree, backend="zarr")
    with pytest.raises(bp.BpjaxError, match="at least one leaf"):
        checkpoint.save(tmp_path / "empty", {}, backend="orbax")


@QUIET
@needs_orbax
def test_a_save_that_fails_before_its_commit_leaves_no_checkpoint(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    def fail(self, directory):
        raise OSError("disk full")

    monkeypatch.setattr(ocp.StandardCheckpointHandler, "finalize", fail)
    tree, path = _train_tree(), tmp_path / "ck"
    with pytest.raises(bp.BpjaxError, match="could not write the checkpoint: OSError: disk full"):
        checkpoint.save(path, tree, backend="orbax")
    assert not path.exists()
    (temp,) = os.listdir(tmp_path)  # orbax's temporary directory: never read
    assert checkpoint.atomic.temporary_of(temp) == "ck"
    with pytest.raises(bp.BpjaxError, match=r"no such file.*1 temporary file\(s\) of unfinished saves lie beside it"):
        checkpoint.restore(path, like=tree)
    with pytest.raises(bp.BpjaxError, match="got the temporary directory of a save"):
        checkpoint.read_metadata(tmp_path / temp)
    monkeypatch.undo()
    checkpoint.save(path, tree, backend="orbax")  # the next save to the path removes the stale temporary directory
    assert os.listdir(tmp_path) == ["ck"]
    assert_bitwise_equal(checkpoint.restore(path, like=tree), tree)


def test_checksums_agree_on_host_and_device_and_catch_a_changed_word():
    """One word changed changes the checksum (its weight is odd); numpy and jax.numpy compute the same sums (a leaf
    saved from devices may be read back as numpy). On 8 devices and 2 processes restores verify them too."""
    rng = np.random.default_rng(0)
    values = [rng.standard_normal((6, 5)).astype(np.float32), rng.standard_normal(7).astype(jnp.bfloat16),
              np.arange(-3, 4, dtype=np.int8), np.array([True, False, True]), np.asarray(3, np.int64)]
    sums = sharded.checksums(values)
    on_device = [np.asarray(sharded._device_sums(jnp.asarray(v))) for v in values[:4]]  # as for split arrays
    assert sums[:4] == [f"{int(a):08x}{int(b):08x}" for a, b in on_device] and len(set(sums)) == len(sums)
    for word in [(0, 0), (2, 3), (5, 4)]:
        for bit in (0, 17, 31):
            changed = values[0].copy()
            changed.view(np.uint32)[word] ^= np.uint32(1 << bit)
            assert sharded.checksums([changed]) != sums[:1], (word, bit)


def test_without_orbax_the_record_reads_and_the_rest_says_how_to_install_it(tmp_path, monkeypatch):
    # a sharded checkpoint's record, as bp.checkpoint.save writes it (no arrays needed to read it)
    record = {"format": checkpoint.FORMAT, "format_version": checkpoint.FORMAT_VERSION, "bpjax_version": "x",
              "backend": "orbax", "model": None, "metadata": {"step": 3}, "structure": {"dict": [["w", "*"]]},
              "leaves": [{"path": "['w']", "kind": "array", "dtype": "float32", "shape": [2]}], "checksums": ["0" * 16]}
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / sharded.STEP_METADATA).write_text(json.dumps({"custom_metadata": {"bpjax": record}}))
    monkeypatch.setitem(sys.modules, "orbax.checkpoint", None)  # `import orbax.checkpoint` raises ImportError
    assert checkpoint.read_metadata(tmp_path / "ck")["metadata"] == {"step": 3}
    install = r'needs orbax-checkpoint, which is not installed: pip install -e "\.\[orbax\]"'
    with pytest.raises(bp.BpjaxError, match=install):
        checkpoint.restore(tmp_path / "ck", like={"w": jnp.zeros(2)})
    with pytest.raises(bp.BpjaxError, match=install):
        checkpoint.save(tmp_path / "new", {"w": jnp.zeros(2)}, backend="orbax")


@needs_orbax
def test_the_record_file_is_the_one_orbax_writes(tmp_path):
    """read_metadata reads orbax's step record by name, without orbax: the name must be orbax's own."""
    from orbax.checkpoint._src.metadata import checkpoint as orbax_metadata

    assert orbax_metadata.step_metadata_file_path(tmp_path).name == sharded.STEP_METADATA


# ---------------------------------------------------------------- several devices, several processes (slow)

EIGHT_DEVICES = textwrap.dedent("""
    import json, os, tempfile
    import jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from bpjax import checkpoint
    from bpjax.checkpoint import sharded
    full = np.random.default_rng(0).standard_normal((16, 32)).astype(np.float32)
    mesh = Mesh(np.asarray(jax.devices()).reshape(4, 2), ("data", "model"))
    saved_as, restored_as = NamedSharding(mesh, P(None, "model")), NamedSharding(mesh, P("data", "model"))
    w = jax.device_put(full, saved_as)
    keys = jax.device_put(jax.random.split(jax.random.key(0), 8), NamedSharding(mesh, P(("data", "model"))))
    path = os.path.join(tempfile.mkdtemp(), "ck")
    checkpoint.save(path, {"w": w, "keys": keys, "step": 3}, backend="orbax")
    out = checkpoint.restore(path, like={"w": jax.ShapeDtypeStruct(full.shape, full.dtype, sharding=restored_as),
                                         "keys": keys, "step": 0})
    print(json.dumps({
        "devices": jax.device_count(), "step": out["step"],
        "w_sharding_kept": out["w"].sharding == restored_as,
        "keys_sharding_kept": out["keys"].sharding == keys.sharding,
        # each device's block of the restored values against the saved ones
        "blocks": [[list(s.data.shape), bool((np.asarray(s.data) == full[s.index]).all())]
                   for s in out["w"].addressable_shards],
        "keys_equal": bool((np.asarray(jax.random.key_data(out["keys"]))
                            == np.asarray(jax.random.key_data(keys))).all()),
        # the sums on the devices of the saved layout, of the restored one, of one device, and on the host
        "sums": [np.asarray(sharded._device_sums(a)).tolist() for a in (w, out["w"], jax.device_put(full))]
                + [sharded._sums(np, full).tolist()]}))
""")


# ~4 s (a fresh jax on 8 simulated devices, orbax imported): slow. The default suite restores into a sharding on
# one device (test_restore_places_each_leaf_in_the_sharding_of_like).
@pytest.mark.slow
@needs_orbax
def test_restore_into_another_sharding_on_eight_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    root = str(Path(bp.__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", EIGHT_DEVICES], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == 8 and out["step"] == 3
    assert out["w_sharding_kept"] and out["keys_sharding_kept"]
    assert out["blocks"] == [[[4, 16], True]] * 8  # each device holds its (4, 16) block of the saved values
    assert out["keys_equal"]
    assert all(sums == out["sums"][-1] for sums in out["sums"]), out["sums"]  # the same sums from any layout


# ~15 s (2 processes start jax.distributed and import orbax): slow. The default suite covers the backend on one
# process (above) and fit on 2 processes with the .npz backend (test_multiprocess.py).
@pytest.mark.slow
@needs_orbax
def test_two_processes_save_and_restore_their_own_shards(tmp_path):
    from bpjax.train.launch import launch

    assert launch([str(WORKER), str(tmp_path)], processes=2, cpu_devices=2, timeout=300,
                  log_dir=str(tmp_path)) == [0, 0]
    procs = [json.loads((tmp_path / f"result_{i}.json").read_text()) for i in (0, 1)]
    for p, r in enumerate(procs):
        assert r["values_equal"] and r["resharded_equal"] and r["plain_equal"], (p, r)
        assert "leaf ['opt_state'][0].mu[0]['W']: a jax.Array split over the devices of several processes" in \
            r["npz_error"] and 'save with backend="orbax"' in r["npz_error"], r["npz_error"]
        assert 'pip install -e ".[orbax]"' in r["npz_error"]
        # each process writes and reads about its half of the split leaves, never the whole tree
        assert r["raw"]["written"] < 0.6 * r["raw"]["total"] and r["raw"]["read"] < 0.6 * r["raw"]["total"], r
        # fit's run folder: sharded entries, resumed at step 4 to the uninterrupted run's params
        assert r["fit_start"] == 4 and r["fit_equal"], r
    # the run folder once both processes have ended (listed by a process, it could still hold the LOCK that the
    # other releases as its fit returns): the two checkpoints kept, the lock released
    assert sorted(os.listdir(tmp_path / "run")) == ["step_00000004.orbax", "step_00000008.orbax"]

    print(json.dumps(procs, indent=1))
