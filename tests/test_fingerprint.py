"""A run's fingerprint (bpjax/train/fingerprint.py): a checkpoint of another run is refused with every
difference listed, and a change accepted on purpose continues exactly as a fresh fit from the saved state."""

import jax
import numpy as np
import optax
import pytest

import bpjax as bp
from bpjax.layers import Dense, Relu, Tanh

XENT = bp.losses.softmax_cross_entropy


def _data(shift=0.0):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(32, 4)).astype(np.float32) + shift
    y = (x @ rng.normal(size=(4, 3))).argmax(-1).astype(np.int32)
    return x, y


TANH, RELU = bp.serial(Dense(6), Tanh(), Dense(3)), bp.serial(Dense(6), Relu(), Dense(3))
_, P0 = TANH.init(jax.random.key(0), (4,))
ADAM2, ADAM3, SGD = optax.adam(1e-2), optax.adam(1e-3), optax.sgd(0.1)


def _fit(path, model=TANH, opt=ADAM2, data=None, steps=4, batch_size=8, **kw):
    return bp.train.fit(model, XENT, opt, P0, _data() if data is None else data, steps=steps, batch_size=batch_size,
                        verbose=False, checkpoint_path=str(path), **kw)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A run folder whose newest checkpoint is step 4 of TANH trained with ADAM2, batch 8, in order."""
    path = tmp_path_factory.mktemp("fingerprint") / "run"
    return path, _fit(path)


@pytest.mark.parametrize("change, lines", [
    (dict(model=RELU), ["model: serial(Dense(6), Tanh, Dense(3)) in the checkpoint, serial(Dense(6), Relu, "
                        "Dense(3)) now", "accept_changes=('model',)"]),
    (dict(batch_size=16), ["batch_size: 8 in the checkpoint, 16 now"]),
    (dict(opt=ADAM3), ["optimizer: the checkpoint's optimizer moves a leaf by -0.01 on the probe gradient 0.1, this "
                       "one by -0.001 (another learning rate, schedule or optimizer?)",
                       "accept_changes=('optimizer',)"]),
    (dict(opt=SGD), ["optimizer: its state has another structure"]),
    (dict(data=_data(shift=1.0)), ["data: another training set of the same shapes (content sha256"]),
    (dict(shuffle=True, key=jax.random.key(0)), ["shuffle: False in the checkpoint, True now"]),
    (dict(model=RELU, opt=ADAM3, batch_size=16), ["- model:", "- optimizer:", "- batch_size:",
                                                  "accept_changes=('model', 'optimizer', 'batch_size')"]),
])
def test_another_run_is_refused_with_each_difference(saved, change, lines):
    path, _ = saved
    with pytest.raises(bp.BpjaxError, match=rf"the checkpoint in '{path}' \(step 4\) was written by another "
                                            rf"run:") as info:
        _fit(path, **change)
    for line in lines:
        assert line in str(info.value)
    assert "use another checkpoint_path" in str(info.value)


def test_steps_below_the_checkpoint_are_refused(saved):
    path, _ = saved
    with pytest.raises(bp.BpjaxError, match=r"is at step 4, past steps=3: pass steps >= 4 to train on"):
        _fit(path, steps=3)


def test_an_accepted_new_learning_rate_continues_from_the_saved_state(saved, tmp_path):
    path, first = saved
    work = tmp_path / "run"
    work.mkdir()
    for entry in path.glob("step_*.npz"):  # a copy, so the module's folder stays as it is
        (work / entry.name).write_bytes(entry.read_bytes())
    resumed = _fit(work, opt=ADAM3, steps=8, accept_changes=("optimizer",))
    # steps 4..7 take batches 0..3 again (4 batches an epoch): a fresh fit of 4 steps from the saved state
    fresh = bp.train.fit(TANH, XENT, ADAM3, first.params, _data(), steps=4, batch_size=8, opt_state=first.opt_state,
                         verbose=False)
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(fresh.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.warns(UserWarning, match="with another optimizer .* the optimizer state starts afresh"):
        _fit(work, opt=SGD, steps=10, accept_changes="optimizer")


def test_accept_changes_names_known_fields(tmp_path):
    with pytest.raises(bp.BpjaxError, match=r"accept_changes: expected names from \('model', 'loss', 'optimizer', "
                                            r"'batch_size', 'shuffle', 'data'\), got \['lr'\]"):
        _fit(tmp_path / "run", accept_changes=("lr",))


def test_the_fingerprint_is_in_every_checkpoint(saved):
    path, _ = saved
    record = bp.checkpoint.read_metadata(path)["metadata"]["run"]
    assert record["model"] == "serial(Dense(6), Tanh, Dense(3))" and record["loss"] == "softmax_cross_entropy"
    assert record["batch_size"] == 8 and record["shuffle"] is False and record["models"] is None
    assert record["params"][0] == ["[0]['W']", "float32", [4, 6]]
    assert record["data"]["x"] == [["", "float32", [32, 4]]] and len(record["data"]["sha256"]) == 64
    assert record["optimizer"]["probe"][0] == pytest.approx(-0.01, rel=1e-5)  # -lr 0.1 / (0.1 + eps)
    assert bp.checkpoint.read_metadata(path)["model"] == "serial(Dense(6), Tanh, Dense(3))"
