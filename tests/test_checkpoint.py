"""Checkpoints: exact round trip, atomic writes, and a clear error for each kind of bad file."""

import json
import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import functional_bp as fbp
from functional_bp import checkpoint
from functional_bp.checkpoint import CheckpointError, load_checkpoint, load_params, save_params

SIZES = [5, 7, 3]
ACTS = ["tanh", "identity"]


def _params(seed=0, dtype=jnp.float32):
    params = fbp.init_mlp(jax.random.key(seed), SIZES, dtype=dtype)
    return [{"W": p["W"], "b": p["b"] + 0.5} for p in params]


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "params.npz"
    params = _params()
    save_params(path, params, activations=ACTS, loss="mse", metadata={"note": "x"},
                extra={"opt/0": np.arange(3)})
    return path, params


def test_round_trip_is_exact(saved):
    path, params = saved
    ckpt = load_checkpoint(path, sizes=SIZES)
    for ours, ref in zip(ckpt.params, params):
        for k in ("W", "b"):
            assert ours[k].dtype == ref[k].dtype
            np.testing.assert_array_equal(np.asarray(ours[k]), np.asarray(ref[k]))
    meta = ckpt.metadata
    assert meta["sizes"] == SIZES and meta["activations"] == ACTS and meta["loss"] == "mse"
    assert meta["version"] == fbp.__version__ and meta["note"] == "x"
    np.testing.assert_array_equal(ckpt.extra["opt/0"], np.arange(3))
    assert len(load_params(path)) == 2


def test_round_trip_float64(tmp_path):
    with jax.enable_x64(True):
        params = _params(dtype=jnp.float64)
        save_params(tmp_path / "p.npz", params)
        loaded = load_params(tmp_path / "p.npz")
        assert loaded[0]["W"].dtype == jnp.float64
        np.testing.assert_array_equal(np.asarray(loaded[1]["b"]), np.asarray(params[1]["b"]))


def test_write_replaces_atomically_and_leaves_no_temporary(saved, monkeypatch):
    path, params = saved
    before = path.read_bytes()

    def crash(f, **arrays):
        f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        save_params(path, _params(seed=1))
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == [path.name]


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_params(tmp_path / "nope.npz")


def test_truncated_file(saved):
    path, _ = saved
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_params(path)


def test_corrupted_bytes(saved):
    """Bytes flipped inside W1's array data: the member's CRC-32 no longer matches."""
    path, _ = saved
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("W1.npy")
    data = bytearray(path.read_bytes())
    start = info.header_offset  # local file header: name and extra lengths at 26..29
    name_len = int.from_bytes(data[start + 26 : start + 28], "little")
    extra_len = int.from_bytes(data[start + 28 : start + 30], "little")
    end = start + 30 + name_len + extra_len + info.compress_size  # end of W1's bytes
    data[end - 8 : end] = bytes(b ^ 0xFF for b in data[end - 8 : end])
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted.*CRC"):
        load_params(path)


def test_not_an_archive(tmp_path):
    (tmp_path / "p.npz").write_text("hello")
    with pytest.raises(CheckpointError):
        load_params(tmp_path / "p.npz")


def test_mismatched_sizes(saved):
    path, _ = saved
    with pytest.raises(CheckpointError, match=r"sizes \[5, 7, 3\]; expected \[5, 8, 3\]"):
        load_params(path, sizes=[5, 8, 3])


def _rewrite(path, **changes):
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays.update(changes)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)


def test_shape_disagreeing_with_recorded_sizes(saved):
    path, _ = saved
    _rewrite(path, W2=np.zeros((7, 4), np.float32))
    with pytest.raises(CheckpointError, match=r"layer 2: W2 has shape \(7, 4\); expected \(7, 3\)"):
        load_params(path)


def test_missing_layer_array(saved):
    path, _ = saved
    _rewrite(path, b1=None)
    with pytest.raises(CheckpointError, match="layer 1: missing b1"):
        load_params(path)


def test_missing_or_foreign_metadata(saved):
    path, _ = saved
    _rewrite(path, __meta__=np.array(json.dumps({"format": "something else"})))
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        load_params(path)
    _rewrite(path, __meta__=None)
    with pytest.raises(CheckpointError, match="not a functional_bp checkpoint"):
        load_params(path)


def test_save_validates_params(tmp_path):
    bad = _params()
    bad[1]["W"] = jnp.zeros((6, 3))
    with pytest.raises(ValueError, match="layer 2"):
        save_params(tmp_path / "p.npz", bad)
    assert not (tmp_path / "p.npz").exists()
