"""SimpleRNN, GRU, LSTM, Bidirectional: hand-written backpropagation through time vs jax.vjp and finite differences.

Tolerances: float32 uses check_layer's default ``rtol=1e-4`` (roundoff ~6e-8 per op, grown over at
most a few dozen steps of a short sequence: observed <= ~5e-7); float64 ``rtol=1e-10`` (observed
<= ~1e-15) and central differences ``fd_rtol=1e-6`` with ``eps=1e-5`` (truncation ~eps^2 = 1e-10,
observed <= ~1e-10).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import check_layer_f32_f64, init_shapes, normal, random_params
from hypothesis import Phase, example, given, settings
from hypothesis import strategies as st

import bpjax as bp
from bpjax.layers import GRU, LSTM, Bidirectional, Dense, Flatten, SimpleRNN

CELLS = {"SimpleRNN": SimpleRNN, "GRU": GRU, "LSTM": LSTM}


def make(cell, hidden, return_sequences=True, bidirectional=False, unroll=1):
    layer = CELLS[cell](hidden, return_sequences=return_sequences, unroll=unroll)
    return Bidirectional(layer) if bidirectional else layer


def jitted(layer):
    """The same hand-written forward and backward, compiled (eager lax.scan runs slowly op by op)."""
    return bp.Layer(layer.init, jax.jit(layer.forward), jax.jit(layer.backward), layer.name)


def check_both(layer, seed, B, T, D):
    """check_layer in float32 (vs jax.vjp) and float64 (vs jax.vjp, rtol 1e-10, and finite differences),
    at random params (conftest.random_params) and input drawn from ``seed``."""
    layer = jitted(layer)
    params = random_params(layer, (T, D), seed)
    x = normal(seed + 1, (B, T, D))
    r32, r64 = check_layer_f32_f64(layer, params, x)
    assert r64.max_fd_rel_error is not None
    assert len(r64.rows) == len(jax.tree.leaves(params)) + 1  # every parameter leaf and x compared one by one
    return r32, r64


# Composite models put every cell, both return modes and Bidirectional through one check each, so
# the fast suite compiles a few programs instead of twelve; the rows of the report are per layer
# and per leaf, so a wrong gradient in any one layer still fails.
COMPOSITES = {
    "rnn-bigru-lstmlast": lambda H, u: bp.serial(SimpleRNN(H, unroll=u), Bidirectional(GRU(H, unroll=u)),
                                                 LSTM(H, return_sequences=False, unroll=u)),
    "lstm-birnn-bigrulast": lambda H, u: bp.serial(LSTM(H, unroll=u), Bidirectional(SimpleRNN(H, unroll=u)),
                                                   Bidirectional(GRU(H, return_sequences=False, unroll=u))),
    "gru-bilstm-rnnlast": lambda H, u: bp.serial(GRU(H, unroll=u), Bidirectional(LSTM(H, unroll=u)),
                                                 SimpleRNN(H, return_sequences=False, unroll=u)),
}


# The fast suite runs one composite (each costs ~8 s of compiling): every cell (LSTM and SimpleRNN
# with return_sequences, GRU in last-state mode), Bidirectional in both modes, float32 and float64
# with finite differences. GRU with return_sequences is checked by default too, in
# test_mnist1d_bidirectional_gru_classifier. The slow suite adds the other two composites (T = 1,
# and LSTM and SimpleRNN in last-state mode) and random shapes.
@settings(phases=[Phase.explicit])
@given(model=st.sampled_from(sorted(COMPOSITES)), B=st.integers(1, 3), T=st.integers(1, 5), D=st.integers(1, 3),
       H=st.integers(1, 4), unroll=st.sampled_from([1, 2]))
@example(model="lstm-birnn-bigrulast", B=2, T=3, D=2, H=2, unroll=1)
def test_check_layer_composites(model, B, T, D, H, unroll):
    check_both(COMPOSITES[model](H, unroll), B * 1000 + T * 100 + D * 10 + H, B, T, D)


@pytest.mark.slow
@settings(max_examples=8)
@given(model=st.sampled_from(sorted(COMPOSITES)), B=st.integers(1, 3), T=st.integers(1, 6), D=st.integers(1, 3),
       H=st.integers(1, 4), unroll=st.sampled_from([1, 2]))
@example(model="gru-bilstm-rnnlast", B=2, T=1, D=2, H=2, unroll=1)
@example(model="rnn-bigru-lstmlast", B=2, T=2, D=2, H=2, unroll=2)
def test_check_layer_composites_random_shapes(model, B, T, D, H, unroll):
    test_check_layer_composites.hypothesis.inner_test(model, B, T, D, H, unroll)


# the full grid, one layer at a time (about 12 x 15 s on a loaded 2-core machine)
@pytest.mark.slow
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_check_layer_every_combination(cell, return_sequences, bidirectional):
    check_both(make(cell, 3, return_sequences, bidirectional), 0, B=2, T=3, D=2)


@pytest.mark.slow
@settings(max_examples=10)
@given(cell=st.sampled_from(sorted(CELLS)), return_sequences=st.booleans(), bidirectional=st.booleans(),
       B=st.integers(1, 3), T=st.integers(1, 6), D=st.integers(1, 3), H=st.integers(1, 4),
       unroll=st.sampled_from([1, 2]))
@example(cell="GRU", return_sequences=False, bidirectional=True, B=1, T=1, D=1, H=1, unroll=1)
@example(cell="LSTM", return_sequences=True, bidirectional=False, B=2, T=1, D=3, H=2, unroll=1)
def test_check_layer_hypothesis_single_layers(cell, return_sequences, bidirectional, B, T, D, H, unroll):
    check_both(make(cell, H, return_sequences, bidirectional, unroll), B * 1000 + T * 100 + D * 10 + H, B, T, D)


def _mnist1d_gru_check(seed, finite_differences):
    """The MNIST-1D GRU (Greydanus 2020): x (B, 40, 1) -> BiGRU(6), all 40 states (480) -> Dense(10)."""
    net = bp.serial(Bidirectional(GRU(6)), Flatten(), Dense(10))
    assert init_shapes(net, (40, 1))[0] == (10,)
    y = jnp.asarray(np.arange(8) % 10, jnp.int32)
    with jax.enable_x64(True):
        params = random_params(net, (40, 1), seed, jnp.float64)
        x = normal(seed + 1, (8, 40, 1), jnp.float64)
        report = bp.check_gradients(net, bp.losses.softmax_cross_entropy, params, x, y, rtol=1e-10,
                                    finite_differences=finite_differences)
    assert report.ok, str(report)
    return report


def test_mnist1d_bidirectional_gru_classifier():
    _mnist1d_gru_check(0, finite_differences=False)


@pytest.mark.slow
def test_mnist1d_bidirectional_gru_classifier_finite_differences():
    assert _mnist1d_gru_check(0, finite_differences=True).max_fd_rel_error is not None


# -- the forward conventions, against plain numpy loops of the documented equations --------------

def _sig(u):
    return 1 / (1 + np.exp(-u))


def _reference(cell, p, x):
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    x = np.asarray(x, np.float64)
    B, T, _ = x.shape
    H = p["Wh"].shape[0]
    h, c, hs = np.zeros((B, H)), np.zeros((B, H)), []
    for t in range(T):
        a = x[:, t] @ p["Wx"] + p["b"]
        if cell == "SimpleRNN":
            h = np.tanh(a + h @ p["Wh"])
        elif cell == "GRU":
            hW = h @ p["Wh"]
            r, z = _sig(a[:, :H] + hW[:, :H]), _sig(a[:, H:2 * H] + hW[:, H:2 * H])
            n = np.tanh(a[:, 2 * H:] + r * (hW[:, 2 * H:] + p["bhn"]))
            h = (1 - z) * n + z * h
        else:
            a = a + h @ p["Wh"]
            i, f, g, o = _sig(a[:, :H]), _sig(a[:, H:2 * H]), np.tanh(a[:, 2 * H:3 * H]), _sig(a[:, 3 * H:])
            c = f * c + i * g
            h = o * np.tanh(c)
        hs.append(h)
    return np.stack(hs, 1)


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_forward_matches_equations(cell):
    layer = CELLS[cell](4)
    p = random_params(layer, (5, 3))
    x = normal(1, (2, 5, 3))
    ref = _reference(cell, p, x)
    last_layer = CELLS[cell](4, return_sequences=False)
    ys, last = jax.jit(lambda p, x: (layer.forward(p, x)[0], last_layer.forward(p, x)[0]))(p, x)  # one program
    np.testing.assert_allclose(ys, ref, rtol=1e-5, atol=1e-6)  # f32 vs f64 loop
    np.testing.assert_allclose(last, ref[:, -1], rtol=1e-5, atol=1e-6)


def test_bidirectional_layout():
    """Features [fwd | bwd]; the backward copy reads x reversed; its last state is the one after x_0."""
    bi_seq, bi_last = Bidirectional(GRU(3)), Bidirectional(GRU(3, return_sequences=False))
    p = random_params(bi_seq, (6, 2))
    x = normal(1, (2, 6, 2))
    ys, yl = jax.jit(lambda p, x: (bi_seq.forward(p, x)[0], bi_last.forward(p, x)[0]))(p, x)  # one program
    assert ys.shape == (2, 6, 6) and yl.shape == (2, 6)
    fwd = _reference("GRU", p["fwd"], x)
    bwd = _reference("GRU", p["bwd"], np.asarray(x)[:, ::-1])[:, ::-1]
    np.testing.assert_allclose(ys, np.concatenate([fwd, bwd], -1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(yl, np.concatenate([fwd[:, -1], bwd[:, 0]], -1), rtol=1e-5, atol=1e-6)


def test_init(getkey):
    # three inits compiled as one program (run eagerly, each draw and QR compiles on its own); the values
    # checked in numpy
    lstm, gru = LSTM(5, forget_bias=1.0), GRU(4, recurrent_init="orthogonal")
    glorot = GRU(4, init="glorot_uniform", recurrent_init="orthogonal", dtype=jnp.float32)
    keys = (getkey(), getkey(), getkey())
    (shape, p), (_, pg), (_, pe) = jax.jit(
        lambda k: (lstm.init(k[0], (7, 3)), gru.init(k[1], (2, 3)), glorot.init(k[2], (2, 3))))(keys)
    p = jax.tree.map(np.asarray, p)
    assert shape == (7, 5) and {k: v.shape for k, v in p.items()} == {"Wx": (3, 20), "Wh": (5, 20), "b": (20,)}
    np.testing.assert_array_equal(p["b"][5:10], 1.0)
    k = 1 / np.sqrt(5)
    assert np.max(np.abs(p["Wx"])) <= k and np.std(p["Wx"]) > 0.3 * k  # U(-k, k)
    p = jax.tree.map(np.asarray, pg)
    assert set(p) == {"Wx", "Wh", "b", "bhn"}
    for g in range(3):
        block = p["Wh"][:, 4 * g:4 * (g + 1)]
        np.testing.assert_allclose(block.T @ block, np.eye(4), atol=1e-5)
    # an explicit init draws Wx and Wh (glorot over the whole (D, 3H) matrix) and zeroes the biases;
    # recurrent_init then redraws each (H, H) block of Wh
    p = jax.tree.map(np.asarray, pe)
    assert np.max(np.abs(p["Wx"])) <= np.sqrt(6 / (3 + 12)) and np.std(p["Wx"]) > 0
    np.testing.assert_array_equal(p["b"], 0.0)
    np.testing.assert_array_equal(p["bhn"], 0.0)
    block = p["Wh"][:, 4:8]
    np.testing.assert_allclose(block.T @ block, np.eye(4), atol=1e-5)  # float32 roundoff of a 4x4 QR
    # output shapes: init's shape inference, traced (jax.eval_shape), nothing drawn
    assert init_shapes(SimpleRNN(3, return_sequences=False), (4, 2))[0] == (3,)
    assert init_shapes(Bidirectional(GRU(6)), (40, 1))[0] == (40, 12)


def test_unroll_gives_the_same_result():
    p = random_params(LSTM(3), (7, 2))
    x = normal(1, (2, 7, 2))
    outs = []
    for layer in (LSTM(3), LSTM(3, unroll=3)):

        @jax.jit  # forward and backward in one program
        def forward_backward(p, x):
            y, res = layer.forward(p, x)
            return y, layer.backward(p, res, jnp.cos(y))

        outs.append(forward_backward(p, x))
    for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # f32, same maths in a different loop shape


# -- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("cell", sorted(CELLS))
def test_errors(cell, getkey):
    layer = CELLS[cell](4)
    p = random_params(layer, (5, 3))
    with pytest.raises(bp.BpjaxError, match=rf"{cell}\(4\).*rank-3 input \(B, T, D\).*\(2, 3\)"):
        layer.forward(p, jnp.zeros((2, 3)))
    with pytest.raises(bp.BpjaxError, match=rf"{cell}\(4\).*3 features.*\(2, 5, 7\)"):
        jax.jit(layer.forward)(p, jnp.zeros((2, 5, 7)))  # raised at trace time
    with pytest.raises(bp.BpjaxError, match=rf"{cell}\(4\).*at least one time step.*\(2, 0, 3\)"):
        layer.forward(p, jnp.zeros((2, 0, 3)))
    with pytest.raises(bp.BpjaxTypeError, match=rf"{cell}\(4\).*floating"):
        layer.forward(p, jnp.zeros((2, 5, 3), jnp.int32))
    with pytest.raises(bp.BpjaxError, match=rf"{cell}\(4\).*expected keys"):
        layer.forward({"W": p["Wx"]}, jnp.zeros((2, 5, 3)))
    p8 = random_params(CELLS[cell](8), (5, 3))
    with pytest.raises(bp.BpjaxError, match=rf"{cell}\(4\).*expected shapes"):
        layer.forward(p8, jnp.zeros((2, 5, 3)))
    with pytest.raises(bp.BpjaxError, match=rf"{cell}\(4\).*input shape \(T, D\)"):
        layer.init(getkey(), (5,))
    with pytest.raises(bp.BpjaxError, match=rf"{cell}: features must be a positive int, got 0"):
        CELLS[cell](0)
    with pytest.raises(bp.BpjaxTypeError, match=rf"{cell}: features must be a positive int, got True"):
        CELLS[cell](True)
    with pytest.raises(bp.BpjaxError, match=rf"{cell}\(3\) initializer: unknown init 'uniform'"):
        CELLS[cell](3, recurrent_init="uniform")
    with pytest.raises(bp.BpjaxError, match=rf"{cell}: unroll"):
        CELLS[cell](3, unroll=0)


def test_bidirectional_errors():
    bi = Bidirectional(GRU(4))
    p = random_params(bi, (5, 3))
    with pytest.raises(bp.BpjaxError, match=r"Bidirectional\(GRU\(4\)\).*rank-3.*\(2, 3\)"):
        bi.forward(p, jnp.zeros((2, 3)))
    with pytest.raises(bp.BpjaxError, match=r"Bidirectional\(GRU\(4\)\).*GRU\(4\).*at least one time step"):
        bi.forward(p, jnp.zeros((2, 0, 3)))
    with pytest.raises(bp.BpjaxError, match=r"Bidirectional\(GRU\(4\)\).*GRU\(4\).*3 features.*\(2, 5, 1\)"):
        bi.forward(p, jnp.zeros((2, 5, 1)))
    with pytest.raises(bp.BpjaxError, match=r"Bidirectional\(GRU\(4\)\).*expected keys \['bwd', 'fwd'\]"):
        bi.forward(p["fwd"], jnp.zeros((2, 5, 3)))
    p8 = random_params(GRU(8), (5, 3))
    with pytest.raises(bp.BpjaxError, match=r"Bidirectional\(GRU\(4\)\).*params\['bwd'\]"):
        bi.forward({"fwd": p["fwd"], "bwd": p8}, jnp.zeros((2, 5, 3)))
    with pytest.raises(bp.BpjaxTypeError, match=r"Bidirectional.*Layer.*function"):
        Bidirectional(GRU)
