"""Streamed train_data: an iterable of batches trains exactly as the device-resident arrays, compiles once,
reads each block one chunk ahead, checkpoints and resumes, and names every bad batch."""

import jax
import numpy as np
import optax
import pytest

import bpjax as bp
from bpjax.layers import Dense, Relu
from bpjax.train import cache
from bpjax.train.driver import default_chunk

N, B, XENT = 64, 8, bp.losses.softmax_cross_entropy
ADAM = optax.adam(1e-2)  # one object: the compiled programs are reused between the tests' calls


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 6)).astype(np.float32)
    return x, (x[:, :3].argmax(1)).astype(np.int32)


def _model():
    model = bp.serial(Dense(8), Relu(), Dense(3))
    return model, model.init(jax.random.key(0), (6,))[1]


def _batches(x, y, start, stop, log=None):
    """The batches of steps ``start .. stop-1``, in order (``b = s mod N/B``), as numpy arrays."""
    for s in range(start, stop):
        if log is not None:
            log.append(s)
        b = s % (N // B)
        yield x[b * B:(b + 1) * B], y[b * B:(b + 1) * B]


def _equal(a, b):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


KW = dict(steps=12, batch_size=B, chunk_size=4, verbose=False)


def test_streamed_equals_resident_compiles_once_and_reads_ahead():
    x, y = _data()
    model, p0 = _model()
    kw = dict(KW, eval_data=(x[:16], y[:16]), eval_every=4)
    resident = bp.train.fit(model, XENT, ADAM, p0, (x, y), **kw)
    cache.clear_cache()
    read, at_callback = [], {}
    streamed = bp.train.fit(model, XENT, ADAM, p0, _batches(x, y, 0, 12, read),
                            callback=lambda s, r: at_callback.setdefault(s, len(read)), **kw)
    # the same steps on the same batches: bitwise equal (one device, the same arithmetic)
    _equal(resident.params, streamed.params)
    for k in resident.history:
        np.testing.assert_array_equal(resident.history[k], streamed.history[k])
    # one compiled chunk program for the three chunks of 4 steps
    chunks = [fn for key, fn in cache._CACHE.items() if key[0] == "chunk"]
    assert len(chunks) == 1 and chunks[0]._cache_size() == 1
    # double buffering: when chunk k's results come back, chunk k+1's batches have been read already
    assert at_callback == {4: 8, 8: 12, 12: 12}


def test_streamed_fit_many_equals_resident():
    x, y = _data()
    model, _ = _model()
    kw = dict(KW, keys=jax.random.split(jax.random.key(1), 2))
    resident = bp.train.fit_many(model, XENT, ADAM, None, (x, y), **kw)
    streamed = bp.train.fit_many(model, XENT, ADAM, None, _batches(x, y, 0, 12), **kw)
    _equal(resident.params, streamed.params)
    np.testing.assert_array_equal(resident.history["loss"], streamed.history["loss"])


def test_streamed_checkpoint_and_resume(tmp_path):
    x, y = _data()
    model, p0 = _model()
    path = str(tmp_path / "run")
    whole = bp.train.fit(model, XENT, ADAM, p0, _batches(x, y, 0, 12), **KW)

    def stop(step, _):
        if step == 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        bp.train.fit(model, XENT, ADAM, p0, _batches(x, y, 0, 12), checkpoint_path=path, callback=stop, **KW)
    start = bp.train.resume_step(path)
    assert start == 8 and bp.train.resume_step(str(tmp_path / "none")) == 0
    # the iterator's position is the caller's: it starts at the checkpoint's step
    resumed = bp.train.fit(model, XENT, ADAM, p0, _batches(x, y, start, 12), checkpoint_path=path, **KW)
    _equal(whole.params, resumed.params)
    np.testing.assert_array_equal(whole.history["loss"], resumed.history["loss"])


def test_streamed_chunks_default_to_a_bounded_block():
    mnist1d_batch = 100 * 40 * 4 + 100 * 4  # bytes
    assert default_chunk(6000, verbose=False, batch_bytes=mnist1d_batch) == 300  # 1/20 of the run
    assert default_chunk(6000, verbose=True, batch_bytes=mnist1d_batch) == 300
    assert default_chunk(6000, verbose=False, batch_bytes=1 << 20) == 16  # 16 MB blocks at most
    assert default_chunk(6000, verbose=False) == 6000  # resident and silent: one chunk


def test_bad_streams_are_named():
    x, y = _data()
    model, p0 = _model()
    fit = lambda data, **kw: bp.train.fit(model, XENT, ADAM, p0, data, **{**KW, **kw})  # noqa: E731

    def odd(at, xb, yb):
        for s, batch in enumerate(_batches(x, y, 0, 12)):
            yield (xb, yb) if s == at else batch

    with pytest.raises(bp.BpjaxError, match="train_data ended after 10 batches"):
        fit(_batches(x, y, 0, 10))
    with pytest.raises(bp.BpjaxError, match=r"batch 5: expected xb \(8, 6\) float32"):
        fit(odd(5, x[:4], y[:4]))
    with pytest.raises(bp.BpjaxError, match=r"batch 0: expected xb and yb with 8 rows"):
        fit(odd(0, x[:4], y[:4]))
    with pytest.raises(bp.BpjaxTypeError, match="batch 3: expected a pair"):
        fit(b if s != 3 else x[:8] for s, b in enumerate(_batches(x, y, 0, 12)))
    with pytest.raises(bp.BpjaxError, match="shuffle=True needs train_data=\\(x, y\\)"):
        fit(_batches(x, y, 0, 12), shuffle=True, key=jax.random.key(0))
    bad = x[8:16].copy()
    bad[2, 1] = np.inf
    with pytest.raises(bp.BpjaxError, match=r"train_data batch of step 9 \(0-based\) contains NaN or Inf"):
        fit(odd(9, bad, y[8:16]))
    with pytest.raises(bp.BpjaxError, match="train_data batch 0 x contains NaN or Inf"):
        fit(odd(0, bad, y[8:16]))
