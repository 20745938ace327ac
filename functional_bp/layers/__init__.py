"""Layers: each layer type owns its forward, its hand-derived backward and its per-example norm.

The layer-by-layer form of the derivation: a network is a
:class:`Sequential` of layers; the backward of the network is the loop
``for layer in reversed(layers): dparams, dy = layer.backward(params, cache, dy)``.
Every public function of :mod:`functional_bp` takes ``network=`` in place
of ``activations=``::

    >>> import jax, jax.numpy as jnp, functional_bp as fbp
    >>> from functional_bp import layers as fl
    >>> net = fl.Sequential(fl.Dense(16), fl.Activation("relu"),
    ...                     fl.Residual(fl.LayerNorm(), fl.Dense(16), fl.Activation("tanh")),
    ...                     fl.Dense(3))
    >>> params = net.init(jax.random.key(0), (4,))
    >>> x, y = jnp.ones((8, 4)), jnp.zeros((8,), dtype=jnp.int32)
    >>> J, grads = fbp.value_and_grad(params, (x, y), network=net, loss="softmax_cross_entropy")
    >>> grads[2][1]["W"].shape
    (16, 16)
"""

from .activation import Activation
from .attention import Attention
from .base import Layer
from .config import from_config, to_config
from .conv import Conv1D, Conv2D
from .dense import Dense
from .dropout import Dropout
from .embedding import Embedding
from .flatten import Flatten
from .layernorm import LayerNorm
from .positional import PositionalEmbedding
from .pool import AvgPool1D, AvgPool2D, MaxPool1D, MaxPool2D
from .registry import layer_type, layer_types, layer_words, register, words_table
from .reshape import Reshape
from .sequential import Residual, Sequential

__all__ = [
    "Activation",
    "Attention",
    "AvgPool1D",
    "AvgPool2D",
    "Conv1D",
    "Conv2D",
    "Dense",
    "Dropout",
    "Embedding",
    "Flatten",
    "Layer",
    "LayerNorm",
    "MaxPool1D",
    "MaxPool2D",
    "PositionalEmbedding",
    "Reshape",
    "Residual",
    "Sequential",
    "from_config",
    "layer_type",
    "layer_types",
    "layer_words",
    "register",
    "to_config",
    "words_table",
]
