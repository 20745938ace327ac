"""Data sets: built-in and synthetic sets, the stratified split, user files and their errors."""

import os
import random
import sys

import numpy as np
import pytest

from functional_bp.datasets import (BUILTIN, MAX_GUESSED_CLASSES, load_dataset, load_file,
                                    split_validation, standardize, stratified_split)

needs_mnist1d = pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("mnist1d") is None,
    reason="the mnist1d extra is not installed")


@pytest.mark.parametrize("name", [pytest.param(n, marks=needs_mnist1d) if n == "mnist1d" else n
                                  for n in BUILTIN])
def test_builtin_shapes_dtypes_and_determinism(name):
    a, b = load_dataset(name, seed=3), load_dataset(name, seed=3)
    assert a.x_train.dtype == np.float32 and a.x_test.dtype == np.float32
    assert a.x_train.shape[1] == a.x_test.shape[1] == a.n_features
    assert len(a.x_train) == len(a.y_train) and len(a.x_test) == len(a.y_test)
    total = len(a.x_train) + len(a.x_test)
    assert abs(len(a.x_test) - 0.2 * total) <= a.n_outputs
    if a.n_classes is None:
        assert a.y_train.ndim == 2 and a.y_train.dtype == np.float32
    else:
        assert a.y_train.dtype == np.int32
        assert set(np.unique(a.y_train)) == set(range(a.n_classes))
    for u, v in zip(a[1:5], b[1:5]):
        np.testing.assert_array_equal(u, v)


def test_digits_is_scaled_and_stratified():
    d = load_dataset("digits", seed=0)
    assert len(d.x_train) + len(d.x_test) == 1797 and d.n_features == 64
    assert d.x_train.min() == 0.0 and d.x_train.max() == 1.0
    all_y = np.concatenate([d.y_train, d.y_test])
    for c in range(10):
        assert np.sum(d.y_test == c) == round(0.2 * np.sum(all_y == c))
    other = load_dataset("digits", seed=1)
    assert not np.array_equal(d.y_test, other.y_test)  # the seed fixes the split


def test_digits_without_scikit_learn_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"functional_bp\[train\]"):
        load_dataset("digits")


def test_stratified_split_partitions_every_class():
    labels = np.repeat(np.arange(4), [10, 7, 3, 2])
    tr, te = stratified_split(labels, 0.3, seed=5)
    assert sorted(np.concatenate([tr, te]).tolist()) == list(range(len(labels)))
    for c, count in enumerate([10, 7, 3, 2]):
        k = np.sum(labels[te] == c)
        assert 1 <= k <= count - 1 and abs(k - 0.3 * count) <= 1


def test_npz_and_csv_files(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 3))
    labels = np.arange(30) % 3
    np.savez(tmp_path / "c.npz", X=x, y=labels)
    d = load_file(tmp_path / "c.npz", seed=0)
    assert d.n_classes == 3 and d.x_train.shape[1] == 3 and len(d.x_train) + len(d.x_test) == 30

    np.savez(tmp_path / "r.npz", X=x, y=x @ np.ones((3, 2)))
    r = load_file(tmp_path / "r.npz")
    assert r.n_classes is None and r.y_train.shape[1] == 2

    rows = ["a,b,c,label"] + [",".join(map(str, [*row, int(c)])) for row, c in zip(x, labels)]
    (tmp_path / "c.csv").write_text("\n".join(rows) + "\n")
    c = load_dataset(str(tmp_path / "c.csv"))
    assert c.n_classes == 3 and c.n_features == 3
    got = np.sort(np.concatenate([c.x_train, c.x_test]), axis=0)
    np.testing.assert_allclose(got, np.sort(x, axis=0), rtol=1e-6)
    assert np.bincount(np.concatenate([c.y_train, c.y_test])).tolist() == [10, 10, 10]
    reg = load_file(tmp_path / "c.csv", task="regression")
    assert reg.n_classes is None and reg.y_train.shape[1] == 1


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda p: p / "missing.csv", FileNotFoundError, "not found"),
        (lambda p: _write(p, "d.txt", "1,2\n"), ValueError, r"\.npz or \.csv"),
        (lambda p: _write(p, "d.csv", "1,2,3\n4,x,6\n"), ValueError, r"non-numeric .*'x'.*row 1, column 1"),
        (lambda p: _write(p, "d.csv", "1,2,3\n4,nan,6\n"), ValueError, "NaN"),
        (lambda p: _write(p, "d.csv", "1,2,3\n4,5\n"), ValueError, "row 1 has 2 columns"),
        (lambda p: _write(p, "d.csv", "1\n2\n"), ValueError, "at least 2 columns"),
        (lambda p: _write(p, "d.csv", "a,b\n"), ValueError, "no data rows"),
        (lambda p: _write(p, "d.npz", "not a zip"), ValueError,
         r"not an \.npz archive .*b'not a '.*numpy\.savez"),
        (lambda p: (np.save(p / "d.npy", np.zeros((3, 2))), os.replace(p / "d.npy", p / "d.npz"),
                    p / "d.npz")[-1], ValueError, r"single \.npy array .*numpy\.savez"),
        (lambda p: (p / "d.csv", (p / "d.csv").write_text("1,2\n3,4\n", encoding="utf-16"))[0],
         ValueError, "UTF-16.*save it as UTF-8"),
        (lambda p: (p / "d.csv", (p / "d.csv").write_bytes(b"1,2\n3,\xe9\n"))[0],
         ValueError, "not UTF-8 text"),
    ],
)
def test_file_errors(tmp_path, make, error, match):
    with pytest.raises(error, match=match):
        load_file(make(tmp_path))


@pytest.mark.parametrize(
    "arrays, match",
    [
        (dict(X=np.zeros((4, 2))), r"needs arrays 'X' \(or 'x'\) .* found \['X'\]"),
        (dict(X=np.zeros((4, 2)), x=np.zeros((4, 2)), y=np.zeros(4)), "both 'X' and 'x'"),
        (dict(x=np.zeros((4, 2)), y=np.zeros(4), x_test=np.zeros((2, 2))),
         "needs both 'x_test' and 'y_test'"),
        (dict(x=np.zeros((4, 2)), y=np.zeros(4), x_test=np.zeros((2, 3)), y_test=np.zeros(2)),
         r"x_test \(2, 3\) .* must match X \(4, 2\)"),
        (dict(X=np.zeros(4), y=np.zeros(4)), "X must be 2-D"),
        (dict(X=np.zeros((4, 2)), y=np.zeros(3)), r"y must have shape \(4,\)"),
        (dict(X=np.array([[1.0, np.nan]] * 4), y=np.arange(4)), "NaN"),
        (dict(X=np.array([["a", "b"]] * 4), y=np.arange(4)), "numeric"),
    ],
)
def test_npz_errors(tmp_path, arrays, match):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        load_file(tmp_path / "d.npz")


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="digits"):
        load_dataset("mnist")


def test_standardize_uses_training_statistics():
    d = load_dataset("digits", seed=0)
    s, mean, std = standardize(d)
    varying = d.x_train.std(axis=0) > 0
    np.testing.assert_allclose(s.x_train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(s.x_train.std(axis=0)[varying], 1, rtol=1e-4)
    np.testing.assert_allclose(s.x_test, (d.x_test - mean) / std, rtol=1e-6)
    assert np.all(std[~varying] == 1)


# --- issue: clear messages, and a task guess that refuses ambiguous targets ---------------
def _csv(tmp_path, name, x, y, header="a,b,target", bom=False):
    rows = ([header] if header else []) + [f"{u:.6f},{v:.6f},{t:g}" for (u, v), t in zip(x, y)]
    text = "\n".join(rows) + "\n"
    path = tmp_path / name
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return path


@pytest.mark.parametrize("header", ["a,b,target", None])
def test_csv_with_a_utf8_byte_order_mark_reads_like_one_without(tmp_path, header):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 2)), np.arange(20) % 2
    plain = load_file(_csv(tmp_path, "plain.csv", x, y, header), seed=1)
    bom = load_file(_csv(tmp_path, "bom.csv", x, y, header, bom=True), seed=1)
    assert bom.n_classes == plain.n_classes == 2
    for a, b in zip(plain[1:5], bom[1:5]):
        np.testing.assert_array_equal(a, b)


def test_csv_of_whole_number_regression_targets_is_not_guessed_to_be_classes(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2))
    y = np.round(1000 + 300 * x[:, 0] + 50 * rng.normal(size=200))  # prices in whole units
    path = _csv(tmp_path, "prices.csv", x, y)
    with pytest.raises(ValueError, match=r"distinct whole numbers .*--task classification or "
                                         r"--task regression"):
        load_file(path)
    r = load_file(path, task="regression")
    assert r.n_classes is None and r.y_train.shape == (160, 1)


def test_all_distinct_integer_targets_are_refused_with_the_fix(tmp_path):
    np.savez(tmp_path / "d.npz", X=np.random.default_rng(0).normal(size=(12, 2)), y=np.arange(12))
    with pytest.raises(ValueError, match=r"12 distinct whole numbers in 12 rows \(all different\)"
                                         r".*--task"):
        load_file(tmp_path / "d.npz")
    with pytest.raises(ValueError, match=r"stratified test part is empty.*single example"):
        load_file(tmp_path / "d.npz", task="classification")
    assert load_file(tmp_path / "d.npz", task="regression").n_classes is None


@pytest.mark.parametrize("y, match", [
    (np.zeros(10, dtype=np.int64), "single value"),
    (np.r_[np.arange(8) % 2, 5, 6], "2 of them only once"),
    (np.arange(2 * (MAX_GUESSED_CLASSES + 1)) % (MAX_GUESSED_CLASSES + 1),
     f"more than {MAX_GUESSED_CLASSES}"),
])
def test_other_unclear_integer_targets_are_refused(tmp_path, y, match):
    np.savez(tmp_path / "d.npz", X=np.zeros((len(y), 2)), y=y)
    with pytest.raises(ValueError, match=match + ".*--task"):
        load_file(tmp_path / "d.npz")


def test_integer_labels_of_shape_m_by_1_are_classes(tmp_path):
    labels = np.arange(30) % 3
    x = np.random.default_rng(0).normal(size=(30, 2))
    np.savez(tmp_path / "col.npz", X=x, y=labels[:, None])
    np.savez(tmp_path / "flat.npz", X=x, y=labels)
    col, flat = load_file(tmp_path / "col.npz"), load_file(tmp_path / "flat.npz")
    assert col.n_classes == 3 and col.y_train.shape == (24,) and col.y_train.dtype == np.int32
    np.testing.assert_array_equal(col.y_test, flat.y_test)
    assert load_file(tmp_path / "col.npz", task="classification").n_classes == 3


def test_a_given_test_part_in_the_npz_or_a_second_file(tmp_path):
    rng = np.random.default_rng(0)
    x, xt = rng.normal(size=(20, 2)), rng.normal(size=(6, 2))
    y, yt = np.array([3, 7] * 10), np.array([7, 3, 9, 7, 9, 3])  # 9 only in the test part
    np.savez(tmp_path / "both.npz", x=x, y=y, x_test=xt, y_test=yt)
    d = load_file(tmp_path / "both.npz")
    np.testing.assert_array_equal(d.x_train, x.astype(np.float32))
    np.testing.assert_array_equal(d.x_test, xt.astype(np.float32))
    assert d.n_classes == 3  # labels numbered over both parts: 3 -> 0, 7 -> 1, 9 -> 2
    assert d.y_train.tolist() == [0, 1] * 10 and d.y_test.tolist() == [1, 0, 2, 1, 2, 0]

    train_csv, test_csv = _csv(tmp_path, "tr.csv", x, y), _csv(tmp_path, "te.csv", xt, yt)
    c = load_dataset(str(train_csv), test=test_csv)
    assert (c.n_classes, len(c.x_train), len(c.x_test)) == (3, 20, 6)
    np.testing.assert_array_equal(c.y_test, d.y_test)

    with pytest.raises(ValueError, match="test_fraction=0.3 does not apply"):
        load_file(tmp_path / "both.npz", test_fraction=0.3)
    with pytest.raises(ValueError, match="give no test file"):
        load_file(tmp_path / "both.npz", test=test_csv)
    np.savez(tmp_path / "wide.npz", X=np.zeros((4, 3)), y=np.arange(4) % 2)
    with pytest.raises(ValueError, match="must match"):
        load_dataset(str(train_csv), test=tmp_path / "wide.npz")
    with pytest.raises(ValueError, match="built-in set 'xor'"):
        load_dataset("xor", test=test_csv)


def test_validation_part_is_carved_from_the_training_part_only():
    base = load_dataset("digits", seed=0)
    d = load_dataset("digits", seed=0, val_fraction=0.25)
    np.testing.assert_array_equal(d.x_test, base.x_test)  # the test part is untouched
    both = np.concatenate([d.x_train, d.x_val])
    assert len(both) == len(base.x_train)
    np.testing.assert_array_equal(np.unique(both, axis=0), np.unique(base.x_train, axis=0))
    for c in range(10):  # stratified: each class keeps its share
        assert np.sum(d.y_val == c) == round(0.25 * np.sum(base.y_train == c))
    s, _, _ = standardize(d)
    np.testing.assert_allclose(s.x_val, standardize(d)[0].x_val)
    assert s.x_val.dtype == np.float32 and abs(float(s.x_train.mean())) < 1e-5
    with pytest.raises(ValueError, match="val_fraction must be in"):
        split_validation(base, 1.5)


@needs_mnist1d
def test_mnist1d_is_the_official_split_built_locally():
    from mnist1d.data import get_dataset_args, make_dataset

    state = np.random.get_state()
    py_state = random.getstate()
    d = load_dataset("mnist1d", seed=5)
    assert random.getstate() == py_state  # make_dataset's global seeding is undone
    np.testing.assert_array_equal(np.random.get_state()[1], state[1])
    assert d.x_train.shape == (4000, 40) and d.x_test.shape == (1000, 40)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int32 and d.n_classes == 10
    ref = make_dataset(get_dataset_args())
    np.testing.assert_array_equal(d.x_train, ref["x"].astype(np.float32))
    np.testing.assert_array_equal(d.y_test, ref["y_test"])
    d.x_train[0, 0] = 1e9  # a copy: the cache is not changed
    assert load_dataset("mnist1d").x_train[0, 0] != 1e9
    with pytest.raises(ValueError, match="official test split"):
        load_dataset("mnist1d", test_fraction=0.3)
    v = load_dataset("mnist1d", val_fraction=0.1)
    assert len(v.x_train) + len(v.x_val) == 4000 and len(v.x_test) == 1000
    assert abs(len(v.x_val) - 400) <= 10  # 10% of each class, rounded per class


def test_mnist1d_without_the_package_names_the_extra(monkeypatch):
    from functional_bp.datasets import load_mnist1d

    load_mnist1d.cache_clear()
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    monkeypatch.setitem(sys.modules, "mnist1d", None)
    with pytest.raises(ImportError, match=r"functional_bp\[mnist1d\]"):
        load_dataset("mnist1d")
