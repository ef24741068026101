"""The MNIST-1D models: inputs ``x: (B, 40)``, logits ``(B, 10)``; :data:`MODELS` names them."""

from __future__ import annotations

from bpjax import errors
from bpjax.combinators import serial
from bpjax.core import Layer

N_CLASSES = 10
"""MNIST-1D's number of classes, the digits 0-9."""
LENGTH = 40
"""The length of an MNIST-1D signal; each example is ``(40,)``."""


def AddChannel() -> Layer:
    """``(B, L) -> (B, L, 1)``: a signal as a one-channel sequence; backward ``dx = dy[..., 0]``.

    Examples:
      >>> y, _ = bp.zoo.AddChannel().forward((), jnp.ones((2, 40)))
      >>> y.shape
      (2, 40, 1)
    """
    name = "AddChannel"

    def init(key, input_shape):
        key, input_shape = errors.init_arguments(f"{name}.init", key, input_shape)
        return (*input_shape, 1), ()

    def forward(params, x):
        errors.check_ndim(name, x, 2, "signal (B, L)")
        return x[..., None], ()

    def backward(params, residuals, dy):
        # in the forward pass this was: y = x[..., None]
        return (), dy[..., 0]

    return Layer(init, forward, backward, name)


def logistic(classes: int = N_CLASSES) -> Layer:
    """Multinomial logistic regression: ``z = x W + b``, ``x: (B, 40) -> z: (B, classes)``.

    Examples:
      >>> model = bp.zoo.logistic()
      >>> out_shape, params = model.init(jax.random.key(0), (bp.zoo.LENGTH,))
      >>> out_shape, bp.predict(model, params, jnp.ones((2, 40))).shape
      ((10,), (2, 10))
    """
    from bpjax.layers import Dense
    return serial(Dense(classes), name="logistic")


def mnist1d_mlp(hidden: int = 100, classes: int = N_CLASSES) -> Layer:
    """The MNIST-1D MLP: ``(B, 40) -> Dense(hidden), Relu, Residual(Dense(hidden), Relu), Dense(classes)``.

    Examples:
      >>> model = bp.zoo.mnist1d_mlp(hidden=16)
      >>> out_shape, params = model.init(jax.random.key(0), (40,))
      >>> out_shape, bp.predict(model, params, jnp.ones((2, 40))).shape
      ((10,), (2, 10))
    """
    from bpjax.combinators import Residual
    from bpjax.layers import Dense, Relu
    return serial(Dense(hidden), Relu(), Residual(serial(Dense(hidden), Relu())), Dense(classes),
                  name="mnist1d_mlp")


def mnist1d_cnn(channels: int = 25, classes: int = N_CLASSES) -> Layer:
    """The MNIST-1D CNN: ``(B, 40) -> (B, 40, 1)``, three Conv1D + ReLU (stride 2), flatten, Dense(classes).

    Examples:
      >>> model = bp.zoo.mnist1d_cnn(channels=4)
      >>> out_shape, params = model.init(jax.random.key(0), (40,))
      >>> out_shape, bp.predict(model, params, jnp.ones((2, 40))).shape
      ((10,), (2, 10))
    """
    from bpjax.layers import Conv1D, Dense, Flatten, Relu
    return serial(AddChannel(),
                  Conv1D(channels, 5, stride=2, padding=1), Relu(),
                  Conv1D(channels, 3, stride=2, padding=1), Relu(),
                  Conv1D(channels, 3, stride=2, padding=1), Relu(),
                  Flatten(), Dense(classes), name="mnist1d_cnn")


def mnist1d_gru(hidden: int = 6, classes: int = N_CLASSES) -> Layer:
    """The MNIST-1D GRU: ``(B, 40) -> (B, 40, 1)``, Bidirectional(GRU(hidden)) ``(B, 40, 2 hidden)``, flatten,
    Dense(classes).

    Examples:
      >>> model = bp.zoo.mnist1d_gru(hidden=3)
      >>> out_shape, params = model.init(jax.random.key(0), (40,))
      >>> out_shape, bp.predict(model, params, jnp.ones((2, 40))).shape
      ((10,), (2, 10))
    """
    from bpjax.layers import GRU, Bidirectional, Dense, Flatten
    return serial(AddChannel(), Bidirectional(GRU(hidden, return_sequences=True)), Flatten(), Dense(classes),
                  name="mnist1d_gru")


MODELS = {"logistic": logistic, "mlp": mnist1d_mlp, "cnn": mnist1d_cnn, "gru": mnist1d_gru}
"""The MNIST-1D models by name, each a constructor of a :class:`bpjax.Layer` (``MODELS["mlp"]()``).

Examples:
  >>> sorted(bp.zoo.MODELS)
  ['cnn', 'gru', 'logistic', 'mlp']
  >>> bp.zoo.MODELS["mlp"]().init(jax.random.key(0), (40,))[0]
  (10,)
"""
