"""Checkpoints: params (and optional extra arrays) in one ``.npz``, written atomically.

File layout (a plain ``numpy.savez`` archive, readable without this library):

- ``W1, b1, ..., WL, bL``: the params, layer l = 1..L as in the equations;
- ``__meta__``: a JSON string: ``format``, ``version`` (the library's),
  ``sizes`` [n_0, ..., n_L], ``dtype``, ``activations`` and ``loss`` (names,
  when given), and any user metadata;
- ``extra/<name>``: optional extra arrays (the trainer stores the optimizer
  state and the key schedule there).

Writes go to a temporary file in the same directory, are flushed and fsynced,
then renamed over the target with ``os.replace``: a crash leaves either the old
file or the new one, never half of one (:func:`write_atomically`, also used for
the command line's ``metrics.json``). A temporary file left by a killed save is
removed by the next save of the same file.

Example::

    >>> import jax, tempfile, os, functional_bp as fbp
    >>> from functional_bp.checkpoint import save_params, load_params
    >>> params = fbp.init_mlp(jax.random.key(0), [4, 8, 3])
    >>> path = os.path.join(tempfile.mkdtemp(), "params.npz")
    >>> _ = save_params(path, params, activations=["relu", "identity"])
    >>> [p["W"].shape for p in load_params(path, sizes=[4, 8, 3])]
    [(4, 8), (8, 3)]
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import zipfile
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _validate
from .layers import Sequential
from .layers.base import abstract_init, check_input_shape

FORMAT = "functional_bp.params/1"
_META = "__meta__"
_EXTRA = "extra/"


class CheckpointError(ValueError):
    """A checkpoint file is truncated, corrupted, or not what was expected."""


class Checkpoint(NamedTuple):
    """Everything in a checkpoint file.

    Attributes:
      params: list of ``{"W", "b"}`` dicts (jax arrays), or a network's params.
      metadata: the JSON metadata (sizes or network, activations, loss, version, ...).
      extra: dict of the extra numpy arrays saved alongside.
      network: the :class:`functional_bp.layers.Sequential` rebuilt from the
        metadata, or None for an MLP checkpoint.
    """

    params: list
    metadata: dict
    extra: dict
    network: Any = None


def _names(spec):
    return [getattr(a, "name", a) for a in spec] if spec is not None else None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _leaf_name(path) -> str:
    """'p/2/1/W' for params[2][1]["W"]."""
    return "p/" + "/".join(str(getattr(k, "idx", getattr(k, "key", k))) for k in path)


# --- params against their network -----------------------------------------------------
_TRIAL_LENGTHS = (1, 8, 1024)
"""Spatial or sequence lengths tried when the input shape is not recorded (see :func:`check_fits`)."""


def _fits_some_input(layer, p):
    """(the keys ``layer`` makes, an example of what it makes, whether ``p`` fits some input).

    The input shape is not known here; ``p``'s own axis sizes are tried as the
    input's last axis (features or channels; a weight's second-to-last axis
    first), alone or after 1 or 2 axes of a few lengths. ``p`` fits when one of
    those inputs makes exactly its keys and shapes.
    """
    shapes = tuple(sorted((k, tuple(int(n) for n in np.shape(v))) for k, v in p.items()))
    try:
        return _fits_shapes(layer, shapes)
    except TypeError:  # a layer that cannot be hashed: not cached
        return _fits_shapes.__wrapped__(layer, shapes)


@functools.lru_cache(maxsize=256)
def _fits_shapes(layer, shapes):
    got = dict(shapes)
    order = [s[-2] for s in got.values() if len(s) >= 2] + [n for s in got.values() for n in s]
    sizes = list(dict.fromkeys(n for n in order if n > 0)) or [1]
    keys = example = None
    for n in sizes:
        for lead in [()] + [(k,) * r for r in (1, 2) for k in _TRIAL_LENGTHS]:
            try:
                expected, _ = abstract_init(layer, (*lead, n))
            except Exception:  # noqa: BLE001  (an input this layer cannot take)
                continue
            want = {k: tuple(v.shape) for k, v in expected.items()}
            if keys is None:
                keys, example = set(want), ((*lead, n), want)
            if want == got:
                return keys, example, True
    return keys, example, False


def _shapes(want) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(want.items())) or "no params"


def check_fits(network, params, input_shape=None):
    """Raise ValueError unless ``params`` fit ``network``, naming the layer and the leaf.

    Leaf by leaf: each layer's params must be what the layer makes for some
    input (the keys exactly, and the shapes; a leaf is named as the file names
    it, ``p/2/W`` for ``params[2]["W"]``, which is layer 3). With
    ``input_shape`` (one example's shape; the command line records it as the
    metadata's ``input_shape``) the whole chain is checked as well
    (:meth:`~functional_bp.layers.Sequential.check`): each layer's params for
    the shape the layers before it give.

    Example::

        >>> import jax
        >>> from functional_bp import layers as fl
        >>> net = fl.Sequential(fl.Dense(8), fl.Activation("relu"), fl.Dense(3))
        >>> params = net.init(jax.random.key(0), (4,))
        >>> check_fits(net, params, (4,))                      # fits: no error
        >>> del params[2]["W"]
        >>> check_fits(net, params)
        Traceback (most recent call last):
        ...
        ValueError: layer 3 (Dense(features=3, scale=2.0)): p/2/W missing (it has ['W', 'b']): these params were made for another network
    """
    def walk(layers, params, where, idx):
        if not isinstance(params, (list, tuple)) or len(params) != len(layers):
            got = (f"{len(params)} entries" if isinstance(params, (list, tuple))
                   else type(params).__name__)
            raise ValueError(f"{where or 'network'}: params must be a list with one entry per "
                             f"layer ({len(layers)}); got {got}")
        for i, (layer, p) in enumerate(zip(layers, params)):
            here, at = f"{where}layer {i + 1}", idx + [str(i)]
            if isinstance(layer, Sequential):
                walk(layer.layers, p, here + ".", at)
                continue
            leaf = lambda k: "p/" + "/".join(at + [str(k)])  # noqa: E731
            if not isinstance(p, dict):
                raise ValueError(f"{here} ({layer!r}): params must be a dict of arrays; got "
                                 f"{type(p).__name__}")
            for k, v in p.items():
                dtype = getattr(v, "dtype", np.asarray(v).dtype)
                if not np.issubdtype(dtype, np.floating):
                    raise ValueError(f"{here} ({layer!r}): {leaf(k)} must be floating point; "
                                     f"got {dtype}")
            keys, example, fits = _fits_some_input(layer, p)
            if fits or keys is None:
                continue
            missing, extra = sorted(keys - set(p)), sorted(set(p) - keys)
            if missing or extra:
                raise ValueError(
                    f"{here} ({layer!r}): "
                    + "; ".join([f"{', '.join(map(leaf, missing))} missing"] * bool(missing)
                                + [f"{', '.join(map(leaf, extra))} not this layer's"] * bool(extra))
                    + f" (it has {sorted(keys) or 'no params'}): these params were made for "
                    "another network")
            shapes = {k: tuple(np.shape(v)) for k, v in p.items()}
            raise ValueError(
                f"{here} ({layer!r}): {_shapes({leaf(k): v for k, v in shapes.items()})} fit "
                f"no input of this layer (for inputs (m, {', '.join(map(str, example[0]))}) it "
                f"makes {_shapes(example[1])}): these params were made for another network")

    walk(network.layers, params, "", [])
    if input_shape is not None:
        network.check(params, check_input_shape(input_shape))


def save_params(path, params, *, activations=None, network=None, loss=None, metadata=None,
                extra=None):
    """Write ``params`` (and metadata, extra arrays) to ``path`` atomically.

    Args:
      path: the target file (conventionally ``*.npz``; the name is kept as given).
      params: list of ``{"W": (n_{l-1}, n_l), "b": (n_l,)}`` dicts, or the
        params of ``network``.
      activations: optional, one name per layer; recorded in the metadata.
      network: the :class:`functional_bp.layers.Sequential` the params belong
        to; recorded (layer types and options) so that loading rebuilds it.
        The params must fit it (:func:`check_fits`, checked here and at load;
        with ``metadata={"input_shape": [...]}`` layer by layer along the
        chain too), else a ValueError names the layer and the leaf.
      loss: optional loss name; recorded in the metadata.
      metadata: optional JSON-serialisable dict merged into the metadata.
      extra: optional dict name -> array, stored as ``extra/<name>``.

    Returns:
      The path written.
    """
    from . import __version__

    meta = dict(metadata or {})
    meta.update(format=FORMAT, version=__version__, loss=getattr(loss, "name", loss))
    if network is not None:
        from .layers import to_config

        check_fits(network, params, meta.get("input_shape"))
        meta.update(network=to_config(network), sizes=None,
                    dtype=str(jnp.dtype(_validate.network_dtype(params))))
        arrays = {_leaf_name(p): np.asarray(v)
                  for p, v in jax.tree_util.tree_leaves_with_path(params)}
    else:
        sizes = _validate.check_params(params)
        meta.update(sizes=sizes, dtype=str(jnp.dtype(_validate.params_dtype(params))),
                    activations=_names(activations))
        arrays = {}
        for l, layer in enumerate(params, start=1):
            arrays[f"W{l}"] = np.asarray(layer["W"])
            arrays[f"b{l}"] = np.asarray(layer["b"])
    arrays[_META] = np.array(json.dumps(meta))
    for name, value in (extra or {}).items():
        arrays[_EXTRA + name] = np.asarray(value)

    return write_atomically(path, lambda f: np.savez(f, **arrays))


def _tmp_prefix(path) -> str:
    """Temporary files for ``path`` are ``.<name>.tmp-<pid>-<random>`` beside it."""
    return f".{os.path.basename(path)}.tmp-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # exists, owned by someone else
        return True
    return True


def clean_stale_temporaries(path) -> list[str]:
    """Remove the temporary files of ``path`` left by a killed save; returns their paths.

    A save that is killed (``kill -9``, power loss) before its rename leaves
    its ``.<name>.tmp-<pid>-*`` file behind. Those whose process no longer
    exists are removed; a save running in another live process keeps its file.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    prefix, removed = _tmp_prefix(path), []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(prefix):
            continue
        pid = name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and (int(pid) == os.getpid() or not _pid_alive(int(pid))):
            try:
                os.remove(os.path.join(directory, name))
                removed.append(os.path.join(directory, name))
            except FileNotFoundError:
                pass
    return removed


def write_atomically(path, write) -> str:
    """Write a file through ``write(binary_file)`` so that it appears whole or not at all.

    The bytes go to a temporary file in the same folder, which is flushed,
    fsynced, given the usual mode (umask) and renamed over ``path`` with
    ``os.replace``. Temporary files of ``path`` left by an earlier killed save
    are removed first (:func:`clean_stale_temporaries`).

    Example::

        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "note.txt")
        >>> _ = write_atomically(path, lambda f: f.write(b"hello"))
        >>> open(path).read(), os.listdir(os.path.dirname(path))
        ('hello', ['note.txt'])
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    clean_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{_tmp_prefix(path)}{os.getpid()}-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def write_json_atomically(path, obj) -> str:
    """Write ``obj`` as JSON atomically (:func:`write_atomically`); strict JSON only.

    NaN and infinities are not JSON: they raise ValueError rather than
    producing a file other readers reject (replace them first, e.g. by None).
    """
    text = json.dumps(obj, indent=2, allow_nan=False) + "\n"
    return write_atomically(path, lambda f: f.write(text.encode("utf-8")))


def _read_all(path) -> dict[str, np.ndarray]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}  # reading every member checks its CRC
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated or corrupted?): {e}"
        ) from None


def _metadata(path, arrays) -> dict:
    if _META not in arrays:
        raise CheckpointError(f"{path}: no {_META} entry; not a functional_bp checkpoint")
    try:
        meta = json.loads(str(arrays[_META]))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: metadata is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: unknown checkpoint format {meta.get('format') if isinstance(meta, dict) else meta!r}; "
            f"expected {FORMAT!r}"
        )
    if "network" in meta:
        return meta
    sizes = meta.get("sizes")
    if not (isinstance(sizes, list) and len(sizes) >= 2
            and all(isinstance(n, int) and n > 0 for n in sizes)):
        raise CheckpointError(f"{path}: metadata 'sizes' is malformed: {sizes!r}")
    return meta


def load_checkpoint(path, *, sizes=None) -> Checkpoint:
    """Read and validate a checkpoint: params, metadata and extra arrays.

    Args:
      path: a file written by :func:`save_params`.
      sizes: optional expected layer widths [n_0, ..., n_L].

    Raises:
      FileNotFoundError: no such file.
      CheckpointError (a ValueError): truncated or corrupted file, missing or
        malformed entries, shapes that disagree with the recorded sizes, or
        sizes that disagree with ``sizes``.
    """
    path = os.fspath(path)
    arrays = _read_all(path)
    meta = _metadata(path, arrays)
    extra = {k[len(_EXTRA):]: v for k, v in arrays.items() if k.startswith(_EXTRA)}
    if "network" in meta:
        network, params = _network_params(path, meta, arrays)
        return Checkpoint(params, meta, extra, network)
    recorded = meta["sizes"]
    if sizes is not None and list(sizes) != recorded:
        raise CheckpointError(
            f"{path}: the checkpoint holds a network of sizes {recorded}; expected "
            f"{list(sizes)}"
        )
    params = []
    for l in range(1, len(recorded)):
        expected = {"W": (recorded[l - 1], recorded[l]), "b": (recorded[l],)}
        layer = {}
        for name, shape in expected.items():
            key = f"{name}{l}"
            if key not in arrays:
                raise CheckpointError(f"{path}: layer {l}: missing {key}")
            a = arrays[key]
            if a.shape != shape:
                raise CheckpointError(
                    f"{path}: layer {l}: {key} has shape {a.shape}; expected {shape} "
                    f"from sizes {recorded}"
                )
            if not np.issubdtype(a.dtype, np.floating):
                raise CheckpointError(
                    f"{path}: layer {l}: {key} must be floating point; got {a.dtype}"
                )
            layer[name] = jnp.asarray(a)
        params.append(layer)
    return Checkpoint(params, meta, extra)


def _network_params(path, meta, arrays):
    """(network, params) of a network checkpoint: the structure from the network, leaves by name."""
    from .layers import from_config
    from .layers.config import skeleton

    try:
        network = from_config(meta["network"])
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: the recorded network cannot be rebuilt: {e}") from None
    params = skeleton(network)
    names = sorted(k for k in arrays if k.startswith("p/"))
    for name in names:
        *where, leaf = name[2:].split("/")
        node = params
        try:
            for k in where:
                node = node[int(k)]
        except (IndexError, ValueError, TypeError):
            raise CheckpointError(f"{path}: entry {name} does not fit the recorded network") from None
        if not isinstance(node, dict) or not np.issubdtype(arrays[name].dtype, np.floating):
            raise CheckpointError(f"{path}: entry {name} does not fit the recorded network")
        node[leaf] = jnp.asarray(arrays[name])
    try:
        check_fits(network, params, meta.get("input_shape"))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: the params do not fit the recorded network: {e}") from None
    return network, params


def load_params(path, *, sizes=None) -> list:
    """The params stored in ``path``, validated (see :func:`load_checkpoint`)."""
    return load_checkpoint(path, sizes=sizes).params


def read_metadata(path) -> dict[str, Any]:
    """The metadata of a checkpoint (validates the whole file first)."""
    return load_checkpoint(path).metadata
