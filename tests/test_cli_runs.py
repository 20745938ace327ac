"""The command line on real runs: --out checked first, checkpoints on Ctrl-C and every N
epochs, NaN losses, data files (task guess, BOM, given test parts, resuming elsewhere)."""

import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from functional_bp.checkpoint import load_checkpoint
from functional_bp.cli import main

SMALL = ["--data", "xor", "--hidden", "4", "--activation", "tanh", "--quiet"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _usage_error(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and "usage:" in err and "Traceback" not in err
    return err


def _strict_json(path):
    """json.loads that rejects NaN and Infinity, as strict readers do."""
    def bad(name):
        raise ValueError(f"{path}: not strict JSON: {name}")
    return json.loads(open(path).read(), parse_constant=bad)


# --- --out ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["file", "under a file"])
def test_out_that_cannot_be_a_folder_is_refused_before_anything_runs(tmp_path, capsys, kind):
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" if kind == "file" else tmp_path / "f" / "run"
    # the data file does not exist either: --out must be checked first
    err = _usage_error(capsys, ["train", "--data", str(tmp_path / "none.csv"), "--out", str(out)])
    assert "argument --out" in err and str(tmp_path / "f") in err and "argument --data" not in err


def test_read_only_out_folder_is_refused(tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:  # root writes anyway: behave like a read-only file system
        def refuse(*a, **k):
            raise PermissionError(30, "Read-only file system")
        monkeypatch.setattr(tempfile, "mkstemp", refuse)
    try:
        err = _usage_error(capsys, ["train", *SMALL, "--out", str(ro / "run")])
    finally:
        ro.chmod(0o755)
    assert "argument --out" in err and "cannot write into" in err and str(ro) in err
    assert not (ro / "run").exists()


# --- checkpoints: every N epochs, on Ctrl-C, temporary files ------------------------------
def test_ctrl_c_saves_a_checkpoint_that_resumes_exactly(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "functional_bp", "train", *SMALL, "--epochs", "100000",
           "--save-every", "1", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    try:  # wait for the periodic checkpoint of epoch 2 or later
        while time.monotonic() < deadline:
            try:
                if _strict_json(out / "metrics.json")["config"]["epochs"] >= 2:
                    break
            except (OSError, ValueError, KeyError):
                pass
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "resume with: functional-bp train --resume" in stderr and "Traceback" not in stderr
    metrics = _strict_json(out / "metrics.json")
    k = metrics["config"]["epochs"]
    assert metrics["status"] == "interrupted" and k >= 2
    assert [r["epoch"] for r in metrics["history"]] == list(range(k + 1))
    assert load_checkpoint(out / "params.npz").metadata["epoch"] == k

    # resume for 2 more epochs == one uninterrupted run of k + 2 epochs
    assert main(["train", "--resume", str(out / "params.npz"), "--epochs", "2", "--quiet",
                 "--out", str(tmp_path / "more")]) == 0
    assert main(["train", *SMALL, "--epochs", str(k + 2), "--out", str(tmp_path / "full")]) == 0
    a = load_checkpoint(tmp_path / "more" / "params.npz")
    b = load_checkpoint(tmp_path / "full" / "params.npz")
    for la, lb in zip(a.params, b.params):
        np.testing.assert_array_equal(np.asarray(la["W"]), np.asarray(lb["W"]))
    assert _strict_json(tmp_path / "more" / "metrics.json")["history"] == \
        _strict_json(tmp_path / "full" / "metrics.json")["history"]


def test_stale_temporary_files_of_a_killed_save_are_removed_at_the_next_save(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = [out / f".params.npz.tmp-{dead}-abc123", out / f".metrics.json.tmp-{dead}-xyz"]
    live = out / f".params.npz.tmp-{os.getppid()}-running"  # a save still in progress
    for p in [*stale, live]:
        p.write_bytes(b"half a file")
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(out)]) == 0
    assert not any(p.exists() for p in stale) and live.exists()
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == \
        ["curves.png", "metrics.json", "params.npz"]


def test_a_loss_that_becomes_nan_stops_the_run_with_a_message(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--data", "xor", "--hidden", "8", "--quiet", "--optimizer", "sgd",
                 "--lr", "1e6", "--epochs", "5", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert "the loss became nan at epoch 1" in err and "--lr" in err and "Traceback" not in err
    metrics = _strict_json(out / "metrics.json")  # valid JSON: no bare NaN
    assert metrics["status"] == "diverged" and metrics["history"][-1]["train_loss"] is None
    assert len(metrics["history"]) == 2  # it stopped at once
    ckpt = load_checkpoint(out / "params.npz")  # the last finite state, epoch 0
    assert ckpt.metadata["epoch"] == 0
    assert all(np.isfinite(np.asarray(layer["W"])).all() for layer in ckpt.params)


# --- data files -----------------------------------------------------------------------------
def _csv(path, x, y, bom=False):
    text = "f1,f2,target\n" + "".join(f"{a:.5f},{b:.5f},{t:g}\n" for (a, b), t in zip(x, y))
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return path


def test_whole_number_regression_csv_asks_for_task(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 2))
    path = _csv(tmp_path / "d.csv", x, np.round(100 * x[:, 0] + 500))
    err = _usage_error(capsys, ["train", "--data", str(path), "--out", str(tmp_path / "o")])
    assert "argument --data" in err and "--task regression" in err
    assert main(["train", "--data", str(path), "--task", "regression", "--hidden", "4",
                 "--epochs", "1", "--quiet", "--out", str(tmp_path / "o")]) == 0
    assert _strict_json(tmp_path / "o" / "metrics.json")["dataset"]["task"] == "regression"


def test_bom_csv_trains_and_a_non_zip_npz_gets_a_clear_message(tmp_path, capsys):
    rng = np.random.default_rng(0)
    path = _csv(tmp_path / "bom.csv", rng.normal(size=(40, 2)), np.arange(40) % 2, bom=True)
    assert main(["train", "--data", str(path), "--hidden", "4", "--epochs", "1", "--quiet",
                 "--out", str(tmp_path / "o")]) == 0
    (tmp_path / "d.npz").write_text("X,y\n1,2\n")
    err = _usage_error(capsys, ["train", "--data", str(tmp_path / "d.npz"),
                                "--out", str(tmp_path / "p")])
    assert "argument --data" in err and "not an .npz archive" in err and "numpy.savez" in err


def test_resume_from_another_folder_and_a_missing_data_file_blames_resume(tmp_path, capsys,
                                                                        monkeypatch):
    rng = np.random.default_rng(1)
    (tmp_path / "a").mkdir()
    _csv(tmp_path / "a" / "d.csv", rng.normal(size=(40, 2)), np.arange(40) % 2)
    monkeypatch.chdir(tmp_path / "a")
    assert main(["train", "--data", "d.csv", "--hidden", "4", "--epochs", "1", "--quiet",
                 "--out", "run"]) == 0
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "b")  # the data path was relative to folder a
    assert main(["train", "--resume", "../a/run/params.npz", "--epochs", "1", "--quiet",
                 "--out", "more"]) == 0
    assert _strict_json(tmp_path / "b" / "more" / "metrics.json")["config"]["epochs"] == 2

    os.remove(tmp_path / "a" / "d.csv")
    err = _usage_error(capsys, ["train", "--resume", "../a/run/params.npz", "--quiet",
                                "--out", "again"])
    assert "argument --resume" in err and "argument --data" not in err
    assert str(tmp_path / "a" / "d.csv") in err and "not found" in err


def test_test_data_file_and_npz_with_a_test_part(tmp_path, capsys):
    rng = np.random.default_rng(2)
    x, xt = rng.normal(size=(50, 2)), rng.normal(size=(14, 2))
    y, yt = np.arange(50) % 2, np.arange(14) % 2
    np.savez(tmp_path / "both.npz", x=x, y=y, x_test=xt, y_test=yt)
    _csv(tmp_path / "tr.csv", x, y)
    _csv(tmp_path / "te.csv", xt, yt)
    runs = {"npz": ["--data", str(tmp_path / "both.npz")],
            "files": ["--data", str(tmp_path / "tr.csv"), "--test-data", str(tmp_path / "te.csv")]}
    results = {}
    for name, data in runs.items():
        assert main(["train", *data, "--hidden", "4", "--epochs", "2", "--quiet",
                     "--out", str(tmp_path / name)]) == 0
        results[name] = _strict_json(tmp_path / name / "metrics.json")
        assert results[name]["dataset"]["n_train"] == 50
        assert results[name]["dataset"]["n_test"] == 14
    # the same data through both routes: the same run (up to CSV's 5 decimals)
    np.testing.assert_allclose(results["npz"]["test_loss"], results["files"]["test_loss"],
                               rtol=1e-3)
    err = _usage_error(capsys, ["train", *runs["npz"], "--test-fraction", "0.3",
                                "--out", str(tmp_path / "x")])
    assert "argument --test-fraction" in err and "does not apply" in err
    err = _usage_error(capsys, ["train", "--data", "xor", "--test-data", str(tmp_path / "te.csv"),
                                "--out", str(tmp_path / "x")])
    assert "argument --test-data" in err or "argument --data" in err


def test_split_seed_fixes_the_split_while_seed_varies_the_init(tmp_path):
    from functional_bp.experiment import TRAIN_DEFAULTS, load_data

    def data(**kw):
        return load_data({**TRAIN_DEFAULTS, "data": "moons", **kw})

    fixed = [data(seed=s, split_seed=7) for s in (0, 1)]
    np.testing.assert_array_equal(fixed[0].x_test, fixed[1].x_test)
    np.testing.assert_array_equal(fixed[0].x_test, data(seed=7).x_test)  # default: --seed
    assert not np.array_equal(data(seed=0).x_test, data(seed=1).x_test)
    for s in (0, 1):
        assert main(["train", *SMALL, "--split-seed", "7", "--seed", str(s), "--epochs", "0",
                     "--out", str(tmp_path / str(s))]) == 0
    a, b = (load_checkpoint(tmp_path / str(s) / "params.npz") for s in (0, 1))
    assert not np.array_equal(np.asarray(a.params[0]["W"]), np.asarray(b.params[0]["W"]))
    assert a.metadata["config"]["split_seed"] == 7


@pytest.mark.skipif(__import__("importlib.util").util.find_spec("mnist1d") is None,
                    reason="the mnist1d extra is not installed")
def test_mnist1d_from_the_command_line_keeps_the_official_split(tmp_path, capsys):
    assert main(["train", "--data", "mnist1d", "--hidden", "8", "--epochs", "1", "--quiet",
                 "--out", str(tmp_path / "m")]) == 0
    metrics = _strict_json(tmp_path / "m" / "metrics.json")
    assert metrics["dataset"]["n_train"] == 4000 and metrics["dataset"]["n_test"] == 1000
    assert metrics["sizes"] == [40, 8, 10]
    err = _usage_error(capsys, ["train", "--data", "mnist1d", "--test-fraction", "0.5",
                                "--out", str(tmp_path / "x")])
    assert "argument --test-fraction" in err and "official test split" in err
