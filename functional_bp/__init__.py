"""functional_bp: backpropagation derived by hand, in JAX, checked against jax.grad."""

from .activations import ACTIVATIONS, Activation
from .backprop import Backprop, backprop, grad, value_and_grad
from .checking import GradientReport, check_gradients
from .losses import LOSSES, Loss
from .mlp import forward, init_mlp, objective
from .parallel import data_parallel_value_and_grad

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "Activation",
    "Backprop",
    "GradientReport",
    "LOSSES",
    "Loss",
    "backprop",
    "check_gradients",
    "data_parallel_value_and_grad",
    "forward",
    "grad",
    "init_mlp",
    "objective",
    "value_and_grad",
]
