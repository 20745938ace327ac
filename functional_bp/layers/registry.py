"""The layer types, in one explicit list: checkpoints, the text form, the command line and the docs read it.

Each registered type has a name (its class name: the ``"type"`` of a
network description in a checkpoint, see :mod:`~functional_bp.layers.config`)
and its words in the text form of :func:`functional_bp.models.build`
(``dense``, ``conv1d``, ...). A word's arguments are the class's dataclass
fields, in field order (the first ones positional, any as ``name=value``),
each read by its type annotation:

- ``int``, ``float``, ``str``: the number or the text; ``bool``: ``true`` or
  ``false`` (also ``1``/``0``, ``yes``/``no``);
- ``tuple[int, ...]``: the rest of the positional arguments (``reshape 40 1``),
  or one value ``AxB`` or ``A,B`` (empty: the empty tuple);
- anything else (``Any``): an integer, a number, ``AxB`` for a tuple of
  integers (``3x3``), ``none``, or the text itself (``padding=same``).

So a new layer type needs no parser code: ``layernorm eps=1e-6``, or a user's
``rmsnorm eps=1e-6`` once registered. The layer's own ``__post_init__``
validates the values; its message is passed on with the word in front.

A user's layer type is registered explicitly, and may not take a built-in's
name or word::

    >>> import dataclasses
    >>> from functional_bp import layers as fl
    >>> @dataclasses.dataclass(frozen=True)
    ... class Double(fl.Layer):
    ...     def forward(self, params, x, key=None):
    ...         return 2 * x, None
    ...     def backward(self, params, cache, dy):
    ...         return {}, 2 * dy
    >>> fl.register(Double, "double") is Double
    True
    >>> from functional_bp import models
    >>> models.build("dense 4, double, dense 2", 2).layers[1]
    Double()
    >>> fl.register(fl.Dense, "mydense")
    Traceback (most recent call last):
    ...
    ValueError: register(Dense): Dense is a built-in layer type; a user's layer needs its own class name
    >>> 'dense' in fl.layer_words() and 'double' in fl.layer_words()
    True

Private bases (``_Conv``, ``_Pool``) are not types; a class that is not
registered is not found by :func:`layer_type`, even if its name is a
built-in's (a user's own class called ``Dense`` never replaces the built-in).
"""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any

from ..activations import ACTIVATIONS
from .activation import Activation
from .attention import Attention
from .base import Layer
from .conv import Conv1D, Conv2D
from .dense import Dense
from .dropout import Dropout
from .embedding import Embedding
from .flatten import Flatten
from .layernorm import LayerNorm
from .pool import AvgPool1D, AvgPool2D, MaxPool1D, MaxPool2D
from .positional import PositionalEmbedding
from .reshape import Reshape
from .sequential import Residual, Sequential

#: The built-in layer types, one line each: (class, its words in the text form).
#: Activation's words are the activation names; Residual's word is ``res(...)``.
BUILTIN = (
    (Dense, ("dense",)),
    (Conv1D, ("conv1d",)),
    (Conv2D, ("conv2d",)),
    (MaxPool1D, ("maxpool1d",)),
    (AvgPool1D, ("avgpool1d",)),
    (MaxPool2D, ("maxpool2d",)),
    (AvgPool2D, ("avgpool2d",)),
    (Flatten, ("flatten",)),
    (Reshape, ("reshape",)),
    (LayerNorm, ("layernorm",)),
    (Dropout, ("dropout",)),
    (Embedding, ("embedding",)),
    (PositionalEmbedding, ("posemb", "positional")),
    (Attention, ("attention",)),
    (Activation, tuple(ACTIVATIONS)),
    (Residual, ("res",)),
    (Sequential, ()),
)

_types: dict[str, type] = {}            # name -> class
_words: dict[str, tuple] = {}           # word -> (class, preset options)
_builtin_names: frozenset = frozenset()
_builtin_words: frozenset = frozenset()
CONTAINERS = (Sequential, Residual)     # their text form is res(...), not a word


def _add(cls, words):
    _types[cls.__name__] = cls
    for word in words:
        preset = {"fn": word} if cls is Activation else {}
        _words[word] = (cls, preset)


for _cls, _ws in BUILTIN:
    _add(_cls, _ws)
_builtin_names, _builtin_words = frozenset(_types), frozenset(_words)


def register(cls, *words: str):
    """Register a user's layer type ``cls`` under its class name and the text-form ``words``.

    After ``register(RMSNorm, "rmsnorm")``, checkpoints of networks holding
    an ``RMSNorm`` load (the class must be registered in the loading
    process too), and ``models.build("rmsnorm eps=1e-6, ...")`` builds one,
    its options read from the dataclass fields. Registering the same class
    again is allowed (its words are added).

    Raises:
      TypeError: ``cls`` is not a dataclass subclass of ``Layer``, or a word
        is not a string.
      ValueError: the class name or a word is a built-in's, another
        registered class has the same name or word, or a word is malformed.
    """
    where = f"register({getattr(cls, '__name__', cls)!r})"
    if not (isinstance(cls, type) and issubclass(cls, Layer) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"{where}: a layer type is a frozen dataclass subclass of "
                        f"functional_bp.layers.Layer; got {cls!r}")
    where = f"register({cls.__name__})"
    name = cls.__name__
    if name in _builtin_names:
        raise ValueError(f"{where}: {name} is a built-in layer type; a user's layer needs its "
                         "own class name")
    if name in _types and not _same(_types[name], cls):
        raise ValueError(f"{where}: another class named {name} is registered already "
                         f"({_types[name].__module__}.{_types[name].__qualname__}); rename "
                         "the class")
    for word in words:
        if not isinstance(word, str):
            raise TypeError(f"{where}: words are strings; got {word!r}")
        if not re.fullmatch(r"[a-z][a-z0-9_]*", word):
            raise ValueError(f"{where}: a word is lowercase letters, digits and _, starting with "
                             f"a letter; got {word!r}")
        if word in _builtin_words or word == "residual":
            owner = _words[word][0].__name__ if word in _words else "Residual"
            raise ValueError(f"{where}: {word!r} is the word of the built-in {owner}; choose "
                             "another")
        if word in _words and not _same(_words[word][0], cls):
            raise ValueError(f"{where}: {word!r} is taken by {_words[word][0].__name__}; "
                             "choose another")
    if name in _types:  # the same class, or its redefinition (a notebook cell run again)
        for word in [w for w, (c, _) in _words.items() if c is _types[name]]:
            _words[word] = (cls, _words[word][1])
    _add(cls, words)
    return cls


def _same(a, b) -> bool:
    """The same class, or a redefinition of it (same module and qualified name)."""
    return a is b or (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def layer_type(name: str) -> type:
    """The registered class named ``name`` (a network description's ``"type"``)."""
    if not isinstance(name, str) or name not in _types:
        raise ValueError(f"unknown layer type {name!r} in a network description; known: "
                         f"{sorted(_types)} (a user's layer type must be registered first: "
                         "functional_bp.layers.register(MyLayer, 'mylayer'))")
    return _types[name]


def layer_types() -> dict:
    """Every registered layer type: name -> class (built-ins first)."""
    return dict(_types)


def is_registered(cls) -> bool:
    return _types.get(getattr(cls, "__name__", None)) is cls


def layer_words() -> list:
    """The words of the text form, in the registry's order (``res`` is written ``res(...)``)."""
    return [w for w, (cls, _) in _words.items() if cls not in CONTAINERS]


# --- the text form's arguments, from the dataclass fields ------------------------------
def _fields(cls, preset):
    """[(field name, annotation, has a default)] of the options a word takes, in order."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # annotations naming what the class's module does not hold
        hints = {f.name: _SIMPLE.get(f.type, f.type) for f in dataclasses.fields(cls)}
        hints = {k: v if isinstance(v, type) else Any for k, v in hints.items()}
    return [(f.name, hints.get(f.name, Any),
             f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING)
            for f in dataclasses.fields(cls) if f.init and f.name not in preset]


_SIMPLE = {"int": int, "float": float, "bool": bool, "str": str}


def _is_tuple(hint):
    return typing.get_origin(hint) is tuple or hint is tuple


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def parse_value(text: str, hint, where: str):
    """``text`` read as a value of type ``hint`` (see the module doc); ``where`` names the option."""
    low = text.lower()
    if hint is bool:
        if low in _TRUE + _FALSE:
            return low in _TRUE
        raise ValueError(f"{where}: true or false; got {text!r}")
    if hint is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{where}: an integer; got {text!r}") from None
    if hint is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{where}: a number; got {text!r}") from None
    if hint is str:
        return text
    if _is_tuple(hint):
        args = typing.get_args(hint)
        item = args[0] if args else Any
        if not low:
            return ()  # mlp's hidden= : no hidden layers
        parts = low.split(",") if "," in low else low.split("x")  # 64,64 or 3x3
        return tuple(parse_value(p, item, where) for p in parts)
    if low == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if re.fullmatch(r"\d+(x\d+)+", low):
        return tuple(int(p) for p in low.split("x"))
    return text


def _usage(fields):
    """``features [scale] [bias]``: the arguments in order, optional ones in brackets."""
    parts = [name if not has_default else f"[{name}]" for name, _, has_default in fields]
    if fields and _is_tuple(fields[-1][1]):
        parts[-1] = f"{fields[-1][0]}..."
    return " ".join(parts) or "no arguments"


def layer_from_words(word: str, args, text: str | None = None) -> Layer:
    """The layer of a text-form word and its arguments (strings: ``"8"``, ``"stride=2"``).

    ``text`` (default: the word and its arguments) names the layer in errors.
    """
    text = text if text is not None else " ".join([word, *args])
    if word not in _words or _words[word][0] in CONTAINERS:
        raise KeyError(word)
    cls, preset = _words[word]
    fields = _fields(cls, preset)
    hints = {name: hint for name, hint, _ in fields}
    positional = [a for a in args if "=" not in a]
    values = {}
    for a in args:
        if "=" not in a:
            continue
        key, value = a.split("=", 1)
        if key not in hints:
            raise ValueError(f"{text!r}: unknown option {key!r}; {word} takes "
                             + (", ".join(hints) if hints else "no options")
                             + f" ({word} {_usage(fields)})")
        if key in values:
            raise ValueError(f"{text!r}: {key} is given twice ({key}={values[key]} and {a})")
        values[key] = value
    given = {}
    rest = list(positional)
    for name, hint, _ in fields:
        if not rest:
            break
        if _is_tuple(hint) and name == fields[-1][0]:
            given[name], rest = rest, []
        else:
            given[name] = rest.pop(0)
    if rest:
        raise ValueError(f"{text!r}: {word} takes {_usage(fields)}; got {len(positional)} "
                         "argument(s)")
    for name in given:
        if name in values:
            shown = " ".join(given[name]) if isinstance(given[name], list) else given[name]
            raise ValueError(f"{text!r}: {name} is given twice (as the argument {shown} and as "
                             f"{name}={values[name]}); give it once")
    values.update(given)
    missing = [name for name, _, has_default in fields if not has_default and name not in values]
    if missing:
        raise ValueError(f"{text!r}: {word} takes {_usage(fields)}; missing "
                         f"{', '.join(missing)} (got {len(positional)} argument(s))")
    options = dict(preset)
    for name, value in values.items():
        where = f"{text!r}: {name}"
        if isinstance(value, list):  # the rest of the positional arguments, one tuple
            item = (typing.get_args(hints[name]) or (Any,))[0]
            options[name] = tuple(parse_value(v, item, where) for v in value)
        else:
            options[name] = parse_value(value, hints[name], where)
    try:
        return cls(**options)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{text!r}: {e}") from None


# --- the table of the docs ------------------------------------------------------------
def words_table(user: bool = False) -> str:
    """The text form's words as a Markdown table, one row per built-in layer type.

    docs/layers.md shows it (a test keeps the page in step); ``user=True``
    adds the user's registered types.
    """
    rows = ["| words | layer | arguments, in order (`[optional]`; any as `name=value`) |",
            "|---|---|---|"]
    for name, cls in _types.items():
        if not user and name not in _builtin_names:
            continue
        words = [w for w, (c, _) in _words.items() if c is cls]
        if cls is Sequential:
            continue
        if cls is Residual:
            rows.append("| `res(...)` | `Residual` | the layers of its body, separated by commas |")
            continue
        if not words:
            continue
        preset = _words[words[0]][1]
        fields = _fields(cls, preset)
        shown = ", ".join(f"`{w}`" for w in words)
        if cls is Activation:
            rows.append(f"| {shown} | `Activation` | none |")
            continue
        usage = f"`{_usage(fields)}`" if fields else "none"
        rows.append(f"| {shown} | `{name}` | {usage} |")
    return "\n".join(rows)
