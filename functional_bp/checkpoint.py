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

import json
import os
import tempfile
import zipfile
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _validate

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
    return network, params


def load_params(path, *, sizes=None) -> list:
    """The params stored in ``path``, validated (see :func:`load_checkpoint`)."""
    return load_checkpoint(path, sizes=sizes).params


def read_metadata(path) -> dict[str, Any]:
    """The metadata of a checkpoint (validates the whole file first)."""
    return load_checkpoint(path).metadata
