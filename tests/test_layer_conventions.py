"""One set of conventions across the layers: keywords, the bias key, dtype, initialisers, and the layers guide in step.

Every layer with parameters takes ``init=``, ``dtype=`` and ``name=`` keyword-only, calls its width
``features``, names its bias ``"b"``, draws its parameters in ``dtype`` with ``init``, and refuses a
bool where it wants an int. The defaults table of ``docs/guides/layers.md`` is checked against the code
(``python tests/test_layer_conventions.py`` prints the table rows from the signatures); ``test_docs.py`` checks
the Dense excerpt of ``docs/guides/idea.md``.
"""

import inspect
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bpjax as bp
from bpjax import initializers
from bpjax import layers as L

ROOT = pathlib.Path(__file__).resolve().parents[1]

# name -> (the layer with its required arguments, keywords passed through; per-example input shape)
WITH_PARAMS = {
    "Dense": (lambda **kw: L.Dense(3, **kw), (4,)),
    "Conv1D": (lambda **kw: L.Conv1D(3, 2, **kw), (5, 2)),
    "Conv2D": (lambda **kw: L.Conv2D(3, 2, **kw), (4, 4, 2)),
    "BatchNorm": (lambda **kw: L.BatchNorm(**kw), (3,)),
    "LayerNorm": (lambda **kw: L.LayerNorm(**kw), (2, 3)),
    "Embedding": (lambda **kw: L.Embedding(5, 3, **kw), (4,)),
    "SimpleRNN": (lambda **kw: L.SimpleRNN(3, **kw), (4, 2)),
    "GRU": (lambda **kw: L.GRU(3, **kw), (4, 2)),
    "LSTM": (lambda **kw: L.LSTM(3, **kw), (4, 2)),
    "MultiHeadSelfAttention": (lambda **kw: L.MultiHeadSelfAttention(2, **kw), (3, 4)),
}
WIDTH_FROM_INPUT = {"BatchNorm", "LayerNorm", "MultiHeadSelfAttention"}  # no width argument: it is the input's
# GRU's second bias (inside r * (h Whn + bhn)) keeps its own name, as do attention's, one per projection
BIASES = {"b", "bhn", "bq", "bk", "bv", "bo"}


def _init(name, shapes_only=False, **kw):
    """``(layer, params, state)`` of ``WITH_PARAMS[name]`` built with ``kw``; abstract arrays when ``shapes_only``."""
    make, shape = WITH_PARAMS[name]
    layer = make(**kw)

    def draw(key):
        return layer.init(key, shape)[1], bp.init_state(layer, key, shape)

    params, state = jax.eval_shape(draw, jax.random.key(0)) if shapes_only else draw(jax.random.key(0))
    return layer, params, state


@pytest.mark.parametrize("name", sorted(WITH_PARAMS))
def test_init_dtype_name_are_keyword_only_and_the_width_is_features(name):
    sig = inspect.signature(getattr(L, name))
    for kw in ("init", "dtype", "name"):
        assert sig.parameters[kw].kind is inspect.Parameter.KEYWORD_ONLY, (name, kw)
    widths = [p for p in sig.parameters if p in ("features", "hidden", "dim", "units", "width")]
    assert widths == ([] if name in WIDTH_FROM_INPUT else ["features"]), (name, widths)


@pytest.mark.parametrize("name", sorted(WITH_PARAMS))
def test_parameters_and_state_follow_dtype(name):
    with jax.enable_x64(True):
        for dtype in (jnp.float32, jnp.float64, None):  # None: the canonical float, float64 under x64
            _, params, state = _init(name, shapes_only=True, dtype=dtype)
            want = jnp.dtype(dtype or jnp.float64)
            leaves = jax.tree.leaves((params, state))
            assert leaves and all(leaf.dtype == want for leaf in leaves), (name, dtype, params)
    _, params, _ = _init(name, shapes_only=True)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))  # x64 off: float32


@pytest.mark.parametrize("name", sorted(WITH_PARAMS))
def test_bad_dtype_is_refused_naming_the_layer(name):
    with pytest.raises(bp.BpjaxTypeError, match=r"dtype must be a real floating-point dtype.*int32"):
        WITH_PARAMS[name][0](dtype=jnp.int32)


@pytest.mark.parametrize("name", sorted(WITH_PARAMS))
def test_init_draws_every_weight_and_the_bias_key_is_b(name):
    def half(key, shape, dtype):
        return jnp.full(shape, 0.5, dtype)

    _, params, _ = _init(name, init=half)
    assert "bias" not in params and bool(set(params) & BIASES) == (name != "Embedding"), sorted(params)
    for key, value in params.items():
        if key in BIASES:
            want = 0.0 if name != "LSTM" else np.r_[np.zeros(3), np.ones(3), np.zeros(6)]  # forget bias 1
            np.testing.assert_array_equal(value, np.broadcast_to(want, value.shape), err_msg=f"{name} {key}")
        else:
            np.testing.assert_array_equal(value, 0.5, err_msg=f"{name} {key}")


@pytest.mark.parametrize("make", [lambda **kw: L.Dense(256, **kw), lambda **kw: L.Conv1D(256, 3, **kw),
                                  lambda **kw: L.Embedding(64, 64, **kw)], ids=["Dense", "Conv1D", "Embedding"])
def test_normal_init_honours_stddev(make):
    # 4096+ draws of N(0, 0.01^2): the sample std is within 5% of 0.01 (its relative error is about
    # 1/sqrt(2n) = 1.1%, so 5% is over four standard errors)
    layer = make(init="normal", stddev=0.01)
    _, params = layer.init(jax.random.key(0), (16, 16) if "Conv" in layer.name else (16,))
    W = next(v for k, v in params.items() if k not in BIASES)
    assert W.size >= 4096 and abs(float(jnp.std(W)) / 0.01 - 1) < 0.05, (layer.name, float(jnp.std(W)))


def test_feedback_alignment_kernel_honours_stddev():
    layer = L.Conv1D(64, 3, init="normal", stddev=0.02, backward_rule="feedback_alignment")
    B = bp.init_state(layer, jax.random.key(0), (8, 32))["B"]  # 3 * 32 * 64 = 6144 draws, as above
    assert abs(float(jnp.std(B)) / 0.02 - 1) < 0.05


@pytest.mark.parametrize("make, message", [
    (lambda: L.Dense(True), "Dense: features"),
    (lambda: L.Conv1D(True, 3), "Conv1D: features"),
    (lambda: L.Conv2D(3, True), "Conv2D: kernel_size"),
    (lambda: L.Conv1D(3, 3, groups=True), "Conv1D: groups"),
    (lambda: L.Conv2D(3, (3, True)), r"Conv2D: kernel_size\[1\]"),
    (lambda: L.MaxPool1D(True), "MaxPool1D: window"),
    (lambda: L.AvgPool2D(2, stride=True), "AvgPool2D: stride"),
    (lambda: L.Embedding(True, 3), "Embedding: vocab"),
    (lambda: L.Embedding(3, True), "Embedding: features"),
    (lambda: L.GRU(True), "GRU: features"),
    (lambda: L.LSTM(3, unroll=True), "LSTM: unroll"),
])
def test_a_bool_is_not_an_int(make, message):
    with pytest.raises(bp.BpjaxTypeError, match=f"{message} must be a positive int, got True"):
        make()


def test_initializers_module_and_its_re_export():
    assert L.initializer is initializers.initializer
    key = jax.random.key(0)
    np.testing.assert_array_equal(initializers.initializer("ones")(key, (2, 3), jnp.float32), 1.0)
    np.testing.assert_array_equal(initializers.initializer("zeros")(key, (2, 3), jnp.float32), 0.0)
    Q = initializers.initializer("orthogonal")(key, (4, 4), jnp.float32)
    np.testing.assert_allclose(Q.T @ Q, np.eye(4), atol=1e-6)  # float32 roundoff of a 4x4 QR
    with pytest.raises(bp.BpjaxError, match=r"Dense\(3\) initializer: unknown init 'glorot'.*'he_normal'.*'zeros'"):
        L.Dense(3, init="glorot")


# -- the layers guide in step with the code --------------------------------------------------------------

def _value(v) -> str:
    return json.dumps(v) if isinstance(v, str) else repr(v)


def defaults_row(name: str) -> str:
    """The layers guide's row of constructor ``name``: positional arguments, then keyword-only ones with defaults."""
    sig = inspect.signature(getattr(L, name))
    pos, kw = [], []
    for p in sig.parameters.values():
        text = p.name if p.default is inspect.Parameter.empty else f"{p.name}={_value(p.default)}"
        (kw if p.kind is inspect.Parameter.KEYWORD_ONLY else pos).append(f"`{text}`")
    return f"| `{name}` | {', '.join(pos) or '-'} | {', '.join(kw) or '-'} |"


CONSTRUCTORS = [n for n in L.__all__ if n[0].isupper()]


LAYERS_GUIDE = ROOT / "docs" / "guides" / "layers.md"


@pytest.mark.parametrize("name", CONSTRUCTORS)
def test_the_layers_guide_defaults_table_matches_the_signatures(name):
    row = defaults_row(name)
    assert row in LAYERS_GUIDE.read_text(), f"docs/guides/layers.md's defaults table needs the row:\n{row}"


if __name__ == "__main__":
    print("| constructor | positional | keyword-only (defaults) |\n|---|---|---|")
    print("\n".join(defaults_row(n) for n in CONSTRUCTORS))
