import json

import numpy as np
import pytest

from rtdecode.errors import ModelFileError, VolumeError
from rtdecode.models.linear import LinearBundle


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
