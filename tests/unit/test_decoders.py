import json

import numpy as np
import pytest

from rtdecode.errors import ModelFileError, VolumeError
from rtdecode.models.linear import TASK_BYTES, LinearBundle
from rtdecode.pipeline.decoding import Decoding


def _bundle(rng):
    mask = np.zeros((5, 6, 7), bool)
    mask.ravel()[rng.choice(210, 40, replace=False)] = True
    rois = {"A": np.arange(40), "B": np.arange(0, 40, 2)}
    w = {r: rng.standard_normal((p.size, 9)).astype(np.float32) for r, p in rois.items()}
    b = {r: rng.standard_normal(9).astype(np.float32) for r in rois}
    return LinearBundle(mask, np.diag([3, 3, 3, 1.0]), rois, ["l1", "l2"], [4, 5], w, b, {"note": "x"})


def test_save_load_roundtrip_predicts_identically(tmp_path):
    rng = np.random.default_rng(0)
    b = _bundle(rng)
    b.save(tmp_path / "dec")
    loaded = LinearBundle.load(tmp_path / "dec")
    x = rng.standard_normal(40).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict(x), b.predict(x))
    np.testing.assert_allclose(b.predict(x)[1], x[::2] @ b.weights["B"] + b.intercepts["B"], rtol=1e-5)
    assert loaded.layer_slices == {"l1": slice(0, 4), "l2": slice(4, 9)} and loaded.meta == {"note": "x"}


def test_tampered_or_missing_files_are_refused(tmp_path):
    b = _bundle(np.random.default_rng(1))
    d = b.save(tmp_path / "dec")
    with pytest.raises(ModelFileError, match="decoder.json is missing"):
        LinearBundle.load(tmp_path / "nothing")
    raw = bytearray((d / "decoder.npz").read_bytes())
    raw[-30] ^= 0xFF
    (d / "decoder.npz").write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="checksum differs"):
        LinearBundle.load(d)
    meta = json.loads((d / "decoder.json").read_text())
    meta["version"] = 99
    (d / "decoder.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="version 99"):
        LinearBundle.load(d)


def test_shape_checks():
    rng = np.random.default_rng(2)
    b = _bundle(rng)
    with pytest.raises(VolumeError, match="expected 40 analysis voxels"):
        b.predict(np.zeros(39, np.float32))
    with pytest.raises(ModelFileError, match="do not match"):
        LinearBundle(b.mask, b.affine, b.rois, ["l1"], [4], b.weights, b.intercepts)


def test_units_on_few_voxels_are_applied_sparsely_with_the_dense_result():
    rng = np.random.default_rng(1)
    mask = np.ones((10, 10, 10), bool)
    w = np.zeros((1000, 60), np.float32)
    for u in range(60):  # 50 voxels per unit, one unit with none (intercept only)
        if u != 7:
            w[rng.choice(1000, 50, replace=False), u] = rng.standard_normal(50)
    dense_w = rng.standard_normal((1000, 60)).astype(np.float32)
    b = rng.standard_normal(60).astype(np.float32)
    bundle = LinearBundle(
        mask,
        np.eye(4),
        {"S": np.arange(1000), "D": np.arange(1000)},
        ["l"],
        [60],
        {"S": w, "D": dense_w},
        {"S": b, "D": b},
    )
    assert list(bundle.sparse) == ["S"]
    x = rng.standard_normal(1000).astype(np.float32)
    out = bundle.predict(x)
    np.testing.assert_allclose(out[0], x @ w + b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[1], x @ dense_w + b, rtol=1e-5, atol=1e-5)
    assert out[0, 7] == b[7]


def test_decoding_on_two_threads_gives_the_bits_of_one(monkeypatch):
    # Two sparse ROIs (each in several pieces) and a dense one, shared out over a real helper.
    monkeypatch.setattr("rtdecode.models.linear.TASK_BYTES", TASK_BYTES // 2**12)  # 2 KiB pieces
    rng = np.random.default_rng(3)
    mask = np.ones((10, 10, 6), bool)
    rois = {"S": np.arange(600), "T": np.arange(0, 600, 3), "D": np.arange(100, 400)}
    w, b = {}, {}
    for r, pos in rois.items():
        w[r] = rng.standard_normal((pos.size, 100)).astype(np.float32)
        if r != "D":
            w[r][rng.random(w[r].shape) > 0.05] = 0  # about 5 % of the voxels per unit: sparse
        b[r] = rng.standard_normal(100).astype(np.float32)
    bundle = LinearBundle(mask, np.eye(4), rois, ["l1", "l2"], [60, 40], w, b)
    assert sorted(bundle.sparse) == ["S", "T"]
    xs = rng.standard_normal((20, 600)).astype(np.float32)
    one, two = Decoding(bundle), Decoding(bundle, threads=2)
    try:
        alone = np.concatenate([one.predict_many(x[None]) for x in xs])
        for n in (1, 3, 20):
            np.testing.assert_array_equal(two.predict_many(xs[:n]), alone[:n])
            np.testing.assert_array_equal(one.predict_many(xs[:n]), alone[:n])
    finally:
        for d in (one, two, two):
            d.close()
    np.testing.assert_allclose(alone[:, 2], xs[:, 100:400] @ w["D"] + b["D"], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="threads must be >= 1"):
        Decoding(bundle, threads=0)
