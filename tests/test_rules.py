"""Swappable backward rules: feedback alignment, sign symmetry, DFA, and the alignment metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import cast, normal, random_params

import bpjax as bp
from bpjax import layers as L
from bpjax import rules


def _dense(rule, d_in=6, d_out=4, dtype=jnp.float32, seed=0):
    layer = L.Dense(d_out, backward_rule=rule, dtype=dtype)
    _, params = layer.init(jax.random.key(seed), (d_in,))
    state = bp.init_state(layer, jax.random.key(seed + 7), (d_in,))
    x = normal(seed + 1, (5, d_in), dtype)
    dz = normal(seed + 2, (5, d_out), dtype)
    return layer, params, state, x, dz


@pytest.mark.parametrize("rule", ["feedback_alignment", "sign_symmetry"])
def test_rule_keeps_forward_and_weight_gradients_f64(rule):
    # dW, db are the exact ones (vs jax.vjp of the unchanged forward); only da_prev = dz @ B.T changes.
    with jax.enable_x64(True):
        layer, params, state, x, dz = _dense(rule, dtype=jnp.float64)
        exact = L.Dense(4, dtype=jnp.float64)
        y, res, _ = bp.apply(layer, params, x, state=state)
        np.testing.assert_array_equal(y, exact.forward(params, x)[0])
        g, da = layer.backward(params, res, dz)
        (ref,) = jax.jit(lambda p, dz: jax.vjp(lambda p: exact.forward(p, x)[0], p)[1](dz))(params, dz)
        B = state["B"] if rule == "feedback_alignment" else rules.sign_feedback(params["W"])
        for k in ("W", "b"):  # f64: only summation-order roundoff (~1e-16 relative)
            np.testing.assert_allclose(g[k], ref[k], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(da, dz @ B.T, rtol=1e-12, atol=1e-14)
        assert not np.allclose(da, dz @ params["W"].T, rtol=1e-3)  # it really is a different rule


def test_feedback_alignment_state_and_sign_matrix():
    layer, params, state, _, _ = _dense("feedback_alignment")
    assert bp.is_contextual(layer) and state["B"].shape == params["W"].shape
    assert not np.allclose(state["B"], params["W"])  # B drawn from its own key
    W = np.asarray(params["W"])
    S = np.asarray(rules.sign_feedback(params["W"]))
    np.testing.assert_allclose(S, np.abs(W).mean() * np.sign(W), rtol=1e-6)
    assert not bp.is_contextual(L.Dense(3, backward_rule="sign_symmetry"))


def test_feedback_alignment_with_B_equal_W_is_backprop():
    # FA with B = W is exactly backprop: the whole-model check against jax.grad passes in f32 and f64.
    model = bp.serial(L.Dense(8, backward_rule="feedback_alignment"), L.Tanh(),
                      L.Dense(3, backward_rule="feedback_alignment"))
    for dtype, tol in ((jnp.float32, 1e-4), (jnp.float64, 1e-10)):  # tolerances of bp.check_gradients
        with jax.enable_x64(dtype == jnp.float64):
            params = random_params(model, (5,), 0, dtype)
            state = tuple({"B": p["W"]} if p else () for p in params)
            x = normal(1, (6, 5), dtype)
            y = jnp.arange(6) % 3
            rep = bp.check_gradients(model, bp.losses.softmax_cross_entropy, params, x, y, state=state,
                                     rtol=tol, finite_differences=dtype == jnp.float64)
        assert rep.ok, str(rep)


def _mlp(backward_rule="exact"):
    return [L.Dense(7, backward_rule=backward_rule), L.Tanh(), L.Dense(6, backward_rule=backward_rule), L.Relu(),
            L.Dense(3, backward_rule=backward_rule)]


def test_dfa_matches_independent_formula_f64():
    # Reference written from Nokland's equations with plain numpy: e = dL/dy, dz_l = (e @ B_l) * f'(z_l).
    with jax.enable_x64(True):
        model = rules.DFA(*_mlp())
        params = random_params(model, (5,), 0, jnp.float64)
        # the feedback matrices B_l; jitted, the params init_state also draws (for their shapes) are dropped
        state = cast(jax.jit(bp.init_state, static_argnums=(0, 2))(model, jax.random.key(3), (5,)), jnp.float64)
        x = normal(1, (8, 5), jnp.float64)
        y = jnp.arange(8) % 3
        (_, _), g = jax.jit(bp.value_and_grad(model, bp.losses.softmax_cross_entropy))(params, x, y, state=state)
        # the formula in numpy, float64
        W1, b1, W2, b2, W3, b3 = (np.asarray(params[0]["W"]), np.asarray(params[0]["b"]), np.asarray(params[2]["W"]),
                                  np.asarray(params[2]["b"]), np.asarray(params[4]["W"]), np.asarray(params[4]["b"]))
        _, B2, _, B3 = state["B"][0], np.asarray(state["B"][2]), (), np.asarray(state["B"][4])
        assert state["B"][0] == () and B2.shape == (3, 7) and B3.shape == (3, 6)
        x = np.asarray(x)
        z1 = x @ W1 + b1
        a1 = np.tanh(z1)
        z2 = a1 @ W2 + b2
        a2 = np.maximum(z2, 0)
        out = a2 @ W3 + b3
        p = np.exp(out - out.max(1, keepdims=True))
        e = (p / p.sum(1, keepdims=True) - np.eye(3)[np.asarray(y)]) / 8
        dz2 = (e @ B3) * (z2 > 0)
        dz1 = (e @ B2) * (1 - a1 ** 2)
        want = {0: (x.T @ dz1, dz1.sum(0)), 2: (a1.T @ dz2, dz2.sum(0)), 4: (a2.T @ e, e.sum(0))}
        for i, (dW, db) in want.items():  # f64 roundoff only
            np.testing.assert_allclose(g[i]["W"], dW, rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(g[i]["b"], db, rtol=1e-12, atol=1e-15)


def test_dfa_one_hidden_layer_with_B_equal_W_T_is_backprop():
    # One hidden layer: e @ W_out.T is the true da_1, so DFA with B = W_out.T is exact backprop.
    with jax.enable_x64(True):
        model = rules.DFA(L.Dense(6), L.Sigmoid(), L.Dense(3))
        params = random_params(model, (4,), 0, jnp.float64)
        state = {"layers": ((), (), ()), "B": ((), (), params[2]["W"].T)}
        x = normal(1, (5, 4), jnp.float64)
        y = jnp.arange(5) % 3
        rep = bp.check_gradients(model, bp.losses.softmax_cross_entropy, params, x, y, state=state, rtol=1e-10,
                                 finite_differences=True)
    assert rep.ok, str(rep)


def test_gradient_and_feedback_angles():
    model = bp.serial(*_mlp("feedback_alignment"))
    _, params = model.init(jax.random.key(0), (5,))
    state = bp.init_state(model, jax.random.key(1), (5,))
    x = normal(2, (16, 5))
    y = jnp.arange(16) % 3
    ang = jax.jit(rules.gradient_angles(model, bp.losses.softmax_cross_entropy))(params, x, y, state=state)
    # the output layer's gradient is exact under FA (float32 arccos near 1: ~0.1 degree of roundoff);
    # the first layer's is not (random B: tens of degrees)
    assert float(ang[4]["W"]) < 0.5 and float(ang[0]["W"]) > 5.0
    exact = bp.serial(*_mlp())
    ang_exact = jax.jit(rules.gradient_angles(exact, bp.losses.softmax_cross_entropy))(params, x, y)
    assert max(float(a) for a in jax.tree.leaves(ang_exact)) < 0.5
    feedback_angles = jax.jit(rules.feedback_angles)
    fb = feedback_angles(params, state)
    assert len(fb) == 3 and all(60.0 < float(a) < 120.0 for a in fb)  # independent random matrices: ~90
    same = tuple({"B": p["W"]} if p else () for p in params)
    neg = tuple({"B": -p["W"]} if p else () for p in params)
    np.testing.assert_allclose(feedback_angles(params, same), 0.0, atol=0.1)
    np.testing.assert_allclose(feedback_angles(params, neg), 180.0, atol=0.1)
    assert float(jax.jit(lambda W: rules.angle(W, rules.sign_feedback(W)))(params[0]["W"])) < 45.0


@pytest.mark.parametrize("rule", ["feedback_alignment", "sign_symmetry", "dfa"])
def test_rules_learn_a_toy_problem(rule):
    # 150 Adam steps on a separable 3-class problem: each rule must cut the loss by more than half.
    layers = _mlp("exact" if rule == "dfa" else rule)
    model = rules.DFA(*layers) if rule == "dfa" else bp.serial(*layers)
    _, params = model.init(jax.random.key(0), (5,))
    state = bp.init_state(model, jax.random.key(1), (5,))
    x = normal(2, (64, 5))
    y = jnp.asarray(np.argmax(np.asarray(x)[:, :3], -1))
    opt = optax.adam(1e-2)
    step = bp.train.make_step(model, bp.losses.softmax_cross_entropy, opt, checks=False)
    opt_state, losses = opt.init(params), []
    for _ in range(150):
        if bp.is_contextual(model):
            params, opt_state, state, loss = step(params, opt_state, x, y, state=state)
        else:
            params, opt_state, loss = step(params, opt_state, x, y)
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])


def test_rule_errors():
    with pytest.raises(bp.BpjaxError, match="backward_rule 'fa'.*feedback_alignment"):
        L.Dense(3, backward_rule="fa")
    layer, params, state, x, _ = _dense("feedback_alignment")
    with pytest.raises(bp.BpjaxError, match=r"Dense\(4, FA\).*expected keys \['B'\], got \[\]"):
        bp.apply(layer, params, x, state={})
    with pytest.raises(bp.BpjaxError, match=r"B must have the shape of W \(6, 4\), got \(4, 6\)"):
        bp.apply(layer, params, x, state={"B": state["B"].T})
    conv_like = rules.DFA(L.Flatten(), L.Dense(4), L.Relu(), L.Dense(2))
    # Flatten first: Dense inputs are (B, D), fine (the shapes traced by jax.eval_shape: nothing drawn)
    jax.eval_shape(lambda key: conv_like.init_state(key, (3, 2)), jax.random.key(0))
    bad = rules.DFA(L.Dense(4), L.Relu(), L.Dense(2))
    with pytest.raises(bp.BpjaxError, match=r"serial\[2\].*Dense inputs of shape \(N, D\), got .* shape \(3, 4\)"):
        jax.eval_shape(lambda key: bad.init_state(key, (3, 5)), jax.random.key(0))
    model = rules.DFA(*_mlp())
    with pytest.raises(bp.BpjaxError, match="expected {'layers', 'B'}"):
        bp.apply(model, random_params(model, (5,)), jnp.ones((2, 5)), state=())
