"""llm.c's test for bpjax: the GPT's logits, loss and every gradient against jax.grad and PyTorch, then 10 AdamW steps.

Also the weight-tying combinator (``bp.tie``) on its own, the position embedding, the token loss and
``generate``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import initial_state, random_params

import bpjax as bp
from bpjax import layers as L
from bpjax import zoo

V, T, D, LAYERS, HEADS, B = 11, 8, 16, 2, 2, 3


def _gpt():
    return zoo.gpt(V, context=T, features=D, num_layers=LAYERS, num_heads=HEADS)


def _batch(seed, n=B):
    """``n`` windows ``(n, T)`` of a random token stream and their next-token targets (numpy: no eager
    jax.random compile per shape)."""
    stream = np.random.default_rng(seed).integers(0, V, n * (T + 1))
    x, y = zoo.token_windows(stream, T, starts=np.arange(n) * (T + 1))
    return jnp.asarray(x, jnp.int32), jnp.asarray(y, jnp.int32)


def _shifted(params, seed=0, scale=0.1):
    """Params plus a small random shift: biases and layer norms start at 0 and 1, and every path should count.
    (numpy arithmetic: an eager jax op per leaf shape would compile each.)"""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: jnp.asarray(np.asarray(a) + scale * rng.standard_normal(a.shape), a.dtype), params)


def _params(model, seed=0, dtype=jnp.float32):
    """Params of ``model``'s structure and shapes (``jax.eval_shape`` of its init: nothing compiles), drawn with
    numpy: layer-norm scales ``1 + 0.1 N(0, 1)``, everything else ``0.15 N(0, 1)`` (biases too, so that every
    path counts). Compiling the init costs seconds of random-number kernels; these tests check gradients,
    not the initialiser (``test_gpt_structure`` checks its shapes)."""
    shapes = jax.eval_shape(lambda k: model.init(k, (T,))[1], jax.random.key(0))
    rng = np.random.default_rng(seed)

    def draw(path, s):
        base = 1.0 if jax.tree_util.keystr(path).endswith("['scale']") else 0.0
        return jnp.asarray(base + (0.1 if base else 0.15) * rng.standard_normal(s.shape), dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


# ---------------------------------------------------------------------------------------------- tie


def _tied_mlp():
    """``x: (B, 3) -> Dense(5) -> Tanh -> Dense(3)`` with the second W the transpose of the first."""
    return bp.tie(bp.serial(L.Dense(5), L.Tanh(), L.Dense(3)), source=(0, "W"), target=(-1, "W"), transpose=True)


def test_tie_params_and_forward():
    model = _tied_mlp()
    _, p = model.init(jax.random.key(0), (3,))
    assert p[2]["W"] == () and p[0]["W"].shape == (3, 5) and len(jax.tree.leaves(p)) == 3  # W1, b1, b2
    assert model.children[0].name.startswith("serial(Dense(5)")
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    y, _ = jax.jit(model.forward)(p, jnp.asarray(x))  # compiled: one program, not one per eager op
    W, b1, b2 = (np.asarray(a) for a in (p[0]["W"], p[0]["b"], p[2]["b"]))
    ref = np.tanh(x @ W + b1) @ W.T + b2  # numpy, float32
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-6)  # f32, the same ops in another order


def test_tie_gradients_f64_f32_and_finite_differences():
    # The gradient of the shared W is the sum of its two uses: check_layer compares it with jax.vjp of the
    # tied forward (which sees W twice) in float64 (rtol 1e-10, central differences) and float32 (1e-4).
    model = _tied_mlp()
    _, p = model.init(jax.random.key(0), (3,))
    x = np.random.default_rng(1).standard_normal((4, 3))
    with jax.enable_x64(True):
        p64, x64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), (_shifted(p), x))
        r = bp.check_layer(model, p64, x64, rtol=1e-10, finite_differences=True)
        assert r.ok and r.max_fd_rel_error < 1e-6, str(r)
        # and the shared gradient is the sum of the untied model's two gradients, the second transposed
        untied = model.children[0]

        @jax.jit
        def both(p, x, dy):
            full = (p[0], p[1], {**p[2], "W": p[0]["W"].T})
            return (untied.backward(full, untied.forward(full, x)[1], dy)[0],
                    model.backward(p, model.forward(p, x)[1], dy)[0])

        g_untied, g_tied = both(p64, x64, jnp.ones((4, 3), jnp.float64))
        np.testing.assert_allclose(g_tied[0]["W"], g_untied[0]["W"] + g_untied[2]["W"].T, rtol=1e-13)
    r32 = bp.check_layer(model, _shifted(p), jnp.asarray(x, jnp.float32), finite_differences=False)
    assert r32.ok, str(r32)


@pytest.mark.slow
def test_tie_without_transpose_and_with_a_contextual_model():
    # The same matrix in two Dense layers (no transpose), with dropout in between: check_gradients threads
    # the key and state through tie; float64, rtol 1e-10, and finite differences at the same dropout mask.
    model = bp.tie(bp.serial(L.Dense(4), L.Dropout(0.5), L.Tanh(), L.Dense(4)), source=(0, "W"), target=(3, "W"))
    assert bp.is_contextual(model)
    with jax.enable_x64(True):
        _, p = model.init(jax.random.key(0), (4,))
        state = bp.init_state(model, jax.random.key(1), (4,))
        x = jnp.asarray(np.random.default_rng(2).standard_normal((6, 4)))
        y = jnp.asarray(np.random.default_rng(3).standard_normal((6, 4)))
        r = bp.check_gradients(model, bp.losses.mse, _shifted(p), x, y, state=state, key=jax.random.key(2),
                               rtol=1e-10, finite_differences=True)
    assert r.ok, str(r)
    assert [row.name for row in r.rows] == ["params[0]['W']", "params[0]['b']", "params[3]['b']", "input x"]


def test_tie_errors():
    body = bp.serial(L.Dense(5), L.Tanh(), L.Dense(3))
    with pytest.raises(bp.BpjaxError, match=r"target \(2, 'W'\) must have shape \(3, 5\).*got shape \(5, 3\)"):
        bp.tie(body, source=(0, "W"), target=(2, "W")).init(jax.random.key(0), (3,))
    with pytest.raises(bp.BpjaxError, match=r"target \(5, 'W'\) does not exist.*expected one of indices 0..2"):
        bp.tie(body, source=(0, "W"), target=(5, "W"), transpose=True).init(jax.random.key(0), (3,))
    with pytest.raises(bp.BpjaxError, match=r"source \(0, 'E'\) does not exist.*expected one of \['W', 'b'\]"):
        bp.tie(body, source=(0, "E"), target=(2, "W"), transpose=True).init(jax.random.key(0), (3,))
    with pytest.raises(bp.BpjaxError, match="the same leaf"):
        bp.tie(body, source=(0, "W"), target=(-3, "W")).init(jax.random.key(0), (3,))
    with pytest.raises(bp.BpjaxTypeError, match="source must be a non-empty tuple"):
        bp.tie(body, source="W", target=(2, "W")).init(jax.random.key(0), (3,))
    with pytest.raises(bp.BpjaxTypeError, match="tie: expected a bpjax Layer"):
        bp.tie(L.Dense, source=(0, "W"), target=(2, "W"))
    model = bp.tie(body, source=(0, "W"), target=(2, "W"), transpose=True)
    _, p = body.init(jax.random.key(0), (3,))  # untied params: the target still holds an array
    with pytest.raises(bp.BpjaxError, match=r"expected \(\) at the target \(2, 'W'\)"):
        model.forward(p, jnp.ones((2, 3)))


# ---------------------------------------------------------------------------------------------- GPT pieces


def test_gpt_structure():
    model = _gpt()
    p = jax.eval_shape(lambda k: model.init(k, (T,))[1], jax.random.key(0))
    assert p[0]["E"].shape == (V, D) and p[1]["P"].shape == (T, D) and p[2] == () and p[-1] == {"W": ()}
    assert len(p) == 3 + LAYERS + 2 and not bp.is_contextual(model)  # E, P, the dropout slot, blocks, ln_f, W
    assert zoo.gpt_config(model) == dict(vocab=V, context=T, features=D, num_layers=LAYERS, num_heads=HEADS,
                                         mlp_features=4 * D, bias=True, approximate_gelu=True, embed_dropout=0.0,
                                         attention_dropout=0.0, residual_dropout=0.0, stddev=0.02, dtype=None)
    assert zoo.gpt_config(model._replace(name="renamed"))["context"] == T and zoo.gpt_config(L.Dense(3)) is None
    n = sum(a.size for a in jax.tree.leaves(p))
    # E, P; per block 2 LayerNorms, q k v o with biases, MLP D -> 4D -> D with biases; final LayerNorm
    per_block = 2 * 2 * D + 4 * (D * D + D) + (D * 4 * D + 4 * D) + (4 * D * D + D)
    assert n == V * D + T * D + LAYERS * per_block + 2 * D
    p = _params(model)
    # causal: the logits at t do not depend on the tokens after t
    ids, _ = _batch(0)
    forward = jax.jit(lambda p, ids: model.forward(p, ids)[0])
    later = np.array(ids)
    later[:, 4:] = (later[:, 4:] + 1) % V
    y1, y2 = np.asarray(forward(p, ids)), np.asarray(forward(p, jnp.asarray(later)))
    np.testing.assert_array_equal(y1[:, :4], y2[:, :4])
    assert np.max(np.abs(y1[:, 4:] - y2[:, 4:])) > 1e-3


def test_position_embedding_f64_and_errors():
    layer = zoo.PositionEmbedding(6)
    with jax.enable_x64(True):
        p = random_params(layer, (4, 3), dtype=jnp.float64)  # numpy draws: no sampler compiled
        x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 4, 3)))
        r = bp.check_layer(layer, p, x, rtol=1e-10)
    assert r.ok and r.max_fd_rel_error < 1e-6, str(r)
    with pytest.raises(bp.BpjaxError, match=r"PositionEmbedding\(6\).*T <= 6.*got T=7"):
        layer.init(jax.random.key(0), (7, 3))
    with pytest.raises(bp.BpjaxError, match=r"PositionEmbedding\(6\).*\(B, T, 3\) with T <= 6, got T=4 and D=5"):
        layer.forward(random_params(layer, (4, 3)), jnp.ones((2, 4, 5)))


def test_token_cross_entropy_is_the_mean_over_positions():
    rng = np.random.default_rng(0)
    z = jnp.asarray(rng.standard_normal((2, 3, 5)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 5, (2, 3)), jnp.int32)

    def ref_loss(z, y):
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(z), y[..., None], -1))

    both = jax.jit(lambda z, y: (zoo.token_cross_entropy.value_and_grad(z, y), jax.value_and_grad(ref_loss)(z, y)))
    (v, dz), (ref, ref_dz) = both(z, y)
    np.testing.assert_allclose(v, ref, rtol=1e-6)  # f32 roundoff of a 6-term mean
    np.testing.assert_allclose(dz, ref_dz, rtol=1e-5, atol=1e-7)
    with pytest.raises(bp.BpjaxError, match=r"token_cross_entropy: expected integer targets \(B, T\).*got float32"):
        zoo.token_cross_entropy(z, y.astype(jnp.float32))
    with pytest.raises(bp.BpjaxError, match=r"labels must lie in \[0, 5\)"):
        zoo.token_cross_entropy(z, y.at[0, 0].set(7))


def test_generate():
    model = zoo.gpt(V, context=T, features=8, num_layers=1, num_heads=2)  # one block: generate compiles its loop
    p = _params(model)
    forward = jax.jit(lambda p, ids: model.forward(p, ids)[0])
    prompt = jnp.asarray([[1, 2, 3], [4, 5, 6]], jnp.int32)
    out = zoo.generate(model, p, prompt, 12, key=jax.random.key(1), top_k=3)  # the window: the model's context
    assert out.shape == (2, 15) and out.dtype == jnp.int32
    np.testing.assert_array_equal(out[:, :3], prompt)
    # greedy: each token is the argmax of the model's logits on the window before it
    greedy = zoo.generate(model, p, prompt, 12, key=jax.random.key(1), temperature=0)
    for pos in (7, 14):  # before and after the window fills
        window = greedy[:, max(0, pos - T):pos]
        logits = forward(p, window)[:, -1]
        np.testing.assert_array_equal(greedy[:, pos], jnp.argmax(logits, -1))
    # context=T given is the default (the same compiled loop)
    np.testing.assert_array_equal(zoo.generate(model, p, prompt, 12, key=jax.random.key(1), context=T,
                                               temperature=0), greedy)
    with pytest.raises(bp.BpjaxError, match="temperature must be a number >= 0, got -1"):
        zoo.generate(model, p, prompt, 4, key=jax.random.key(0), temperature=-1)
    with pytest.raises(bp.BpjaxError, match=r"prompt must be integer ids of shape \(B, P\)"):
        zoo.generate(model, p, prompt[0], 4, key=jax.random.key(0))


def test_token_windows():
    ids = np.arange(100, dtype=np.int32)
    x, y = zoo.token_windows(ids, 4)  # consecutive, non-overlapping: (100 - 1) // 4 windows
    assert x.shape == y.shape == (24, 4)
    np.testing.assert_array_equal(x[1], [4, 5, 6, 7])
    np.testing.assert_array_equal(y, x + 1)
    assert y[-1, -1] == 96
    x, y = zoo.token_windows(ids, 99)  # the longest window: all but the last token, and its targets
    np.testing.assert_array_equal(x, ids[None, :-1])
    np.testing.assert_array_equal(y, ids[None, 1:])
    x, y = zoo.token_windows(ids, 3, starts=np.array([[0, 96], [5, 7]]))  # any offsets, any shape
    assert x.shape == (2, 2, 3) and list(x[0, 1]) == [96, 97, 98] and list(y[0, 1]) == [97, 98, 99]
    with pytest.raises(bp.BpjaxError, match=r"starts must be integer offsets in \[0, 96\].*got int64 in \[0, 97\]"):
        zoo.token_windows(ids, 3, starts=np.array([0, 97]))
    with pytest.raises(bp.BpjaxError, match=r"T \+ 1 <= len\(ids\) = 100 tokens; expected T <= 99"):
        zoo.token_windows(ids, 100)
    with pytest.raises(bp.BpjaxError, match=r"ids must be a 1-D array of integer token ids, got float64 \(4, 25\)"):
        zoo.token_windows(np.zeros((4, 25)), 3)


# ---------------------------------------------------------------------------------------------- llm.c's test


def _torch_gpt(tp, ids):
    """The same GPT written with torch ops on the bpjax param layout; ``tp`` mirrors the bpjax params."""
    import torch
    import torch.nn.functional as F

    def ln(p, x):
        return F.layer_norm(x, (x.shape[-1],), p["scale"], p["b"], eps=1e-5)

    Bn, Tn = ids.shape
    x = tp[0]["E"][ids] + tp[1]["P"][:Tn]
    causal = torch.tril(torch.ones(Tn, Tn, dtype=torch.bool))
    for (ln1, attn, _), (ln2, fc, _, proj, _) in tp[3:-2]:
        h = ln(ln1, x)
        q, k, v = ((h @ attn[f"W{c}"] + attn[f"b{c}"]).view(Bn, Tn, HEADS, -1).transpose(1, 2) for c in "qkv")
        s = (q @ k.transpose(-1, -2)) / (q.shape[-1] ** 0.5)
        a = torch.softmax(s.masked_fill(~causal, float("-inf")), -1) @ v
        x = x + a.transpose(1, 2).reshape(Bn, Tn, -1) @ attn["Wo"] + attn["bo"]
        x = x + F.gelu(ln(ln2, x) @ fc["W"] + fc["b"], approximate="tanh") @ proj["W"] + proj["b"]  # GPT-2's GELU
    return ln(tp[-2], x) @ tp[0]["E"].T  # tied: logits = h @ E^T


def _to_torch(params, dtype):
    import torch

    return jax.tree.map(lambda a: torch.tensor(np.asarray(a), dtype=dtype, requires_grad=True), params)


def test_gpt_f64_equals_jax_grad():
    # llm.c's check, against jax.grad of the same forward: logits, loss and every parameter gradient, float64,
    # with dropout in its three places (GPT-2's embd_pdrop, attn_pdrop, resid_pdrop): one key gives the
    # hand-written backward and jax.grad the same masks. Same forward, different backward: only the order of the
    # sums differs (~1e-16 relative per operation); 1e-10 relative (check_gradients' float64 default) separates a
    # wrong backward from roundoff. Without dropout the GPT of two blocks is checked against transformers' GPT-2
    # (test_gpt2_checkpoint.py); one block here has every path of the dropout backward, and each mask's sampler
    # adds compile time (four of them doubled this test's).
    model = zoo.gpt(V, context=T, features=D, num_layers=1, num_heads=HEADS, embed_dropout=0.1,
                    attention_dropout=0.2, residual_dropout=0.3)
    assert bp.is_contextual(model)
    with jax.enable_x64(True):
        p = _params(model, dtype=jnp.float64)
        # an rbg key (XLA's RngBitGenerator): its masks compile in half of threefry's time on a CPU
        state, key = initial_state(model, (T,)), jax.random.key(5, impl="rbg")
        ids, targets = _batch(1)
        # the masks travel in the residuals: one (B, T, D) for the embeddings, per block (B, H, T, T) for p and
        # two (B, T, D) for the branches
        masks = [r.shape for r in jax.tree.leaves(jax.eval_shape(
            lambda p: model.forward(p, ids, state=state, key=key, train=True)[1], p)) if r.dtype == jnp.bool_]
        assert sorted(masks) == sorted([(B, T, D)] * 3 + [(B, HEADS, T, T)])
        report = bp.check_gradients(model, zoo.token_cross_entropy, p, ids, targets, state=state, key=key,
                                    rtol=1e-10)
    assert report.ok, str(report)
    # every parameter has its row (E, P, 16 per block, the final LayerNorm's 2); the ids get no gradient
    assert len(report.rows) == len(jax.tree.leaves(p)) == 4 + 16
    assert report.max_rel_error < 1e-10


def test_gpt_init_scales_the_output_projections():
    # GPT-2's initialisation: N(0, 0.02^2) weights, except each block's attention Wo and MLP output W (GPT-2's
    # c_proj), N(0, 0.02^2 / (2 L)); biases 0, LayerNorm scales 1. 64 x 64 = 4096 draws estimate a standard
    # deviation within 1.1% (one sigma): 5% is 4.5 sigma.
    L_, D_ = 2, 64
    model = zoo.gpt(V, context=T, features=D_, num_layers=L_, num_heads=2)
    p = jax.jit(lambda k: model.init(k, (T,))[1])(jax.random.key(0, impl="rbg"))  # rbg: a quick sampler to compile
    (ln1, attn, _), (ln2, fc, _, proj, _) = p[3]
    small = 0.02 / np.sqrt(2 * L_)
    for a, std in [(attn["Wo"], small), (proj["W"], small), (attn["Wq"], 0.02), (fc["W"], 0.02), (p[0]["E"], 0.02)]:
        assert abs(np.std(np.asarray(a)) / std - 1) < 0.05, (a.shape, np.std(np.asarray(a)), std)
    assert np.all(np.asarray(attn["bo"]) == 0) and np.all(np.asarray(ln2["scale"]) == 1)


# Slow: by default tests/test_gpt2_checkpoint.py compares the same GPT (loaded from a checkpoint of transformers'
# GPT2LMHeadModel) with transformers' own, in float64: logits, loss, every gradient and 10 AdamW steps.
@pytest.mark.slow
def test_gpt_f64_equals_pytorch():
    # The same weights in a GPT written with torch ops: logits, loss and every gradient in float64. Two
    # implementations, the same maths: roundoff ~1e-16 per operation; 1e-10 relative leaves a wide margin.
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch): the bpjax vs PyTorch "
                                                "comparison is skipped; the jax.grad comparison still runs")
    model = _gpt()
    with jax.enable_x64(True):
        p = _params(model, dtype=jnp.float64)
        ids, targets = _batch(2)

        @jax.jit
        def run(p, ids, targets):
            return model.forward(p, ids)[0], bp.value_and_grad(model, zoo.token_cross_entropy)(p, ids, targets)

        logits, (value, grads) = run(p, ids, targets)
    tp = _to_torch(p, torch.float64)
    t_logits = _torch_gpt(tp, torch.tensor(np.asarray(ids), dtype=torch.long))
    t_targets = torch.tensor(np.asarray(targets).ravel(), dtype=torch.long)
    t_loss = torch.nn.functional.cross_entropy(t_logits.reshape(-1, V), t_targets)
    t_loss.backward()
    flat_g, flat_t = jax.tree.leaves(grads), jax.tree.leaves(jax.tree.map(lambda t: t.grad.numpy(), tp))
    assert len(flat_g) == len(flat_t) == len(jax.tree.leaves(p))
    # relative to each leaf's largest entry, floored at 1e-3 of the largest over all leaves (check_gradients'
    # measure): the key bias's true gradient is 0 (bpjax writes the exact zero, torch sums roundoff)
    floor = 1e-3 * max(np.max(np.abs(t)) for t in flat_t)
    errors = [np.max(np.abs(np.asarray(g) - t)) / max(np.max(np.abs(t)), floor) for g, t in zip(flat_g, flat_t)]
    assert max(errors) < 1e-10, errors
    t_logits = t_logits.detach().numpy()
    assert np.max(np.abs(np.asarray(logits) - t_logits)) < 1e-10 * np.max(np.abs(t_logits))
    assert abs(float(value) - t_loss.item()) < 1e-12


def test_gpt_ten_adamw_steps_equal_pytorch():
    # llm.c's last check: ten AdamW steps from the same weights on the same batch, float32, bpjax's own
    # trainer (bp.train.fit; the data is one batch ten times, taken in order) against torch.optim.AdamW.
    # float32 roundoff (6e-8 per op) differs between the two programs and grows over the steps; 1e-4
    # relative on O(1) losses is ~1000 ulps.
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch): the bpjax vs PyTorch "
                                                "training comparison is skipped")
    model = _gpt()
    p = _params(model)
    ids, targets = (jnp.tile(a, (10, 1)) for a in _batch(3))
    lr, wd = 1e-2, 0.1
    result = bp.train.fit(model, zoo.token_cross_entropy, optax.adamw(lr, b1=0.9, b2=0.999, eps=1e-8,
                                                                    weight_decay=wd),
                          p, (ids, targets), steps=10, batch_size=B, verbose=False)
    tp = _to_torch(p, torch.float32)
    leaves = jax.tree.leaves(tp)
    opt = torch.optim.AdamW(leaves, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
    t_ids, t_targets = (torch.tensor(np.asarray(a), dtype=torch.long) for a in (ids, targets))
    t_losses = []
    for _ in range(10):
        loss = torch.nn.functional.cross_entropy(_torch_gpt(tp, t_ids[:B]).reshape(-1, V), t_targets[:B].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        t_losses.append(loss.item())
    np.testing.assert_allclose(result.history["loss"], t_losses, rtol=1e-4)
    assert t_losses[-1] < t_losses[0] - 0.5  # it learns the batch (equal losses are not equal constants)
