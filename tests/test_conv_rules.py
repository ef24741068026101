"""Backward rules for Conv1D / Conv2D: feedback alignment and sign symmetry change dx only, on both formulations."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import init_shapes, random_params

import bpjax as bp
from bpjax import layers as L
from bpjax import rules
from bpjax.layers import conv as conv_module

CONV = {1: L.Conv1D, 2: L.Conv2D}
# (rank, features, kernel, input shape, keywords): strided + dilated + grouped + explicit padding, plain
CASES = [
    (1, 6, 3, (2, 11, 4), dict(stride=2, dilation=2, groups=2, padding=[(2, 1)])),
    (2, 4, (3, 2), (2, 6, 5, 3), {}),
    (2, 6, 3, (1, 7, 6, 3), dict(stride=(2, 1), dilation=(1, 2), groups=3, padding="VALID", bias=False)),
]
IDS = ["1d-strided-grouped", "2d", "2d-strided-grouped"]


@pytest.fixture(params=["im2col", "convolutions"])
def formulation(request, monkeypatch):
    """Run a test under both backward formulations (the size threshold picks one of them)."""
    monkeypatch.setattr(conv_module, "IM2COL_MAX_ELEMENTS", 1 << 40 if request.param == "im2col" else -1)
    return request.param


@functools.lru_cache(maxsize=None)
def _layer(i, rule, dtype, formulation):
    """Case ``i``'s layer with backward ``rule``, built once per formulation (``None``: for ``_vjp`` only, which
    does not run the hand-written backward): the tests of a case share it, and so share the programs ``_run``,
    ``_vjp`` and ``bp.check_layer`` compile for it."""
    n, features, kernel, _, kw = CASES[i]
    return CONV[n](features, kernel, backward_rule=rule, dtype=dtype, **kw)


def _setup(case, rule, dtype, formulation, seed=0):
    """The rule's layer, the exact layer, params (non-zero biases: db's check is not trivial), x and dy.

    Params and inputs are drawn with numpy (no per-shape compilation of jax.random ops: keeps the file fast).
    """
    n, features, kernel, shape, kw = case
    layer, exact = (_layer(CASES.index(case), r, dtype, formulation) for r in (rule, "exact"))
    out_shape, _ = init_shapes(layer, shape[1:])
    params = random_params(layer, shape[1:], seed, dtype)
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(shape), dtype)
    dy = jnp.asarray(rng.standard_normal((shape[0], *out_shape)), dtype)
    return layer, exact, params, x, dy


@functools.partial(jax.jit, static_argnums=0)
def _run(layer, params, x, dy, state):
    """``(y, dparams, dx)`` of the layer's forward and hand-written backward, in one jitted program (compiled
    once per layer object and shapes: a layer is built for one formulation, see ``_layer``)."""
    y, res, _ = bp.apply(layer, params, x, state=state)
    return (y, *layer.backward(params, res, dy))


@functools.partial(jax.jit, static_argnums=0)
def _vjp(layer, params, x, dy):
    """``(dparams, dx)``: ``jax.vjp`` of the layer's forward applied to ``dy``, in one jitted program."""
    return jax.vjp(lambda p, x: layer.forward(p, x)[0], params, x)[1](dy)


def _rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_feedback_alignment_with_B_equal_W_is_the_exact_gradient(case, formulation):
    # FA with B = W runs the exact backward's operations: equal to it in f64 (rtol 1e-12, roundoff only).
    with jax.enable_x64(True):
        layer, exact, params, x, dy = _setup(case, "feedback_alignment", jnp.float64, formulation)
        y, g, dx = _run(layer, params, x, dy, {"B": params["W"]})
        y_ref, g_ref, dx_ref = _run(exact, params, x, dy, ())
        np.testing.assert_array_equal(y, y_ref)  # forward unchanged
        for a, b in zip(jax.tree.leaves((g, dx)), jax.tree.leaves((g_ref, dx_ref))):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_feedback_alignment_with_B_equal_W_passes_check_layer(formulation):
    # bp.check_layer against jax.vjp of the forward: f64 at rtol 1e-10 with finite differences (fd_rtol
    # 1e-6: truncation ~eps^2, roundoff ~1e-16 / eps), f32 at its default rtol 1e-4 (sums of <= 100
    # terms rounded at 6e-8 each, in different orders in the two programs).
    case = CASES[0]  # strided, dilated, grouped, explicit padding
    with jax.enable_x64(True):
        layer, _, params, x, _ = _setup(case, "feedback_alignment", jnp.float64, formulation)
        r64 = bp.check_layer(layer, params, x, state={"B": params["W"]}, rtol=1e-10, finite_differences=True)
    assert r64.ok, str(r64)
    layer, _, params, x, _ = _setup(case, "feedback_alignment", jnp.float32, formulation)
    r32 = bp.check_layer(layer, params, x, state={"B": params["W"]}, finite_differences=False)
    assert r32.ok, str(r32)


@pytest.mark.parametrize("rule", ["feedback_alignment", "sign_symmetry"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_rule_dx_is_the_exact_dx_with_W_replaced_by_B(case, rule, formulation):
    # Reference from jax.vjp of the unchanged forward, f64: dW and db at the true W; dx at W := B.
    # rtol 1e-12: f64 roundoff (~1e-16 per operation) over sums of a few dozen terms.
    with jax.enable_x64(True):
        layer, _, params, x, dy = _setup(case, rule, jnp.float64, formulation)
        # FA: a feedback kernel B of W's shape drawn with numpy (init_state's is tested below); sign: no state
        state = {"B": random_params(layer, x.shape[1:], 5, jnp.float64)["W"]} if rule == "feedback_alignment" else ()
        B = state["B"] if rule == "feedback_alignment" else rules.sign_feedback(params["W"])
        assert B.shape == params["W"].shape and not np.allclose(B, params["W"], rtol=1e-3)
        _, g, dx = _run(layer, params, x, dy, state)
        reference = _layer(CASES.index(case), "exact", jnp.float64, None)  # jax.vjp of the forward: the same
        g_ref, dx_exact = _vjp(reference, params, x, dy)                   # under both formulations
        _, dx_ref = _vjp(reference, {**params, "W": B}, x, dy)
        for k in params:
            np.testing.assert_allclose(g[k], g_ref[k], rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-13)
        assert _rel(dx, dx_exact) > 1e-2  # it really is another rule than the exact gradient


def test_state_holds_B_and_checkpoint_round_trips_it(tmp_path):
    layer = L.Conv2D(5, 3, backward_rule="feedback_alignment", feedback_init="lecun_normal")
    assert bp.is_contextual(layer) and layer.name == "Conv2D(5, (3, 3), FA)"
    _, params = layer.init(jax.random.key(0), (6, 6, 2))
    state = bp.init_state(layer, jax.random.key(0), (6, 6, 2))
    assert set(state) == {"B"} and state["B"].shape == params["W"].shape == (3, 3, 2, 5)
    assert state["B"].dtype == params["W"].dtype and not np.allclose(state["B"], params["W"])  # its own key
    np.testing.assert_allclose(np.std(state["B"]), np.sqrt(1 / 18), rtol=0.25)  # lecun_normal: Var = 1 / fan_in
    path = bp.checkpoint.save(tmp_path / "fa.npz", {"params": params, "state": state})
    back = bp.checkpoint.restore(path, like={"params": params, "state": state})
    np.testing.assert_array_equal(back["state"]["B"], state["B"])
    x, dy = jnp.ones((2, 6, 6, 2)), jnp.ones((2, 6, 6, 5))
    np.testing.assert_array_equal(_run(layer, params, x, dy, state)[2],
                                  _run(layer, back["params"], x, dy, back["state"])[2])
    assert not bp.is_contextual(L.Conv1D(3, 2, backward_rule="sign_symmetry"))
    assert L.Conv1D(3, 2, backward_rule="sign_symmetry").name == "Conv1D(3, 2, sign)"


def _cnn(rule):
    return bp.serial(L.Conv1D(8, 5, stride=2, backward_rule=rule), L.Relu(),
                     L.Conv1D(8, 3, stride=2, backward_rule=rule), L.Relu(),
                     L.Flatten(), L.Dense(3, backward_rule=rule))


def _toy(n=64, length=24):
    # three classes: a bump at the start, middle or end of a noisy signal
    y = jnp.arange(n) % 3
    t = np.arange(length)
    centre = 4 + np.asarray(y)[:, None] * 8
    x = np.exp(-0.5 * ((t[None] - centre) / 2.0) ** 2) + 0.3 * np.random.default_rng(9).standard_normal((n, length))
    return jnp.asarray(x[..., None], jnp.float32), y


@pytest.mark.parametrize("rule", ["feedback_alignment", "sign_symmetry"])
def test_small_cnn_with_the_rule_trains(rule):
    # 50 Adam steps on a separable toy task: the loss must fall below 60% of its start.
    model = _cnn(rule)
    x, y = _toy()
    _, params = model.init(jax.random.key(0), x.shape[1:])
    context = {"state": bp.init_state(model, jax.random.key(1), x.shape[1:])} if rule == "feedback_alignment" else {}
    opt = optax.adam(1e-2)
    step = bp.train.make_step(model, bp.losses.softmax_cross_entropy, opt, checks=False)
    opt_state, losses = opt.init(params), []
    for _ in range(50):  # a contextual model (FA) also returns its state, unchanged here
        params, opt_state, *new_state, loss = step(params, opt_state, x, y, **context)
        context.update(zip(["state"], new_state))
        losses.append(float(loss))
    assert losses[-1] < 0.6 * losses[0], (losses[0], losses[-1])


def test_gradient_and_feedback_angles_for_conv_layers():
    model = _cnn("feedback_alignment")
    x, y = _toy(16)
    _, params = model.init(jax.random.key(0), x.shape[1:])
    state = bp.init_state(model, jax.random.key(1), x.shape[1:])
    feedback_angles = jax.jit(rules.feedback_angles)
    fb = feedback_angles(params, state)
    assert len(fb) == 3 and all(60.0 < float(a) < 120.0 for a in fb)  # independent random kernels: ~90
    same = tuple({"B": p["W"]} if p else () for p in params)
    np.testing.assert_allclose(feedback_angles(params, same), 0.0, atol=0.1)  # f32 arccos near 1
    angles = jax.jit(rules.gradient_angles(model, bp.losses.softmax_cross_entropy))
    ang = angles(params, x, y, state=state)
    # the output Dense gets the exact dz, so its gradient is exact (f32 arccos roundoff ~0.1 degree); the
    # first conv receives dx through two random feedback kernels: tens of degrees off
    assert float(ang[5]["W"]) < 0.5 and float(ang[0]["W"]) > 5.0
    ang_same = angles(params, x, y, state=same)
    assert max(float(a) for a in jax.tree.leaves(ang_same)) < 0.5


def test_conv_rule_errors():
    with pytest.raises(bp.BpjaxError, match="Conv1D.*backward_rule 'fa'.*feedback_alignment"):
        L.Conv1D(3, 2, backward_rule="fa")
    with pytest.raises(bp.BpjaxError, match="Conv2D.*backward_rule 'exactly'"):
        L.Conv2D(3, 2, backward_rule="exactly", name="mine")
    layer = L.Conv2D(4, 3, backward_rule="feedback_alignment")
    params = random_params(layer, (5, 5, 2))
    x = jnp.ones((1, 5, 5, 2))
    with pytest.raises(bp.BpjaxError, match=r"Conv2D\(4, \(3, 3\), FA\).*expected keys \['B'\], got \[\]"):
        bp.apply(layer, params, x, state={})
    with pytest.raises(bp.BpjaxError, match=r"B must have the shape of W \(3, 3, 2, 4\), got \(3, 3, 4, 2\)"):
        bp.apply(layer, params, x, state={"B": params["W"].swapaxes(-1, -2)})
    with pytest.raises(bp.BpjaxError, match=r"Conv1D\(3, 2, FA\) initializer: unknown init 'nope'"):
        L.Conv1D(3, 2, backward_rule="feedback_alignment", feedback_init="nope")
