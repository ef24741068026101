"""The layer catalogue: each a :class:`bpjax.Layer` with its backward written by hand beside its forward.

One exception, on purpose: ``Autodiff(apply, init)`` makes any JAX function a layer whose backward is ``jax.vjp``.

Naming (after stax): CamelCase constructors return layers, e.g. ``Dense(100)``, ``Relu()``.
Modules load on first use, so ``import bpjax`` stays light.
"""

import importlib

# name -> module under bpjax.layers (``initializer`` lives in bpjax.initializers, re-exported here)
_WHERE = {
    "Dense": "dense", "initializer": "bpjax.initializers",
    "Identity": "activations", "Sigmoid": "activations", "Tanh": "activations", "Relu": "activations",
    "LeakyRelu": "activations", "Elu": "activations", "Gelu": "activations", "Softplus": "activations",
    "Softmax": "activations", "LogSoftmax": "activations", "elementwise": "activations",
    "Flatten": "reshape",
    "Conv1D": "conv", "Conv2D": "conv",
    "MaxPool1D": "pool", "MaxPool2D": "pool", "AvgPool1D": "pool", "AvgPool2D": "pool", "GlobalAvgPool": "pool",
    "BatchNorm": "norm", "LayerNorm": "norm",
    "Dropout": "dropout",
    "Embedding": "embedding",
    "SimpleRNN": "recurrent", "GRU": "recurrent", "LSTM": "recurrent", "Bidirectional": "recurrent",
    "MultiHeadSelfAttention": "attention", "TransformerBlock": "attention",
    "Autodiff": "autodiff",
}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module 'bpjax.layers' has no attribute {name!r}")
    where = _WHERE[name]
    module = importlib.import_module(where if "." in where else f"bpjax.layers.{where}")
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
