"""The layer contract is checked where gradients are made: every entry point names the layer, expected and received.

A custom layer ``Scaled`` (``y = (x @ W) * s``, params ``{"W": (D, 3), "s": ()}``) with one planted
contract bug at a time sits at ``serial[1]`` (or alone, at the top): each gradient entry point must
raise a :class:`bpjax.BpjaxError` at trace time naming ``serial[1] Scaled`` and the expected and
received structure, shape or dtype, instead of failing later inside optax or in broadcasting.
"""

import jax
import jax.numpy as jnp
import optax
import pytest

import bpjax as bp
from bpjax import contract
from bpjax import layers as L
from bpjax.core import Layer
from bpjax.grad import gradients


def Scaled(bug: str = "") -> Layer:
    """``y = (x @ W) * s`` with one planted contract bug (``bug``), or none."""
    def init(key, shape):
        params = {"W": jax.random.normal(key, (shape[-1], 3)), "s": jnp.ones(())}
        return params if bug == "init" else ((3,), params)

    def forward(p, x):
        y = x @ p["W"] * p["s"]
        return y if bug == "forward" else (y, (x, x @ p["W"]))

    def backward(p, res, dy):
        # in the forward pass this was: y = z * s, z = x @ W
        x, z = res
        dz = dy * p["s"]
        grads = {"W": x.T @ dz, "s": jnp.sum(dy * z)}
        dx = dz @ p["W"].T
        if bug == "omit":
            del grads["s"]
        elif bug == "extra":
            grads["t"] = grads["s"]
        elif bug == "transpose":
            grads["W"] = grads["W"].T
        elif bug == "shape1":
            grads["s"] = grads["s"].reshape(1)
        elif bug == "dtype":
            grads["W"] = grads["W"].astype(jnp.float16)
        elif bug == "dx":
            dx = dx[:, :-1]
        elif bug == "pair":
            return grads
        return grads, dx

    return Layer(init, forward, backward, "Scaled")


BUGS = {  # bug: what the error must say (besides the layer path)
    "omit": ["backward returned dparams with structure", "expected the structure of params", "missing dparams['s']"],
    "extra": ["expected the structure of params", "not in params: dparams['t']"],
    "transpose": ["backward returned dparams['W'] of shape (3, 4), expected (4, 3)", "params['W']", "transposed?"],
    "shape1": ["backward returned dparams['s'] of shape (1,), expected ()", "(the shape of params['s'])"],
    "dtype": ["backward returned dparams['W'] of dtype float16, expected float32", "(the dtype of params['W'])"],
    "dx": ["backward returned dx of shape (", ", 3), expected (", ", 4) (the shape of its input)"],  # (B, 3), (B, 4)
    "pair": ["backward must return (dparams, dx), got a dict with keys ['W', 's']"],
    "forward": ["forward must return (y, residuals), got an array of shape", "the backward needs are missing"],
}
X, Y = jnp.linspace(-1, 1, 32).reshape(8, 4), jnp.zeros((8, 2))
OPT = optax.sgd(0.1)


def _model(bug, top=False):
    if top:
        return Scaled(bug)
    return bp.serial(L.Dense(4), Scaled(bug), L.Dense(2))


def _params(model):
    if model.children:
        return (L.Dense(4).init(jax.random.key(0), (4,))[1], Scaled().init(jax.random.key(1), (4,))[1],
                L.Dense(2).init(jax.random.key(2), (3,))[1])
    return Scaled().init(jax.random.key(1), (4,))[1]


ENTRY_POINTS = {
    "value_and_grad": lambda m, p, y: bp.value_and_grad(m, bp.losses.mse)(p, X, y),
    "make_step": lambda m, p, y: bp.train.make_step(m, bp.losses.mse, OPT)(p, OPT.init(p), X, y),
    "fit": lambda m, p, y: bp.train.fit(m, bp.losses.mse, OPT, p, (X, y), steps=2, batch_size=4, verbose=False),
    "per_example_grads": lambda m, p, y: bp.per_example_grads(m, bp.losses.mse)(p, X, y),
    "hvp": lambda m, p, y: bp.second_order.hvp(m, bp.losses.mse)(p, X, y, p),
    "as_custom_vjp": lambda m, p, y: jax.grad(lambda q: jnp.sum(bp.as_custom_vjp(m)(q, X) ** 2))(p),
    "check_gradients": lambda m, p, y: bp.check_gradients(m, bp.losses.mse, p, X, y),
}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("bug", BUGS)
def test_every_gradient_entry_point_names_the_broken_contract(entry, bug):
    model = _model(bug)
    with pytest.raises(bp.BpjaxError) as e:
        ENTRY_POINTS[entry](model, _params(model), Y)
    message = str(e.value)
    assert "serial[1] Scaled" in message, message
    for piece in BUGS[bug]:
        assert piece in message, message


@pytest.mark.parametrize("bug", ["omit", "transpose", "shape1", "dx", "forward"])
def test_a_layer_alone_is_named_too(bug):
    model = _model(bug, top=True)
    with pytest.raises(bp.BpjaxError) as e:
        bp.value_and_grad(model, bp.losses.mse)(_params(model), X, jnp.zeros((8, 3)))
    assert str(e.value).startswith("Scaled: "), str(e.value)
    assert BUGS[bug][0] in str(e.value)


def test_check_layer_names_the_broken_contract():
    with pytest.raises(bp.BpjaxError, match=r"Scaled: backward returned dparams\['W'\] of shape \(3, 4\)"):
        bp.check_layer(Scaled("transpose"), _params(Scaled()), X)


def _noisy_state_only():
    """A contextual layer whose ``init_state`` returns the state alone."""
    layer = L.Dropout(0.5)
    return layer._replace(init_state=lambda key, shape: ())


@pytest.mark.parametrize("build, path", [
    (lambda: bp.serial(L.Dense(4), Scaled("init")), "serial[1] Scaled"),
    (lambda: bp.Residual(bp.serial(Scaled("init"))), "Residual serial[0] Scaled"),
    (lambda: bp.serial(bp.fan_out(2), bp.parallel(L.Identity(), Scaled("init"))), "serial[1] parallel[1] Scaled"),
])
def test_init_returning_only_params_is_named(build, path):
    with pytest.raises(bp.BpjaxError) as e:
        build().init(jax.random.key(0), (4,))
    assert str(e.value).startswith(f"{path}: init must return (output_shape, params), got a dict with keys "
                                   f"['W', 's'] (params alone?"), str(e.value)


def test_init_state_returning_only_state_is_named():
    with pytest.raises(bp.BpjaxError, match=r"^serial\[1\] Dropout\(0.5\): init must return \(output_shape, params\), "
                                            r"got a tuple of length 0"):
        bp.init_state(bp.serial(L.Dense(4), _noisy_state_only()), jax.random.key(0), (4,))


def test_contextual_forward_without_new_state_is_named():
    base = L.Dropout(0.5)
    layer = base._replace(forward=lambda p, x, **ctx: base.forward(p, x, **ctx)[:2])
    model = bp.serial(L.Dense(4), layer)
    _, params = model.init(jax.random.key(0), (4,))
    with pytest.raises(bp.BpjaxError, match=r"serial\[1\] Dropout\(0.5\): forward must return \(y, residuals, "
                                            r"new_state\), got a tuple of length 2 \(a contextual layer also"):
        bp.value_and_grad(model, bp.losses.mse)(params, X, jnp.zeros((8, 4)), state=((), ()),
                                                key=jax.random.key(1))


def test_contract_checks_cost_nothing_per_step(monkeypatch):
    """The checks read shapes and dtypes while tracing: the traced program is the same with and without them."""
    model = bp.serial(L.Dense(16), L.Relu(), bp.Residual(bp.serial(L.Dense(16), L.Tanh())), L.Dense(2))
    _, params = model.init(jax.random.key(0), (4,))

    def program():
        fn = gradients(model, bp.losses.mse, wrt_input=True)
        return jax.make_jaxpr(lambda p, x, y: fn(p, x, y, (), None, True))(params, X, Y)

    checked = program()
    monkeypatch.setattr(contract, "backward_output", lambda where, out, params, like_x=None: out)
    monkeypatch.setattr(contract, "forward_output", lambda where, out, contextual: out)
    unchecked = program()
    assert str(checked) == str(unchecked)
