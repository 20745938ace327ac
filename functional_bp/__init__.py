"""functional_bp: backpropagation derived by hand, in JAX, checked against jax.grad."""

from . import columns, layers, models, privacy
from .activations import ACTIVATIONS, Activation
from .backprop import Backprop, backprop, grad, value_and_grad
from .checking import GradientReport, check_gradients
from .checkpoint import load_params, save_params
from .custom_vjp import custom_vjp_objective
from .losses import LOSSES, Loss
from .mlp import forward, init_mlp, objective
from .per_example import clipped_grad, per_example_grad_norms, per_example_grads
from .parallel import data_parallel_value_and_grad
from .train import TrainState, fit, init_state, load_state, save_state

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "Activation",
    "Backprop",
    "GradientReport",
    "LOSSES",
    "Loss",
    "TrainState",
    "backprop",
    "check_gradients",
    "clipped_grad",
    "custom_vjp_objective",
    "data_parallel_value_and_grad",
    "fit",
    "forward",
    "grad",
    "init_mlp",
    "init_state",
    "load_params",
    "load_state",
    "objective",
    "per_example_grad_norms",
    "per_example_grads",
    "save_params",
    "save_state",
    "value_and_grad",
]
