"""bpjax: backpropagation written by hand in JAX, every gradient checked against ``jax.grad``.

The public API::

    bp.Layer, bp.serial, bp.Residual, bp.parallel, bp.fan_out, bp.fan_in_sum, bp.fan_in_concat
    bp.layers.*             the layer catalogue (Dense, Conv1D, GRU, BatchNorm, ...)
    bp.losses.*             mse, softmax_cross_entropy, binary_cross_entropy
    bp.value_and_grad       the hand-written gradient of a model and loss
    bp.autodiff_value_and_grad, bp.as_custom_vjp, bp.check_gradients, bp.check_layer
    bp.train.make_step, bp.train.fit
    bp.checkpoint.save / restore
    bp.errors               BpjaxError, BpjaxTypeError and the shared checks (keys, shapes, arrays, finiteness)

Submodules that pull in more than JAX (checkpoint, diagnostics, ...) load on first use.
"""

import importlib

from bpjax import errors, layers, losses, train
from bpjax.combinators import Residual, fan_in_concat, fan_in_sum, fan_out, parallel, serial
from bpjax.core import Layer, apply, init_state, is_contextual
from bpjax.errors import BpjaxError, BpjaxTypeError
from bpjax.grad import as_custom_vjp, autodiff_value_and_grad, predict, value_and_grad
from bpjax.gradcheck import GradientReport, check_gradients, check_layer
from bpjax.tied import tie

__version__ = "0.1.0"

_LAZY_MODULES = ("checkpoint", "diagnostics", "rules", "per_example", "precision", "privacy", "second_order", "remat",
                 "zoo")
_LAZY_ATTRS = {"per_example_grads": "per_example"}

__all__ = ["BpjaxError", "BpjaxTypeError", "GradientReport", "Layer", "Residual", "apply", "as_custom_vjp",
           "autodiff_value_and_grad", "check_gradients", "check_layer", "errors", "fan_in_concat", "fan_in_sum",
           "fan_out", "init_state", "is_contextual", "layers", "losses", "parallel", "predict", "serial", "train",
           "tie", "value_and_grad", *_LAZY_MODULES, *_LAZY_ATTRS]


def __getattr__(name):
    if name in _LAZY_MODULES:
        module = importlib.import_module(f"bpjax.{name}")
        globals()[name] = module
        return module
    if name in _LAZY_ATTRS:
        value = getattr(importlib.import_module(f"bpjax.{_LAZY_ATTRS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bpjax' has no attribute {name!r}")
