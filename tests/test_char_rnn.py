"""Truncated BPTT: recurrent layers from a given state, the state carried between batches by fit, and the corpus."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import initial_state, random_params

import bpjax as bp
from bpjax import layers as L
from bpjax import zoo
from experiments import text

B, T, D, H = 2, 5, 3, 4


def _x(seed, shape=(B, T, D)):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape))


def _carry(cell, seed):
    n = 2 if cell.name.startswith("LSTM") else 1
    return tuple(_x(seed + i, (B, H)) for i in range(n))


@pytest.mark.parametrize("make", [L.LSTM, pytest.param(L.GRU, marks=pytest.mark.slow)])
def test_initial_state_f64_and_finite_differences(make):
    # (x, carry0) -> (y, carry_T): manual vs jax.vjp in float64 at 1e-10 and central differences, the
    # gradient of the initial state included (check_layer draws a cotangent for y and for carry_T).
    cell = make(H)
    with jax.enable_x64(True):
        p = random_params(cell, (T, D), dtype=jnp.float64)  # numpy draws: no sampler compiled per shape
        r = bp.check_layer(cell, p, (_x(1), _carry(cell, 2)), rtol=1e-10, fd_directions=1)
    assert r.ok and r.max_fd_rel_error < 1e-6, str(r)
    assert sum(row.name.startswith("input x") for row in r.rows) == 1 + len(_carry(cell, 2))


@pytest.mark.parametrize("make", [L.LSTM, *(pytest.param(m, marks=pytest.mark.slow) for m in (L.GRU, L.SimpleRNN))])
def test_chunks_carried_equal_the_whole_sequence(make):
    # Two chunks, the second from the state the first ended in, are the whole sequence: the same steps.
    cell = make(H)
    p = random_params(cell, (T, D))
    x = _x(3, (B, 2 * T, D)).astype(jnp.float32)
    f = jax.jit(cell.forward)
    whole, _ = f(p, x)
    (y1, c1), _ = f(p, (x[:, :T], None))
    (y2, _), _ = f(p, (x[:, T:], c1))
    np.testing.assert_array_equal(jnp.concatenate([y1, y2], 1), whole)


def _tbptt(batch=B):
    return bp.serial(L.Dense(D), zoo.TruncatedBPTT(L.LSTM(H), batch_size=batch), L.Dense(2))


def test_truncated_bptt_gradients_f64():
    # The carried state is the model's state: jax.grad does not differentiate it, which is exactly the
    # truncation; the manual backward drops the initial state's gradient. Float64, rtol 1e-10, finite
    # differences, from a non-zero carried state.
    model = _tbptt()
    with jax.enable_x64(True):
        p = random_params(model, (T, D), dtype=jnp.float64)
        state = initial_state(model, (T, D))
        state = (state[0], tuple(_x(4 + i, (B, H)) for i in range(2)), state[2])
        y = _x(6, (B, T, 2))
        r = bp.check_gradients(model, bp.losses.mse, p, _x(5), y, state=state, rtol=1e-10, finite_differences=True,
                               fd_directions=1)
    assert r.ok, str(r)


def test_fit_carries_the_state_between_batches():
    # With a zero learning rate the params stay put, so after 3 steps of fit the state must be the LSTM's
    # state after reading 3 chunks of every stream in a row: fit threads it from step to step.
    model = _tbptt()
    p = random_params(model, (T, D))
    state = initial_state(model, (T, D))
    streams = _x(7, (B, 3 * T, D)).astype(jnp.float32)  # B streams of 3 chunks
    x = jnp.concatenate([streams[:, k * T:(k + 1) * T] for k in range(3)])  # row k*B + b: chunk k of stream b
    y = jnp.zeros((3 * B, T, 2))
    r = bp.train.fit(model, bp.losses.mse, optax.sgd(0.0), p, (x, y), steps=3, batch_size=B, state=state,
                     verbose=False)

    @jax.jit  # the reference as one program, not one per eager op
    def reference(p, streams):
        z = streams @ p[0]["W"] + p[0]["b"]
        return L.LSTM(H).forward(p[1], (z, None))[0][1]

    carry = reference(p, streams)
    for a, b in zip(jax.tree.leaves(r.state[1]), jax.tree.leaves(carry)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # f32: the same steps, compiled apart
    assert float(jnp.max(jnp.abs(r.state[1][0]))) > 1e-2


def test_truncated_bptt_eval_mode_and_errors():
    model = _tbptt()
    p = random_params(model, (T, D))
    state = initial_state(model, (T, D))
    x5 = _x(8, (5, T, D)).astype(jnp.float32)
    y, _, s = bp.apply(model, p, x5, state=state, train=False)  # eval: any batch, from zeros, state unchanged
    assert y.shape == (5, T, 2)
    for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(state)):
        assert a is b
    with pytest.raises(bp.BpjaxError, match=r"TruncatedBPTT\(LSTM\(4\)\).*batch of 2, got shape \(5, 5, 3\)"):
        bp.apply(model, p, x5, state=state, train=True)
    with pytest.raises(bp.BpjaxError, match=r"initial state must be a tuple of 2 arrays of shape \(2, 4\)"):
        L.LSTM(H).forward(p[1], (_x(1).astype(jnp.float32), (jnp.zeros((2, 4)),)))


def test_corpus_streams_and_bigram():
    corpus = text.load()
    assert corpus.info["characters"] > 500_000 and not corpus.info["missing"]
    assert text.decode(text.encode("def f(x):\n\treturn x")) == "def f(x):\n    return x"
    ids = np.arange(100, dtype=np.int32)
    x, y = text.streams(ids, 3, 4)
    # row s*3 + b is chunk s of stream b; streams are consecutive thirds (33 tokens each, 8 chunks of 4)
    np.testing.assert_array_equal(x[0], [0, 1, 2, 3])
    np.testing.assert_array_equal(x[1], [33, 34, 35, 36])
    np.testing.assert_array_equal(x[3], [4, 5, 6, 7])
    np.testing.assert_array_equal(y, x + 1)
    # the bigram model is exact on a deterministic sequence (alpha -> 0) and uniform on unseen pairs
    cyc = np.tile(np.arange(5, dtype=np.int32), 50)
    assert text.bigram_loss(cyc, cyc[:-1], cyc[1:], alpha=1e-9) < 1e-6
    assert abs(text.bigram_loss(cyc, np.array([7]), np.array([8])) - np.log(len(text.VOCAB))) < 1e-12


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpt", "char_rnn"])
def test_language_model_experiments_quick(name, tmp_path):
    from experiments.__main__ import main

    assert main([name, "--quick", "--no-progress", "--out", str(tmp_path)]) == 0
    import json

    m = json.loads((tmp_path / "results.json").read_text())["metrics"]
    if name == "gpt":
        assert m["val_loss"] < m["uniform_loss"] - 1 and m["grad_check_max_rel_error"] < 1e-10
    else:
        for cell in ("lstm", "gru"):
            assert m[cell]["val_loss_windows"] < np.log(96) - 1 and m[cell]["grad_check_max_rel_error"] < 1e-10
    assert (tmp_path / f"{name}.png").stat().st_size > 10_000 and (tmp_path / "samples.txt").exists()
