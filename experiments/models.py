"""The experiments' models: taken from ``bpjax.zoo`` when it is there, else built here from bpjax layers."""

from __future__ import annotations

import bpjax as bp
from bpjax.layers import Dense, Relu


def residual(block: bp.Layer) -> bp.Layer:
    """``y = x + block(x)``: ``bp.Residual`` when available, otherwise the same thing written here.

    Backward: in the forward pass this was ``y = x + block(x)``, so
    ``dx = dy + (d block(x) / dx)^T dy`` and the block's parameters get the block's own gradient.
    """
    try:
        from bpjax.branching import Residual
        return Residual(block)
    except ImportError:
        pass

    def init(key, input_shape):
        shape, params = block.init(key, input_shape)
        return shape, params

    def forward(params, x):
        h, residuals = block.forward(params, x)
        return x + h, residuals

    def backward(params, residuals, dy):
        dparams, dx = block.backward(params, residuals, dy)
        return dparams, dy + dx  # the skip path passes dy through unchanged

    return bp.Layer(init, forward, backward, f"Residual({block.name})")


def _zoo(name):
    try:
        from bpjax import zoo
    except ImportError:
        return None
    return getattr(zoo, name, None)


def mnist1d_mlp(hidden: int = 100, classes: int = 10) -> bp.Layer:
    """The MNIST-1D paper's MLP: 40-100-100-10 ReLU with a residual on the middle layer.

    ``h1 = relu(x W1 + b1)``, ``h2 = h1 + relu(h1 W2 + b2)``, ``logits = h2 W3 + b3``.
    """
    zoo = _zoo("mnist1d_mlp")
    if zoo is not None and hidden == 100 and classes == 10:
        return zoo()
    return bp.serial(Dense(hidden), Relu(), residual(bp.serial(Dense(hidden), Relu())), Dense(classes),
                     name="mnist1d_mlp")


def logistic(classes: int = 10) -> bp.Layer:
    """Multinomial logistic regression: ``logits = x W + b``."""
    zoo = _zoo("logistic")
    return zoo() if zoo is not None and classes == 10 else bp.serial(Dense(classes), name="logistic")
