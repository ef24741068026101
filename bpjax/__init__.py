"""bpjax: backpropagation written by hand in JAX, every gradient checked against ``jax.grad``."""

from bpjax import layers, losses, train
from bpjax._errors import BpjaxError, BpjaxTypeError
from bpjax.combinators import serial
from bpjax.core import Layer, apply, init_state, is_contextual
from bpjax.gradcheck import GradientReport, check_gradients, check_layer
from bpjax.grad import as_custom_vjp, autodiff_value_and_grad, predict, value_and_grad

__version__ = "0.1.0"

__all__ = ["BpjaxError", "BpjaxTypeError", "GradientReport", "Layer", "apply", "as_custom_vjp",
           "autodiff_value_and_grad", "check_gradients", "check_layer", "init_state", "is_contextual",
           "layers", "losses", "predict", "serial", "train", "value_and_grad"]
