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

import jax
import jax.numpy as jnp
import numpy as np

from .layers import (
    Activation,
    Attention,
    Conv1D,
    Dense,
    Dropout,
    Embedding,
    Flatten,
    LayerNorm,
    PositionalEmbedding,
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


def gpt(vocab_size: int = 65, block_size: int = 64, n_layer: int = 4, n_head: int = 4,
        n_embd: int = 128, dropout: float = 0.0, bias: bool = True,
        activation: str = "gelu") -> Sequential:
    """nanoGPT's GPT (the GPT-2 architecture, untied head) for (m, T) tokens to (m, T, V) logits.

    ::

        Embedding(V, C), PositionalEmbedding(block_size), Dropout(p),
        n_layer x [Residual(LayerNorm, Dense(3C), Attention(n_head), Dense(C), Dropout(p)),
                   Residual(LayerNorm, Dense(4C), Activation(gelu), Dense(C), Dropout(p))],
        LayerNorm, Dense(V, bias=False)

    Initialised as nanoGPT does: every weight N(0, 0.02^2), the two
    projections back into the residual stream (each block's last Dense)
    N(0, 0.02^2 / (2 n_layer)), biases 0, LayerNorm scale 1 and bias 0
    (Dense draws W ~ N(0, scale / n_in), so scale = std^2 n_in).
    ``bias=False`` drops the bias of every Dense and LayerNorm, as nanoGPT's.
    ``activation="gelu_tanh"`` gives GPT-2's tanh approximation (nanoGPT
    uses the exact ``gelu``). The defaults are nanoGPT's CPU run on
    characters (4 layers, 4 heads, 128 wide, block 64, vocabulary 65).

    Example::

        >>> import jax, jax.numpy as jnp
        >>> from functional_bp import models
        >>> net = models.gpt(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=8)
        >>> params = net.init(jax.random.key(0), (8,))
        >>> net.forward(params, jnp.zeros((3, 5), jnp.int32))[0].shape    # T = 5 <= block_size
        (3, 5, 10)
    """
    for name, v in (("vocab_size", vocab_size), ("block_size", block_size),
                    ("n_layer", n_layer), ("n_head", n_head), ("n_embd", n_embd)):
        if not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
            raise ValueError(f"gpt({name}): a positive integer; got {v!r}")
    if n_embd % n_head:
        raise ValueError(f"gpt: n_embd={n_embd} must be a multiple of n_head={n_head} (each head "
                         f"is n_embd / n_head wide); try n_embd={n_head * max(1, round(n_embd / n_head))}")
    C, var = n_embd, 0.02 ** 2
    var_proj = var / (2 * n_layer)
    attention = Residual(LayerNorm(bias=bias), Dense(3 * C, scale=var * C, bias=bias),
                         Attention(n_head), Dense(C, scale=var_proj * C, bias=bias),
                         Dropout(dropout))
    mlp_block = Residual(LayerNorm(bias=bias), Dense(4 * C, scale=var * C, bias=bias),
                         Activation(activation), Dense(C, scale=var_proj * 4 * C, bias=bias),
                         Dropout(dropout))
    return Sequential(Embedding(vocab_size, C, scale=var), PositionalEmbedding(block_size, scale=var),
                      Dropout(dropout), *[b for _ in range(n_layer) for b in (attention, mlp_block)],
                      LayerNorm(bias=bias), Dense(vocab_size, scale=var * C, bias=False))


# --- nanoGPT checkpoints ---------------------------------------------------------------
_ATTENTION_BRANCH = (LayerNorm, Dense, Attention, Dense, Dropout)
_MLP_BRANCH = (LayerNorm, Dense, Activation, Dense, Dropout)


def _kinds(layers):
    return tuple(type(layer) for layer in layers)


def _nanogpt_names(net):
    """``[(nanoGPT name, params index, leaf, transposed)]`` for a network laid out as :func:`gpt`."""
    L = net.layers if isinstance(net, Sequential) else ()
    n_layer = (len(L) - 5) // 2
    body = L[3:-2]
    if not (len(L) >= 5 and len(L) % 2 == 1
            and _kinds(L[:3]) == (Embedding, PositionalEmbedding, Dropout)
            and _kinds(L[-2:]) == (LayerNorm, Dense)
            and all(type(b) is Residual for b in body)
            and all(_kinds(b.layers) == (_ATTENTION_BRANCH, _MLP_BRANCH)[k % 2]
                    for k, b in enumerate(body))):
        raise ValueError(
            "gpt_params_from_nanogpt(net): the network must be laid out as models.gpt builds it "
            "(Embedding, PositionalEmbedding, Dropout, n_layer pairs of attention and MLP "
            "Residual branches, LayerNorm, Dense); got "
            f"{net!r}: build it with models.gpt(vocab_size, block_size, n_layer, n_head, n_embd, "
            "bias=...) from the checkpoint's model_args")
    names = [("transformer.wte.weight", (0,), "W", False),
             ("transformer.wpe.weight", (1,), "W", False)]

    def layernorm(name, where, layer):
        names.append((f"{name}.weight", where, "scale", False))
        if layer.bias:
            names.append((f"{name}.bias", where, "bias", False))

    def linear(name, where, layer):                  # nn.Linear's weight is (out, in)
        names.append((f"{name}.weight", where, "W", True))
        if layer.bias:
            names.append((f"{name}.bias", where, "b", False))

    for i in range(n_layer):
        h, attn, mlp_ = f"transformer.h.{i}", 3 + 2 * i, 4 + 2 * i
        layernorm(f"{h}.ln_1", (attn, 0), L[attn].layers[0])
        linear(f"{h}.attn.c_attn", (attn, 1), L[attn].layers[1])
        linear(f"{h}.attn.c_proj", (attn, 3), L[attn].layers[3])
        layernorm(f"{h}.ln_2", (mlp_, 0), L[mlp_].layers[0])
        linear(f"{h}.mlp.c_fc", (mlp_, 1), L[mlp_].layers[1])
        linear(f"{h}.mlp.c_proj", (mlp_, 3), L[mlp_].layers[3])
    layernorm("transformer.ln_f", (len(L) - 2,), L[-2])
    names.append(("lm_head.weight", (len(L) - 1,), "W", True))
    return names, n_layer


def _checkpoint_blocks(names):
    blocks = [int(m.group(1)) for k in names if (m := re.match(r"transformer\.h\.(\d+)\.", k))]
    return max(blocks) + 1 if blocks else 0


def gpt_params_from_nanogpt(state_dict, net: Sequential, dtype=jnp.float32) -> list:
    """The params of ``net`` (a :func:`gpt`) from a nanoGPT state dict of NumPy arrays.

    nanoGPT's names map onto the params list as ``net.init`` nests it
    (``params[3 + 2i]``: block i's attention branch, ``params[4 + 2i]``: its
    MLP branch, each ``[LayerNorm, Dense(3C or 4C), {}, Dense(C), {}]``)::

        transformer.wte.weight (V, C)               params[0]["W"]
        transformer.wpe.weight (block_size, C)      params[1]["W"]
        transformer.h.{i}.ln_1.weight, .bias        params[3+2i][0]["scale"], ["bias"]
        transformer.h.{i}.attn.c_attn.weight, .bias params[3+2i][1]["W"] = weight^T, ["b"]
        transformer.h.{i}.attn.c_proj.weight, .bias params[3+2i][3]["W"] = weight^T, ["b"]
        transformer.h.{i}.ln_2.weight, .bias        params[4+2i][0]["scale"], ["bias"]
        transformer.h.{i}.mlp.c_fc.weight, .bias    params[4+2i][1]["W"] = weight^T, ["b"]
        transformer.h.{i}.mlp.c_proj.weight, .bias  params[4+2i][3]["W"] = weight^T, ["b"]
        transformer.ln_f.weight, .bias              params[-2]["scale"], ["bias"]
        lm_head.weight (V, C)                       params[-1]["W"] = weight^T  (C, V)

    PyTorch's ``nn.Linear`` stores (out, in) and computes x W^T + b, Dense
    stores (in, out), so every Linear weight is transposed. The causal-mask
    buffers ``transformer.h.{i}.attn.bias`` (kept by nanoGPT without flash
    attention) and ``torch.compile``'s ``_orig_mod.`` prefix are skipped;
    nanoGPT's tied ``lm_head.weight`` becomes the untied head. Build ``net``
    with the checkpoint's ``model_args`` (``ckpt["model_args"]``): n_head
    cannot be read off the weights, and nanoGPT uses the exact ``gelu``.
    No PyTorch needed: pass ``{k: v.float().numpy() for k, v in
    ckpt["model"].items()}``.

    Args:
      state_dict: nanoGPT's names to arrays (anything ``np.asarray`` reads).
      net: the network, as :func:`gpt` builds it.
      dtype: the params' dtype.

    Returns:
      The params list, nested as ``net.init`` returns it.

    Raises:
      ValueError: a network not laid out as :func:`gpt`; a name missing from
        the state dict or one it has that the network lacks (biases and the
        number of blocks named); a shape that differs from the network's
        (named, with the fix); values that are not real numbers.

    Example (a state dict of ones with nanoGPT's names and shapes)::

        >>> import numpy as np
        >>> from functional_bp import models
        >>> net = models.gpt(vocab_size=6, block_size=8, n_layer=1, n_head=2, n_embd=4, bias=False)
        >>> h = "transformer.h.0"
        >>> shapes = {"transformer.wte.weight": (6, 4), "transformer.wpe.weight": (8, 4),
        ...           f"{h}.ln_1.weight": (4,), f"{h}.attn.c_attn.weight": (12, 4),
        ...           f"{h}.attn.c_proj.weight": (4, 4), f"{h}.ln_2.weight": (4,),
        ...           f"{h}.mlp.c_fc.weight": (16, 4), f"{h}.mlp.c_proj.weight": (4, 16),
        ...           "transformer.ln_f.weight": (4,), "lm_head.weight": (6, 4)}
        >>> params = models.gpt_params_from_nanogpt({k: np.ones(s) for k, s in shapes.items()}, net)
        >>> params[3][1]["W"].shape, params[-1]["W"].shape    # c_attn and lm_head, transposed
        ((4, 12), (4, 6))
        >>> net.forward(params, np.zeros((2, 8), np.int32))[0].shape
        (2, 8, 6)
    """
    if not hasattr(state_dict, "items"):
        raise ValueError("gpt_params_from_nanogpt(state_dict): a mapping of nanoGPT's names to "
                         f"arrays (ckpt['model'] as NumPy arrays); got {type(state_dict).__name__}")
    names, n_layer = _nanogpt_names(net)
    sd = {str(k).removeprefix("_orig_mod."): v for k, v in state_dict.items()}
    mask = re.compile(r"transformer\.h\.\d+\.attn\.bias")
    wanted = {name for name, *_ in names}
    missing = [name for name in wanted if name not in sd]
    unexpected = sorted(k for k in sd if k not in wanted and not mask.fullmatch(k))
    if missing or unexpected:
        blocks = _checkpoint_blocks(sd)
        if blocks != n_layer:
            hint = f"the state dict has {blocks} blocks, the network n_layer={n_layer}"
        elif missing and all(k.endswith(".bias") for k in missing):
            hint = ("the state dict has no biases (nanoGPT's bias=False): build "
                    "models.gpt(..., bias=False)")
        elif unexpected and all(k.endswith(".bias") for k in unexpected):
            hint = "the state dict has biases: build models.gpt(..., bias=True)"
        else:
            hint = "is it a nanoGPT GPT's state dict (ckpt['model'])?"
        raise ValueError(f"gpt_params_from_nanogpt: the state dict does not fit the network: "
                         f"{hint}; missing {sorted(missing)[:6]}, unexpected {unexpected[:6]}")
    block_size = net.layers[1].max_length
    params = jax.eval_shape(lambda key: net.init(key, (block_size,), dtype), jax.random.key(0))
    for name, where, leaf, transposed in names:
        try:
            value = np.asarray(sd[name])
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"gpt_params_from_nanogpt: {name} cannot be read as a NumPy array "
                             f"({e}); pass tensor.float().numpy()") from None
        if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
            raise ValueError(f"gpt_params_from_nanogpt: {name} holds {value.dtype} values, not "
                             "real numbers; pass tensor.float().numpy()")
        target = params[where[0]] if len(where) == 1 else params[where[0]][where[1]]
        shape = target[leaf].shape
        if transposed:
            value = value.T
        if value.shape != shape:
            torch_shape = shape[::-1] if transposed else shape
            raise ValueError(
                f"gpt_params_from_nanogpt: {name} has shape {tuple(np.shape(sd[name]))} but the "
                f"network needs {torch_shape} there (layer {where}, {leaf!r}"
                + (", stored transposed" if transposed else "") + "): build models.gpt with the "
                "checkpoint's vocab_size, block_size and n_embd (ckpt['model_args'])")
        target[leaf] = jnp.asarray(value, dtype)
    return params


MODELS = {"mlp": mlp, "resmlp": resmlp, "cnn": cnn, "gpt": gpt}
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
