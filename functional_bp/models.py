"""Named networks, and a compact text form for a custom stack of layers.

Named models (each a function returning a :class:`~functional_bp.layers.Sequential`
whose last layer has ``n_outputs`` outputs):

- :func:`mlp`: the MNIST-1D paper's MLP, Flatten, Dense(100), ReLU,
  Dense(100), ReLU, Dense(n_outputs);
- :func:`resmlp`: Dense(width), ReLU, then residual blocks
  x + Dense(ReLU(Dense(LayerNorm(x)))), then the head;
- :func:`cnn`: the MNIST-1D paper's CNN for 1-D signals of shape (L,):
  a channel axis, three Conv1D of 25 channels (kernel 5 stride 2 padding 1,
  then kernel 3 stride 2 padding 1 twice), each followed by ReLU, then
  Flatten and Dense(n_outputs). On MNIST-1D's 40 samples: 40 -> 19 -> 10 -> 5
  positions, 125 features into the head.

The text form: layers separated by commas; in a layer, the name then its
arguments, separated by spaces or colons; options as ``name=value``;
``res(...)`` wraps a sub-stack as a residual block y = x + f(x)::

    dense 64, relu, dense 10                       Dense(64), Activation("relu"), Dense(10)
    conv1d:32:5:2, relu, flatten, dense:10         Conv1D(32, 5, stride=2), ...
    reshape 40 1, conv1d 16 3 padding=same, relu, maxpool1d 2, flatten, dense 10
    conv2d 8 3x3 stride=2, tanh, avgpool2d 2, flatten, dense 10
    dense 16, tanh, res(layernorm, dense 16, relu), dense 10
    embedding 100 8, flatten, dense 2

The words are those of the registry of layer types
(:mod:`functional_bp.layers.registry`), one or more per type, and a word's
arguments are its layer's dataclass fields in field order (brackets: optional;
any argument may be written ``name=value``, but only once). The table,
rendered by :func:`functional_bp.layers.words_table`, is in docs/layers.md;
:func:`functional_bp.layers.layer_words` lists the words. A named model takes
its function's options as ``name=value`` (``resmlp width=64 blocks=1``,
``mlp hidden=64,64 activation=tanh``).

Example::

    >>> from functional_bp import models
    >>> models.build("conv1d:4:3:2, relu, flatten, dense:10", 10).output_shape((40, 1))
    (10,)
    >>> [type(l).__name__ for l in models.build("cnn", 10).layers][:3]
    ['Reshape', 'Conv1D', 'Activation']
    >>> models.build("dense 16, tanh, res(layernorm, dense 16, relu), dense 3", 3).layers[2]
    Residual(LayerNorm(eps=1e-05), Dense(features=16, scale=2.0), Activation('relu'))
    >>> models.build("layernorm eps=1e-6, dense 4 scale=1", 4).layers
    (LayerNorm(eps=1e-06), Dense(features=4, scale=1.0))
    >>> models.build("resmlp width=8 blocks=1", 3).output_shape((5,))
    (3,)
"""

from __future__ import annotations

import inspect
import re

from .layers import (
    Activation,
    Conv1D,
    Dense,
    Flatten,
    LayerNorm,
    Reshape,
    Residual,
    Sequential,
    layer_words,
)
from .layers.registry import layer_from_words, parse_value


def mlp(n_outputs: int = 10, hidden=(100, 100), activation: str = "relu",
        scale: float = 2.0) -> Sequential:
    """Flatten, then Dense(h), Activation for each width h in ``hidden``, then Dense(n_outputs).

    ``scale``: each W ~ N(0, scale / fan_in) at init (2: "he"; 1/3: PyTorch's default variance).
    """
    layers = [Flatten()]
    for h in hidden:
        layers += [Dense(h, scale=scale), Activation(activation)]
    return Sequential(*layers, Dense(n_outputs, scale=scale))


def resmlp(n_outputs: int = 10, width: int = 100, blocks: int = 2,
           activation: str = "relu") -> Sequential:
    """Flatten, Dense(width), g, then ``blocks`` of x + Dense(g(Dense(LayerNorm(x)))), Dense(n_outputs)."""
    if not (isinstance(blocks, int) and not isinstance(blocks, bool) and blocks >= 0):
        raise ValueError(f"resmlp(blocks): the number of residual blocks, an integer >= 0; "
                         f"got {blocks!r}")
    body = [Residual(LayerNorm(), Dense(width), Activation(activation), Dense(width))
            for _ in range(blocks)]
    return Sequential(Flatten(), Dense(width), Activation(activation), *body, Dense(n_outputs))


def cnn(n_outputs: int = 10, channels: int = 25, scale: float = 1 / 3) -> Sequential:
    """The MNIST-1D CNN: signals (L,) get a channel axis, three Conv1D + ReLU, Flatten, Dense.

    Conv1D(channels, 5, stride=2, padding=1), then twice Conv1D(channels, 3,
    stride=2, padding=1), each followed by ReLU. The first layer,
    Reshape((-1, 1)), reads each example as one channel of L samples.
    ``scale``: each W ~ N(0, scale / fan_in) at init; the default 1/3 is the
    variance of PyTorch's default initialisation, which the paper's code used
    (with He's 2, the CNN ends about 2 points lower on MNIST-1D).
    """
    return Sequential(
        Reshape((-1, 1)),
        Conv1D(channels, 5, stride=2, padding=1, scale=scale), Activation("relu"),
        Conv1D(channels, 3, stride=2, padding=1, scale=scale), Activation("relu"),
        Conv1D(channels, 3, stride=2, padding=1, scale=scale), Activation("relu"),
        Flatten(), Dense(n_outputs, scale=scale),
    )


MODELS = {"mlp": mlp, "resmlp": resmlp, "cnn": cnn}
"""The named models: name -> function of ``n_outputs``."""


def build(text: str, n_outputs: int = 10) -> Sequential:
    """The network a name or a text stack describes (see the module doc for the words).

    Args:
      text: a name in :data:`MODELS`, optionally with its options as
        ``name=value`` (``"resmlp width=64 blocks=1"``; a tuple such as
        mlp's ``hidden`` is written ``hidden=64,64``), the head then having
        ``n_outputs`` outputs; or a text stack (which sets its own last layer).
      n_outputs: the outputs of a named model.

    Raises:
      ValueError: an unknown word or option, an option given twice, a
        missing or malformed argument, or an unbalanced ``res(``, naming the
        layer and what was expected.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"a model is a name ({', '.join(MODELS)}) or a text stack such as "
                         f"'dense 64, relu, dense 10'; got {text!r}")
    name, *options = text.split()
    if name.lower() in MODELS:
        return _named(MODELS[name.lower()], name.lower(), options, text, n_outputs)
    layers, _ = _stack(text, 0, top=True)
    return Sequential(*layers)


def _show(v):
    if isinstance(v, float):
        return f"{v:g}"
    return ",".join(map(str, v)) if isinstance(v, tuple) else str(v)


def _named(fn, name, words, text, n_outputs):
    """``fn(n_outputs, **options)`` for the ``name=value`` words, each read by its parameter's type."""
    params = list(inspect.signature(fn).parameters.values())[1:]  # the first is n_outputs
    defaults = {p.name: p.default for p in params}
    known = ", ".join(f"{k}={_show(v)}" for k, v in defaults.items())
    options = {}
    for word in words:
        key, eq, value = word.partition("=")
        if not eq or key not in defaults:
            raise ValueError(f"{text!r}: a named model takes options as name=value; {name} "
                             f"takes {known} (the defaults); got {word!r}")
        if key in options:
            raise ValueError(f"{text!r}: {key} is given twice; give it once")
        default = defaults[key]
        hint = tuple[int, ...] if isinstance(default, tuple) else type(default)
        options[key] = parse_value(value, hint, f"{text!r}: {key} (like its default "
                                                f"{key}={_show(default)})")
    return fn(n_outputs, **options)


# --- the parser -------------------------------------------------------------------
def _words():
    return (", ".join(w for w in layer_words()) + ", res(...)")


def _stack(text, i, top):
    """Parse layers from text[i:] up to the end (top) or the matching ')': (layers, next i)."""
    layers = []
    if not top and text[i:].lstrip().startswith(")"):  # res(): caught by the caller
        return layers, text.index(")", i) + 1
    while True:
        match = re.compile(r"\s*(res|residual)\s*\(", re.I).match(text, i)
        if match:
            inner, i = _stack(text, match.end(), top=False)
            if not inner:
                raise ValueError(f"res(...) at position {match.start()} of {text!r} is empty: "
                                 "put layers inside, e.g. res(layernorm, dense 16, relu)")
            layers.append(Residual(*inner))
            j = i
        else:
            j = i
            while j < len(text) and text[j] not in ",()":
                j += 1
            if j < len(text) and text[j] == "(":
                raise ValueError(f"unexpected '(' at position {j} of {text!r}: only res(...) "
                                 "takes a sub-stack")
            word = text[i:j].strip()
            if not word:
                raise ValueError(f"an empty layer at position {i} of {text!r}: remove the "
                                 "extra comma")
            layers.append(_layer(word))
        i = j
        while i < len(text) and text[i].isspace():
            i += 1
        if i == len(text):
            if not top:
                raise ValueError(f"res( is never closed in {text!r}: add a ')'")
            return layers, i
        if text[i] == ")":
            if top:
                raise ValueError(f"unmatched ')' at position {i} of {text!r}")
            return layers, i + 1
        i += 1  # the comma


def _layer(word):
    """One layer of the text form: its word, then its arguments (spaces or colons between)."""
    tokens = [t for t in re.split(r"[\s:]+", word) if t]
    try:
        return layer_from_words(tokens[0].lower(), tokens[1:], word)
    except KeyError:
        raise ValueError(f"unknown layer {tokens[0]!r} in {word!r}; the words are {_words()} "
                         f"(or a named model: {', '.join(MODELS)})") from None
