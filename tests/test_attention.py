"""Checks for MultiHeadSelfAttention and TransformerBlock: manual backward vs jax.vjp and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import check_layer_f32_f64, init_shapes, initial_state, random_params
from hypothesis import example, given, settings
from hypothesis import strategies as st

import bpjax as bp
from bpjax import layers as L


def _params(layer, in_shape, dtype, seed=0):
    """Random params of ``layer``'s shapes, drawn with numpy (conftest.random_params: nothing compiles). These
    tests check gradients and outputs, not the initialiser (test_attention_keywords and
    test_attention_explicit_head_dim_shapes check it)."""
    return random_params(layer, in_shape, seed, dtype)


def _setup(layer, shape, dtype, seed=0, scale=1.0):
    """Params (:func:`_params`) and ``x: shape``, ``scale * N(0, 1)``, drawn with numpy."""
    params = _params(layer, shape[1:], dtype, seed)
    x = scale * np.random.default_rng(seed + 1).standard_normal(shape)
    return params, jnp.asarray(x, dtype)


def _jitted(layer):
    """The same layer with its forward and backward compiled whole: one XLA program per shape instead of
    one per eager op, which keeps this file fast (check_layer runs ``jax.vjp`` through the jit)."""
    return bp.Layer(layer.init, jax.jit(layer.forward), jax.jit(layer.backward), layer.name)


# Two heads, with and without the causal mask, compiled: shared by the tests below, which use one
# shape (2, 6, 8) where they can, so each program compiles once for the file.
MHA = {causal: _jitted(L.MultiHeadSelfAttention(2, causal=causal)) for causal in (False, True)}


def _check(layer, shape, seed=0, f32=True, f64=True):
    """check_layer in float64 (rtol 1e-10, with finite differences) and in float32 (rtol 1e-4), as asked.

    Tolerances: f32 roundoff (6e-8 per op) accumulates over the D- and T-long sums of the
    projections, the scores and p @ v; 1e-4 leaves a wide margin (measured worst about 5e-5).
    f64 vjp vs manual differ only by the order of the sums (measured worst about 1e-13); central
    differences with eps 1e-5 have truncation ~1e-10 and roundoff ~1e-11 (gradcheck default 1e-6).
    The params are random (biases too, see conftest.random_params), so every path counts.
    """
    layer = _jitted(layer)
    params, x = _setup(layer, shape, jnp.float32, seed)
    if not f64:
        r32 = bp.check_layer(layer, params, x, finite_differences=False, seed=seed)
        assert r32.ok, str(r32)
        return
    _, r64 = check_layer_f32_f64(layer, params, x, f32=f32, fd_directions=2, seed=seed)
    assert r64.max_rel_error <= 1e-10 and r64.max_fd_rel_error <= 1e-6


# Each example compiles its own programs (manual vs jax.vjp and the finite-difference objective, in
# float64): two drawn examples and an explicit one (two heads, causal, head_dim given with D != heads * hd)
# keep this file fast, the slow twin draws 20; the float32 check runs at fixed shapes below. ``extra``
# None uses the default head_dim = D // heads; an int passes head_dim=hd explicitly with
# D = heads * hd + extra.
ANY_SHAPE = dict(B=st.integers(1, 3), T=st.integers(1, 6), heads=st.integers(1, 3), hd=st.integers(1, 4),
                 causal=st.booleans(), bias=st.booleans(), extra=st.one_of(st.none(), st.integers(0, 3)))


@settings(max_examples=2)
@given(**ANY_SHAPE)
@example(B=2, T=5, heads=2, hd=3, causal=True, bias=False, extra=1)
def test_attention_f64_any_shape(B, T, heads, hd, causal, bias, extra):
    layer = L.MultiHeadSelfAttention(heads, causal=causal, bias=bias, head_dim=None if extra is None else hd)
    _check(layer, (B, T, heads * hd + (extra or 0)), seed=B + T, f32=False)


@pytest.mark.slow
@settings(max_examples=20)
@given(**ANY_SHAPE)
def test_attention_f64_any_shape_many(B, T, heads, hd, causal, bias, extra):
    test_attention_f64_any_shape.hypothesis.inner_test(B, T, heads, hd, causal, bias, extra)


@pytest.mark.parametrize("causal,bias", [(False, True), (True, False)])
def test_attention_f32_and_f64(causal, bias):
    _check(L.MultiHeadSelfAttention(2, causal=causal, bias=bias), (3, 5, 8))


def test_attention_explicit_head_dim_shapes():
    # head_dim given: D need not be divisible by the heads, and H*hd may differ from D
    # (its gradients are checked in test_attention_f64_any_shape and here in float32).
    layer = L.MultiHeadSelfAttention(3, head_dim=2, causal=True)
    out_shape, shapes = init_shapes(layer, (5, 7))
    assert out_shape == (5, 7) and shapes["Wq"] == (7, 6) and shapes["Wo"] == (6, 7)
    _check(layer, (2, 5, 7), f64=False)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_forward_matches_jax_dot_product_attention(causal):
    # An independent forward: jax.nn.dot_product_attention on the same projections.
    # jax.nn.dot_product_attention computes its softmax in float32 even for float64 inputs, so compare
    # in float32: roundoff ~1e-7 relative on O(1) outputs, 1e-5 leaves a margin.
    layer = MHA[causal]
    p, x = _setup(layer, (2, 6, 8), jnp.float32)
    y, _ = layer.forward(p, x)

    @jax.jit
    def reference(p, x):
        q, k, v = ((x @ p[f"W{c}"] + p[f"b{c}"]).reshape(2, 6, 2, 4) for c in "qkv")
        o = jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="xla")
        return o.reshape(2, 6, 8) @ p["Wo"] + p["bo"]

    np.testing.assert_allclose(y, reference(p, x), rtol=1e-5, atol=1e-5)


def test_attention_key_bias_gradient_is_exactly_zero():
    # softmax is shift-invariant, so bk has zero gradient; the backward writes the exact zero and
    # jax.vjp agrees up to roundoff (relative to the other gradients).
    with jax.enable_x64(True):
        layer = L.MultiHeadSelfAttention(2, causal=True)
        p, x = _setup(layer, (2, 5, 4), jnp.float64)
        dy = jnp.asarray(np.random.default_rng(3).standard_normal((2, 5, 4)))

        @jax.jit
        def manual_and_vjp(p, x, dy):
            y, res = layer.forward(p, x)
            return layer.backward(p, res, dy)[0], jax.vjp(lambda p: layer.forward(p, x)[0], p)[1](dy)[0]

        g, ref = manual_and_vjp(p, x, dy)
        assert np.all(np.asarray(g["bk"]) == 0)
        assert np.max(np.abs(ref["bk"])) < 1e-13 * np.max(np.abs(ref["bq"]))


@pytest.mark.parametrize("t", [0, 2, 4])
def test_causal_output_ignores_the_future(t):
    B, T, D = 2, 6, 8
    causal, full = MHA[True], MHA[False]
    p, x = _setup(causal, (B, T, D), jnp.float32)
    x2 = np.array(x)
    x2[:, t + 1:] += np.random.default_rng(9).standard_normal((B, T - t - 1, D)).astype(np.float32)
    x2 = jnp.asarray(x2)
    y, res = causal.forward(p, x)
    y2, _ = causal.forward(p, x2)
    # exact: positions <= t see exactly the same keys and values, and masked p entries are exactly 0
    np.testing.assert_array_equal(np.asarray(y)[:, :t + 1], np.asarray(y2)[:, :t + 1])
    # the same change does move the non-causal layer's output at t (so the test can fail)
    assert np.max(np.abs(np.asarray(full.forward(p, x)[0] - full.forward(p, x2)[0])[:, t])) > 1e-3
    # gradient of outputs at positions <= t with respect to inputs after t: exactly zero
    dy = np.zeros((B, T, D), np.float32)
    dy[:, :t + 1] = np.random.default_rng(4).standard_normal((B, t + 1, D))
    _, dx = causal.backward(p, res, jnp.asarray(dy))
    dx = np.asarray(dx)
    assert np.all(dx[:, t + 1:] == 0)
    assert np.max(np.abs(dx[:, :t + 1])) > 0


def test_causal_large_scores_stay_finite():
    # Huge inputs make the scores ~1e6: the masked softmax subtracts each row's (finite) max.
    layer = MHA[True]
    p, x = _setup(layer, (2, 6, 8), jnp.float32, scale=1e3)
    y, res = layer.forward(p, x)
    g, dx = layer.backward(p, res, jnp.ones((2, 6, 8), jnp.float32))
    assert all(np.all(np.isfinite(a)) for a in [y, dx, *jax.tree.leaves(g)])


def _lengths_mask(lengths, T):
    """``(B, T)`` bool: True at the first ``lengths[b]`` positions of row ``b`` (right padding)."""
    return jnp.arange(T)[None, :] < jnp.asarray(lengths)[:, None]


@pytest.mark.parametrize("causal", [False, True])
def test_padding_mask_f64_and_finite_differences(causal):
    # The mask input (x, mask) checked like the causal mask: manual vs jax.vjp in float64 at 1e-10 and
    # central differences (the _check tolerances), with lengths 5, 2 and 0: a fully padded row included.
    layer = jl = MHA[causal]
    mask = _lengths_mask([5, 2, 0], 5)
    with jax.enable_x64(True):
        params, x = _setup(layer, (3, 5, 8), jnp.float64)
        r64 = bp.check_layer(jl, params, (x, mask), rtol=1e-10, finite_differences=True, fd_directions=2)
    assert r64.ok, str(r64)
    assert r64.max_rel_error <= 1e-10 and r64.max_fd_rel_error <= 1e-6
    params, x = _setup(layer, (3, 5, 8), jnp.float32)
    r32 = bp.check_layer(jl, params, (x, mask), finite_differences=False)
    assert r32.ok, str(r32)


def test_padding_mask_hides_the_padded_keys():
    # A padded sequence gives, at its real positions, exactly what the unpadded sequence gives (up to
    # the order of the sums: f32 roundoff, 1e-6 on O(1) outputs); the padding values do not matter.
    layer = MHA[False]
    p, x = _setup(layer, (2, 6, 8), jnp.float32)
    mask = _lengths_mask([4, 6], 6)
    y, res = layer.forward(p, (x, mask))
    y = np.asarray(y)
    y_short = np.asarray(layer.forward(p, jnp.asarray(np.asarray(x)[:1, :4]))[0])
    np.testing.assert_allclose(y[0, :4], y_short[0], rtol=1e-6, atol=1e-6)
    x_other_pads = np.array(x)
    x_other_pads[0, 4:] = 100.0
    np.testing.assert_array_equal(np.asarray(layer.forward(p, (jnp.asarray(x_other_pads), mask))[0])[0, :4], y[0, :4])
    # and the unmasked layer does see the padding (so the test can fail)
    assert np.max(np.abs(np.asarray(layer.forward(p, x)[0])[0, :4] - y_short[0])) > 1e-3
    # no gradient flows into the padded inputs from the real outputs
    dy = np.zeros((2, 6, 8), np.float32)
    dy[0, :4] = 1.0
    _, (dx, dmask) = layer.backward(p, res, jnp.asarray(dy))
    dx = np.asarray(dx)
    assert np.all(dx[0, 4:] == 0) and np.max(np.abs(dx[0, :4])) > 0
    assert dmask.dtype == jax.dtypes.float0 and dmask.shape == mask.shape


@pytest.mark.parametrize("causal", [False, True])
def test_fully_masked_rows_are_finite(causal):
    # An all-padding sequence: every query row sees no key. p = 0 there, so y = bo, and neither the
    # forward, the manual backward nor jax.vjp of the forward produces NaN.
    layer = MHA[causal]
    p, x = _setup(layer, (2, 6, 8), jnp.float32, scale=1e3)
    mask = np.zeros((2, 6), bool)
    mask[1, :2] = True
    mask = jnp.asarray(mask)
    y, res = layer.forward(p, (x, mask))
    np.testing.assert_array_equal(np.asarray(y)[0], np.broadcast_to(p["bo"], (6, 8)))
    dy = jnp.ones((2, 6, 8), jnp.float32)
    g, (dx, _) = layer.backward(p, res, dy)
    ref_p, ref_x = jax.jit(lambda p, x, dy: jax.vjp(lambda p, x: layer.forward(p, (x, mask))[0], p, x)[1](dy))(p, x, dy)
    for a in [y, dx, ref_x, *jax.tree.leaves(g), *jax.tree.leaves(ref_p)]:
        assert np.all(np.isfinite(a))
    assert np.all(np.asarray(dx)[0] == 0)


def test_padding_mask_errors():
    layer = L.MultiHeadSelfAttention(2)
    p = _params(layer, (5, 8), jnp.float32)
    x = jnp.asarray(np.ones((2, 5, 8), np.float32))
    with pytest.raises(bp.BpjaxError, match=r"mask must have shape \(B, T\) = \(2, 5\).*got \(2, 4\)"):
        layer.forward(p, (x, jnp.ones((2, 4), bool)))
    with pytest.raises(bp.BpjaxTypeError, match="mask must be boolean.*got dtype float32"):
        layer.forward(p, (x, jnp.ones((2, 5))))
    with pytest.raises(bp.BpjaxError, match=r"pair \(x, mask\).*length 3"):
        layer.forward(p, (x, x, x))
    # an integer 0/1 mask is the boolean one (compiled: one program per mask dtype, not one per op)
    ints, bools = jnp.asarray([[1, 1, 1, 0, 0]] * 2), _lengths_mask([3, 3], 5)
    np.testing.assert_array_equal(MHA[False].forward(p, (x, ints))[0], MHA[False].forward(p, (x, bools))[0])


def test_attention_keywords():
    # init=, stddev=, dtype= are keyword-only; dtype sets every parameter's dtype
    layer = L.MultiHeadSelfAttention(2, init="normal", stddev=0.02, dtype=jnp.float16, bias=False)
    _, p = layer.init(jax.random.key(0), (5, 8))
    assert sorted(p) == ["Wk", "Wo", "Wq", "Wv"] and all(a.dtype == jnp.float16 for a in p.values())
    assert 0.01 < np.std(np.asarray(p["Wq"], np.float32)) < 0.03
    # mlp_features=8: every weight matrix (8, 8), one float16 sampler compiled for all
    block = L.TransformerBlock(2, mlp_features=8, dtype=jnp.float16, init="normal", stddev=0.02)
    _, bp_ = block.init(jax.random.key(0), (5, 8))
    assert {a.dtype for a in jax.tree.leaves(bp_)} == {jnp.dtype(jnp.float16)}
    with pytest.raises(TypeError):
        L.TransformerBlock(2, 12)  # mlp_features is keyword-only
    with pytest.raises(bp.BpjaxTypeError, match="dtype must be a real floating-point dtype"):
        L.MultiHeadSelfAttention(2, dtype=jnp.int32)


def test_attention_dropout_f64_and_eval():
    # Dropout of p (GPT-2's attn_pdrop): the layer is contextual; one key gives the hand-written backward and
    # jax.vjp the same mask (float64, rtol 1e-10 as in _check; finite differences of the same function are
    # checked without dropout above: the masks' sampler doubles the compile time of each program).
    raw = L.MultiHeadSelfAttention(2, causal=True, dropout=0.3)
    assert bp.is_contextual(raw) and not bp.is_contextual(MHA[True])
    layer = raw._replace(forward=jax.jit(raw.forward, static_argnames="train"), backward=jax.jit(raw.backward))
    key = jax.random.key(3, impl="rbg")  # XLA's RngBitGenerator: compiles in half of threefry's time on a CPU
    with jax.enable_x64(True):
        params, x = _setup(layer, (2, 6, 8), jnp.float64)
        r64 = bp.check_layer(layer, params, x, state=(), key=key, rtol=1e-10, finite_differences=False)
        assert r64.ok and r64.max_rel_error <= 1e-10, str(r64)
        forward = layer.forward
        # the mask drops about 30% of p's entries (here 2 x 2 x 6 x 6 = 144), and is what the backward reads
        mask = jax.tree.leaves(forward(params, x, state=(), key=key, train=True)[1][-1])
        assert len(mask) == 1 and mask[0].shape == (2, 2, 6, 6) and 0.15 < 1 - np.mean(mask[0]) < 0.45
        # eval mode: no key, no mask, the output of the layer without dropout (the same program's ops)
        y, res, _ = forward(params, x, state=(), key=None, train=False)
        assert jax.tree.leaves(res[-1]) == []
        np.testing.assert_array_equal(y, jax.jit(L.MultiHeadSelfAttention(2, causal=True).forward)(params, x)[0])
        with pytest.raises(bp.BpjaxError, match=r"MultiHeadSelfAttention\(2, causal\) Dropout\(0.3\): train mode "
                                                r"with rate > 0 needs a PRNG key"):
            forward(params, x, state=(), key=None, train=True)


def test_transformer_block_options():
    # The params have one structure whatever the dropout rates (the slots are () either way); the block is
    # contextual exactly when a rate is above 0; out_init draws the attention's Wo and the MLP's second W.
    plain = L.TransformerBlock(2, mlp_features=12, init="ones", out_init="zeros")
    dropped = L.TransformerBlock(2, mlp_features=12, approximate_gelu=True, attention_dropout=0.1,
                                 residual_dropout=0.2)
    assert not bp.is_contextual(plain) and bp.is_contextual(dropped)
    assert init_shapes(plain, (5, 8)) == init_shapes(dropped, (5, 8))
    ((_, attn, slot), (_, fc, gelu, proj, slot2)) = jax.jit(lambda k: plain.init(k, (5, 8))[1])(jax.random.key(0))
    assert slot == gelu == slot2 == () and np.all(np.asarray(attn["Wo"]) == 0) and np.all(np.asarray(proj["W"]) == 0)
    assert np.all(np.asarray(attn["Wq"]) == 1) and np.all(np.asarray(fc["W"]) == 1)
    # eval mode: no key, and exactly the block without dropout (its tanh GELU is checked against transformers'
    # gelu_new in test_gpt2_checkpoint.py)
    p, x = _setup(plain, (2, 5, 8), jnp.float32)
    y = jax.jit(lambda p, x: dropped.forward(p, x, state=initial_state(dropped, (5, 8)), key=None, train=False)[0])
    without = jax.jit(L.TransformerBlock(2, mlp_features=12, approximate_gelu=True).forward)
    np.testing.assert_array_equal(y(p, x), without(p, x)[0])


@pytest.mark.slow
def test_attention_under_jit_and_as_custom_vjp():
    layer = L.MultiHeadSelfAttention(2, causal=True)
    p, x = _setup(layer, (2, 4, 6), jnp.float32)
    f = bp.as_custom_vjp(layer)
    g1 = jax.jit(jax.grad(lambda p, x: jnp.sum(f(p, x) ** 2), argnums=(0, 1)))(p, x)
    g2 = jax.grad(lambda p, x: jnp.sum(layer.forward(p, x)[0] ** 2), argnums=(0, 1))(p, x)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)  # f32, as in _check


def test_attention_errors():
    with pytest.raises(bp.BpjaxError, match=r"MultiHeadSelfAttention\(3\).*D=8 is not divisible by num_heads=3"):
        L.MultiHeadSelfAttention(3).init(jax.random.key(0), (5, 8))
    with pytest.raises(bp.BpjaxError, match="num_heads must be a positive int, got 0"):
        L.MultiHeadSelfAttention(0)
    with pytest.raises(bp.BpjaxError, match="head_dim must be a positive int, got -2"):
        L.MultiHeadSelfAttention(2, head_dim=-2)
    layer = L.MultiHeadSelfAttention(2)
    with pytest.raises(bp.BpjaxError, match=r"expected an input shape \(T, D\).*got \(8,\)"):
        layer.init(jax.random.key(0), (8,))
    p = _params(layer, (5, 8), jnp.float32)
    with pytest.raises(bp.BpjaxError, match=r"MultiHeadSelfAttention\(2\).*rank-3 input \(B, T, D\).*\(5, 8\)"):
        layer.forward(p, jnp.ones((5, 8)))
    with pytest.raises(bp.BpjaxError, match=r"expected input with 8 features.*\(B, T, 8\).*got shape \(2, 5, 6\)"):
        layer.forward(p, jnp.ones((2, 5, 6)))
    with pytest.raises(bp.BpjaxTypeError, match="floating-point input.*int32"):
        layer.forward(p, jnp.ones((2, 5, 8), jnp.int32))
    with pytest.raises(bp.BpjaxError, match=r"expected keys \['Wk', 'Wo'.*got \['Wq'\]"):
        layer.forward({"Wq": p["Wq"]}, jnp.ones((2, 5, 8)))
    with pytest.raises(bp.BpjaxError, match=r"expected Wo \(8, 8\).*got \(4, 8\)"):
        layer.forward({**p, "Wo": p["Wo"][:4]}, jnp.ones((2, 5, 8)))
    # shape errors are raised at trace time, inside jit too
    with pytest.raises(bp.BpjaxError, match="expected input with 8 features"):
        jax.jit(layer.forward)(p, jnp.ones((2, 5, 6)))


def test_transformer_block_f32():
    layer = L.TransformerBlock(2, mlp_features=12)
    out_shape, shapes = init_shapes(layer, (5, 8))
    assert out_shape == (5, 8)
    assert shapes[0][1]["Wq"] == (8, 8) and shapes[1][1]["W"] == (8, 12) and shapes[1][3]["W"] == (12, 8)
    # float64 and finite differences for the block come from the tiny transformer test below
    _check(layer, (2, 5, 8), f64=False)


def _token_xent(logits, targets):
    """Mean next-token cross-entropy over (B, T): logits (B, T, V), integer targets (B, T)."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))


def _tiny_lm(embed, blocks, vocab=7):
    """embed -> blocks x TransformerBlock(2 heads, width 8, mlp_features 16, causal) -> LayerNorm -> Dense(vocab)."""
    return bp.serial(embed, *[L.TransformerBlock(2, mlp_features=16) for _ in range(blocks)], L.LayerNorm(),
                     L.Dense(vocab))


def test_tiny_causal_transformer_check_gradients_f64():
    # Float inputs (a Dense "embedding" of one-hot-like vectors) so the input gradient is checked too.
    B, T, vocab = 2, 6, 7
    with jax.enable_x64(True):
        model = _tiny_lm(L.Dense(8), blocks=1)  # one block: the compile dominates this test
        params = _params(model, (T, vocab), jnp.float64)
        rng = np.random.default_rng(1)
        x = jnp.asarray(rng.standard_normal((B, T, vocab)))
        y = jnp.asarray(rng.integers(0, vocab, (B, T)), jnp.int32)
        report = bp.check_gradients(model, _token_xent, params, x, y, rtol=1e-10, finite_differences=True,
                                    fd_directions=1)
    assert report.ok, str(report)
    assert len(report.rows) == len(jax.tree.leaves(params)) + 1


# ~6 s with two workers on 2 cores: slow. By default the GPT of test_gpt.py (token Embedding, causal blocks) is
# compared with jax.grad and PyTorch in float64, and the causal mask with the padding mask in this file.
@pytest.mark.slow
def test_tiny_causal_transformer_with_embedding_f64():
    # Integer token ids: compare every parameter gradient of the hand-written backward with jax.grad.
    B, T, vocab = 2, 6, 7
    with jax.enable_x64(True):
        model = _tiny_lm(L.Embedding(vocab, 8), blocks=2)
        params = _params(model, (T,), jnp.float64)
        ids = np.random.default_rng(1).integers(0, vocab, (B, T)).astype(np.int32)
        targets = jnp.asarray(np.roll(ids, -1, axis=1))
        ids = jnp.asarray(ids)
        v1, g1 = jax.jit(bp.value_and_grad(model, _token_xent))(params, ids, targets)
        v2, g2 = jax.jit(bp.autodiff_value_and_grad(model, _token_xent))(params, ids, targets)
        g1, g2 = (jax.tree.map(np.asarray, g) for g in (g1, g2))
        scale = max(np.max(np.abs(b)) for b in jax.tree.leaves(g2))
        # f64, same forward: the gradients differ only in the order of the sums (~1e-16 relative)
        errs = [np.max(np.abs(a - b)) / scale for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2))]
        assert abs(float(v1) - float(v2)) < 1e-12 and max(errs) < 1e-10, errs
        # causal LM: the logits at position t do not depend on the tokens after t
        forward = jax.jit(lambda p, ids: model.forward(p, ids)[0])
        later = np.array(ids)
        later[:, 3:] = (later[:, 3:] + 1) % vocab
        y1, y2 = np.asarray(forward(params, ids)), np.asarray(forward(params, jnp.asarray(later)))
        np.testing.assert_array_equal(y1[:, :3], y2[:, :3])
        assert np.max(np.abs(y1[:, 3:] - y2[:, 3:])) > 1e-3


def test_transformer_block_errors():
    with pytest.raises(bp.BpjaxError, match="mlp_features must be a positive int, got 0"):
        L.TransformerBlock(2, mlp_features=0)
    with pytest.raises(bp.BpjaxError, match=r"TransformerBlock.*MultiHeadSelfAttention.*D=8 is not divisible by "
                                            r"num_heads=3"):
        L.TransformerBlock(3, mlp_features=4).init(jax.random.key(0), (5, 8))
    layer = L.TransformerBlock(2, mlp_features=4)
    p = _params(layer, (5, 8), jnp.float32)
    with pytest.raises(bp.BpjaxError, match=r"TransformerBlock.*rank-3 input \(B, T, D\).*\(5, 8\)"):
        layer.forward(p, jnp.ones((5, 8)))
    with pytest.raises(bp.BpjaxError, match=r"TransformerBlock.*LayerNorm.*expected input with 8 features.*"
                                            r"got shape \(2, 5, 6\)"):
        layer.forward(p, jnp.ones((2, 5, 6)))
