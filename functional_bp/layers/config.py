"""A network as JSON-ready data, and back: what checkpoints record.

``to_config(net)`` gives nested dicts such as
``{"type": "Sequential", "layers": [{"type": "Dense", "features": 10, "scale": 2.0}, ...]}``;
``from_config`` rebuilds an equal (``==``) network, each ``"type"`` looked up
in the explicit registry of layer types (:mod:`~functional_bp.layers.registry`):
the built-ins, and a user's types registered with
:func:`~functional_bp.layers.register` (in the loading process too). A user's
class that is not registered cannot be written (the error says how to
register it), and a class of a built-in's name never replaces the built-in.
Built-in activations are stored by name; a user's own activation (functions)
cannot be stored and raises, naming the layer.

Example::

    >>> from functional_bp import layers as fl
    >>> net = fl.Sequential(fl.Dense(8), fl.Activation("relu"), fl.Residual(fl.Dense(8)))
    >>> fl.from_config(fl.to_config(net)) == net
    True
"""

from __future__ import annotations

import dataclasses

from ..activations import ACTIVATIONS
from .base import Layer
from .registry import is_registered, layer_type
from .sequential import Sequential


def to_config(layer: Layer) -> dict:
    """The layer (or network) as a dict of its type and options, JSON-ready."""
    if not is_registered(type(layer)):
        raise ValueError(
            f"{layer!r}: its type {type(layer).__name__} is not registered, so a checkpoint "
            "could not rebuild it: register it first, functional_bp.layers.register("
            f"{type(layer).__name__}, '{type(layer).__name__.lower()}'), in the process that "
            "loads it too"
        )
    if isinstance(layer, Sequential):
        return {"type": type(layer).__name__, "layers": [to_config(l) for l in layer.layers]}
    config = {"type": type(layer).__name__}
    for field in dataclasses.fields(layer):
        value = getattr(layer, field.name)
        if field.name == "fn":  # an Activation layer's function pair
            if ACTIVATIONS.get(value.name) is not value:
                raise ValueError(
                    f"{layer!r}: a user-defined activation cannot be written to a checkpoint "
                    "(it is code); use a built-in name, or save the params alone"
                )
            value = value.name
        config[field.name] = list(value) if isinstance(value, tuple) else value
    return config


def from_config(config: dict) -> Layer:
    """The layer (or network) that :func:`to_config` described."""
    kind = config.get("type") if isinstance(config, dict) else None
    cls = layer_type(kind)
    if issubclass(cls, Sequential):
        return cls(*(from_config(c) for c in config.get("layers", [])))
    options = {k: (tuple(v) if isinstance(v, list) else v)
               for k, v in config.items() if k != "type"}
    return cls(**options)


def skeleton(net: Sequential) -> list:
    """The params structure with no arrays: ``{}`` per leaf layer, lists for containers."""
    return [skeleton(l) if isinstance(l, Sequential) else {} for l in net.layers]
