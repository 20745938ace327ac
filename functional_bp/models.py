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

Words (arguments in brackets are optional, in this order):

============================  ==========================================================
``dense N``                   :class:`~functional_bp.layers.Dense`
``conv1d F K [S [P [D]]]``    :class:`~functional_bp.layers.Conv1D`: features, kernel,
                              stride, padding (``same``, ``valid`` or an int), dilation
``conv2d F K [S [P [D]]]``    :class:`~functional_bp.layers.Conv2D`; K, S, D an int or
                              ``HxW`` (e.g. ``3x3``)
``maxpool1d W [S]``, ...      ``maxpool1d``, ``avgpool1d``, ``maxpool2d``, ``avgpool2d``:
                              window, stride (default: the window), ``padding=``
``flatten``, ``layernorm``    :class:`~functional_bp.layers.Flatten`, LayerNorm
``dropout R``                 :class:`~functional_bp.layers.Dropout`
``reshape D1 D2 ...``         :class:`~functional_bp.layers.Reshape` (one D may be -1)
``embedding V F``             :class:`~functional_bp.layers.Embedding`
``relu``, ``tanh``, ...       an :class:`~functional_bp.layers.Activation` by name
``res(...)``                  :class:`~functional_bp.layers.Residual` of the inner stack
============================  ==========================================================

Example::

    >>> from functional_bp import models
    >>> models.build("conv1d:4:3:2, relu, flatten, dense:10", 10).output_shape((40, 1))
    (10,)
    >>> [type(l).__name__ for l in models.build("cnn", 10).layers][:3]
    ['Reshape', 'Conv1D', 'Activation']
    >>> models.build("dense 16, tanh, res(layernorm, dense 16, relu), dense 3", 3).layers[2]
    Residual(LayerNorm(eps=1e-05), Dense(features=16, scale=2.0), Activation('relu'))
"""

from __future__ import annotations

import re

from .activations import ACTIVATIONS
from .layers import (
    Activation,
    AvgPool1D,
    AvgPool2D,
    Conv1D,
    Conv2D,
    Dense,
    Dropout,
    Embedding,
    Flatten,
    LayerNorm,
    MaxPool1D,
    MaxPool2D,
    Reshape,
    Residual,
    Sequential,
)


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
      text: a name in :data:`MODELS` (the head then has ``n_outputs`` outputs),
        or a text stack (which sets its own last layer).
      n_outputs: the outputs of a named model.

    Raises:
      ValueError: an unknown word, a missing or malformed argument, or an
        unbalanced ``res(``, naming the layer and what was expected.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"a model is a name ({', '.join(MODELS)}) or a text stack such as "
                         f"'dense 64, relu, dense 10'; got {text!r}")
    name = text.strip().lower()
    if name in MODELS:
        return MODELS[name](n_outputs)
    layers, _ = _stack(text, 0, top=True)
    return Sequential(*layers)


# --- the parser -------------------------------------------------------------------
_POOLS = {"maxpool1d": MaxPool1D, "avgpool1d": AvgPool1D,
          "maxpool2d": MaxPool2D, "avgpool2d": AvgPool2D}
_WORDS = ("dense, conv1d, conv2d, " + ", ".join(_POOLS) + ", flatten, layernorm, dropout, "
          "reshape, embedding, res(...), or an activation (" + ", ".join(sorted(ACTIVATIONS))
          + ")")


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


def _ints(value, n, word):
    """'3' -> 3, '3x5' -> (3, 5) (2-D layers only)."""
    parts = value.lower().split("x")
    try:
        ints = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"{word!r}: {value!r} is not an integer"
                         + (" or HxW" if n == 2 else "")) from None
    if len(ints) == 1:
        return ints[0]
    if len(ints) != n:
        raise ValueError(f"{word!r}: {value!r} must be one integer" +
                         (" or HxW" if n == 2 else ""))
    return ints


def _padding(value, word):
    if value.lower() in ("same", "valid"):
        return value.upper()
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{word!r}: padding is same, valid or an integer; got {value!r}") \
            from None


def _layer(word):
    tokens = [t for t in re.split(r"[\s:]+", word) if t]
    kind, args = tokens[0].lower(), tokens[1:]
    positional = [a for a in args if "=" not in a]
    options = dict(a.split("=", 1) for a in args if "=" in a)

    def need(names, at_least):
        if len(positional) < at_least or len(positional) > len(names):
            usage = " ".join(n if k < at_least else f"[{n}]" for k, n in enumerate(names))
            raise ValueError(f"{word!r}: {kind} takes {usage or 'no arguments'}; got "
                             f"{len(positional)} argument(s)")
        unknown = set(options) - set(names)
        if unknown:
            raise ValueError(f"{word!r}: unknown option(s) {sorted(unknown)}; {kind} takes "
                             f"{', '.join(names)}")
        values = dict(zip(names, positional))
        values.update(options)
        return values

    if kind in ACTIVATIONS:
        need((), 0)
        return Activation(kind)
    if kind in ("flatten", "layernorm"):
        need((), 0)
        return Flatten() if kind == "flatten" else LayerNorm()
    if kind == "dense":
        return Dense(_ints(need(("features",), 1)["features"], 1, word))
    if kind == "dropout":
        rate = need(("rate",), 1)["rate"]
        try:
            return Dropout(float(rate))
        except ValueError:
            raise ValueError(f"{word!r}: the dropout rate is a number in [0, 1); got "
                             f"{rate!r}") from None
    if kind == "embedding":
        v = need(("vocab_size", "features"), 2)
        return Embedding(_ints(v["vocab_size"], 1, word), _ints(v["features"], 1, word))
    if kind == "reshape":
        if not positional or options:
            raise ValueError(f"{word!r}: reshape takes the target shape, e.g. 'reshape 40 1'")
        return Reshape(tuple(_ints(a, 1, word) for a in positional))
    if kind in ("conv1d", "conv2d"):
        n = int(kind[4])
        v = need(("features", "kernel_size", "stride", "padding", "dilation"), 2)
        kw = {k: _ints(v[k], n, word) for k in ("stride", "dilation") if k in v}
        if "padding" in v:
            kw["padding"] = _padding(v["padding"], word)
        return (Conv1D if n == 1 else Conv2D)(_ints(v["features"], 1, word),
                                              _ints(v["kernel_size"], n, word), **kw)
    if kind in _POOLS:
        n = int(kind[-2])
        v = need(("window", "stride", "padding"), 1)
        kw = {"stride": _ints(v["stride"], n, word)} if "stride" in v else {}
        if "padding" in v:
            kw["padding"] = _padding(v["padding"], word)
        return _POOLS[kind](_ints(v["window"], n, word), **kw)
    raise ValueError(f"unknown layer {tokens[0]!r} in {word!r}; the words are {_WORDS} (or a "
                     f"named model: {', '.join(MODELS)})")
