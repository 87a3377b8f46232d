"""Kamitani-lab decoder and feature import: fixtures written in the lab's MAT v7.3 layout."""

import subprocess
import sys

import h5py
import nibabel as nib
import numpy as np
import pytest
from scipy.io import savemat

from rtdecode.errors import ModelFileError
from rtdecode.models.bank import CandidateBank
from rtdecode.models.labimport import import_lab_decoders, import_lab_features, read_mat
from rtdecode.models.linear import LinearBundle

SHAPE = (6, 7, 5)


def _mat_file(path):
    # A MATLAB v7.3 file: HDF5 with a 512-byte user block holding MATLAB's text header.
    f = h5py.File(path, "w", userblock_size=512)
    f.close()
    with open(path, "r+b") as fh:
        head = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: test HDF5 schema 1.00 ."
        fh.write(head.ljust(124) + b"\x00\x02IM")
    return h5py.File(path, "a")


def _put(f, name, a):
    # MATLAB stores column-major: on disk the axes are reversed; vectors are columns.
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    ds = f.create_dataset(name, data=a.T)
    ds.attrs["MATLAB_class"] = np.bytes_("double")


def write_dense(path, name, a):
    with _mat_file(path) as f:
        _put(f, name, a)


def write_sparse(path, name, a, legacy):
    index = np.array(np.nonzero(a))
    with _mat_file(path) as f:
        g = f.create_group(name)
        g.attrs["MATLAB_class"] = np.bytes_("struct")
        g.create_dataset("__bdpy_sparse_arrray", data=np.uint8(1))
        _put(g, "value", a[tuple(index)])
        _put(g, "background", np.array([0.0]))
        if legacy:  # cell arrays of per-dimension rows, as hdf5storage wrote them
            refs = f.create_group("#refs#")
            for key, rows in (("index", list(index)), ("shape", [np.array([s]) for s in a.shape])):
                cell = []
                for i, row in enumerate(rows):
                    ds = refs.create_dataset(f"{key}{i}", data=np.asarray(row, dtype=np.float64)[None, :])
                    cell.append(ds.ref)
                g.create_dataset(key, data=np.array(cell, dtype=h5py.ref_dtype)[None, :])
        else:
            _put(g, "index", index.astype(np.float64))
            _put(g, "shape", np.array(a.shape, dtype=np.float64))


@pytest.fixture
def lab(tmp_path):
    rng = np.random.default_rng(0)
    masks = {"V1": np.zeros(SHAPE, bool), "LOC": np.zeros(SHAPE, bool)}
    masks["V1"][:3, :, :2] = True
    masks["LOC"][2:, 3:, 2:] = True
    masks["LOC"][2, 3, 1] = True  # one voxel in both ROIs
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    paths = {}
    for roi, m in masks.items():
        paths[roi] = tmp_path / f"{roi}.nii.gz"
        nib.save(nib.Nifti1Image(m.astype(np.uint8), affine), paths[roi])
    units = {"conv1": 4, "fc8": 3}
    models = {}
    for li, (layer, n_units) in enumerate(units.items()):
        for ri, (roi, m) in enumerate(masks.items()):
            n = int(m.sum())
            w = rng.standard_normal((n, n_units))
            w[rng.random(w.shape) < 0.6] = 0.0  # sparse, as L1-selected lab models are
            model = {
                "x_mean": rng.normal(100, 5, n),
                "x_norm": rng.uniform(1, 3, n),
                "y_mean": rng.normal(0, 1, n_units),
                "y_norm": rng.uniform(0.5, 2, n_units),
                "W": w,
                "b": rng.normal(0, 1, n_units),
            }
            d = tmp_path / "models" / layer / "sub-01" / roi / "model"
            d.mkdir(parents=True)
            for name, a in model.items():
                if name == "W" and ri == 0:
                    write_sparse(d / "W.mat", "W", a, legacy=li == 0)
                else:
                    write_dense(d / f"{name}.mat", name, a)
            models[(layer, roi)] = model
    for layer, n_units in units.items():
        (tmp_path / "features" / layer).mkdir(parents=True)
        for k, label in enumerate(["n01443537", "n02084071", "n03085013"]):
            feat = rng.standard_normal(n_units)
            path = tmp_path / "features" / layer / f"{label}.mat"
            if k == 0:
                savemat(path, {"feat": feat[None, :]})  # an older MAT file
            else:
                write_dense(path, "feat", feat[None, :])
    return tmp_path, masks, paths, models, units


@pytest.mark.parametrize("order", ["F", "C"])
def test_imported_lab_decoder_predicts_as_the_lab_formula(lab, order):
    root, masks, paths, models, units = lab
    bundle = import_lab_decoders(root / "models", "sub-01", list(units), paths, order)
    rng = np.random.default_rng(1)
    volume = rng.normal(100, 10, SHAPE)
    x = volume.ravel()[np.flatnonzero(bundle.mask)].astype(np.float32)
    pred = bundle.predict(x)
    for i, roi in enumerate(bundle.roi_names):
        # The lab's voxel vector: the ROI's voxels of the volume, in the lab's order.
        x_lab = volume.ravel(order=order)[np.flatnonzero(masks[roi].ravel(order=order))]
        for layer in units:
            m = models[(layer, roi)]
            y = (((x_lab - m["x_mean"]) / m["x_norm"]) @ m["W"] + m["b"]) * m["y_norm"] + m["y_mean"]
            np.testing.assert_allclose(pred[i, bundle.layer_slices[layer]], y, rtol=2e-4, atol=2e-3)


def test_imported_bundle_round_trips_and_serves(lab, tmp_path):
    root, _, paths, _, units = lab
    out = tmp_path / "bundle"
    cmd = [
        sys.executable,
        "-m",
        "rtdecode",
        "import-lab",
        "--models",
        str(root / "models"),
        "--subject",
        "sub-01",
    ]
    cmd += ["--layers", *units, "--voxel-order", "F", "--features", str(root / "features"), "--out", str(out)]
    cmd += ["--roi", f"V1={paths['V1']}", "--roi", f"LOC={paths['LOC']}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    again = LinearBundle.load(out)
    direct = import_lab_decoders(root / "models", "sub-01", list(units), paths, "F")
    for roi in direct.roi_names:
        np.testing.assert_array_equal(again.weights[roi], direct.weights[roi])
    bank = CandidateBank.load(out / "candidates.npz")
    assert bank.labels == ["n01443537", "n02084071", "n03085013"]
    assert bank.features["fc8"].shape == (3, 3)


def test_lab_features_match_the_files(lab):
    root, *_ = lab
    bank = import_lab_features(root / "features", ["conv1"])
    raw = read_mat(root / "features" / "conv1" / "n02084071.mat", "feat").ravel()
    r = np.corrcoef(raw, bank.features["conv1"][1])[0, 1]
    assert r == pytest.approx(1.0)


def test_mismatched_or_missing_lab_files_are_named(lab):
    root, masks, paths, _, units = lab
    (root / "models" / "fc8" / "sub-01" / "LOC" / "model" / "b.mat").unlink()
    with pytest.raises(ModelFileError, match="b.mat: missing"):
        import_lab_decoders(root / "models", "sub-01", list(units), paths, "F")
    bigger = root / "big.nii.gz"
    m = masks["V1"].copy()
    m[5, 6, 4] = True
    nib.save(nib.Nifti1Image(m.astype(np.uint8), np.diag([3.0, 3.0, 3.0, 1.0])), bigger)
    with pytest.raises(ModelFileError, match="voxels, the V1 mask has"):
        import_lab_decoders(root / "models", "sub-01", ["conv1"], {"V1": bigger}, "F")


def test_a_chunked_convolutional_model_imports_as_the_lab_predicts(lab):
    # bdpy's ModelTraining(chunk_axis=1, save_format="bdmodel") writes a convolutional layer's
    # model one channel per file: W/00000000.mat (sparse), b/00000000.mat, ...; x and y
    # normalisations whole, y of shape (1, channels, h, w).
    root, masks, paths, _, _ = lab
    rng = np.random.default_rng(2)
    n, feat_shape = int(masks["V1"].sum()), (3, 2, 2)
    m = {
        "x_mean": rng.normal(100, 5, n),
        "x_norm": rng.uniform(1, 3, n),
        "y_mean": rng.normal(0, 1, (1, *feat_shape)),
        "y_norm": rng.uniform(0.5, 2, (1, *feat_shape)),
        "W": rng.standard_normal((n, *feat_shape)) * (rng.random((n, *feat_shape)) < 0.5),
        "b": rng.normal(0, 1, (1, *feat_shape)),
    }
    d = root / "models" / "conv5" / "sub-01" / "V1" / "model"
    (d / "W").mkdir(parents=True)
    (d / "b").mkdir()
    for c in range(feat_shape[0]):
        write_sparse(d / "W" / f"{c:08d}.mat", "W", m["W"][:, c : c + 1], legacy=False)
        write_dense(d / "b" / f"{c:08d}.mat", "b", m["b"][:, c : c + 1])
    for name in ("x_mean", "x_norm", "y_mean", "y_norm"):
        write_dense(d / f"{name}.mat", name, m[name])
    bundle = import_lab_decoders(root / "models", "sub-01", ["conv5"], {"V1": paths["V1"]}, "F")
    assert bundle.n_units == [12]
    volume = rng.normal(100, 10, SHAPE)
    x_lab = volume.ravel(order="F")[np.flatnonzero(masks["V1"].ravel(order="F"))]
    # The lab's prediction, channel by channel as its ModelTest joins chunks, flattened in C order.
    z = ((x_lab - m["x_mean"]) / m["x_norm"]) @ m["W"].reshape(n, -1) + m["b"].ravel()
    y = z * m["y_norm"].ravel() + m["y_mean"].ravel()
    pred = bundle.predict(volume.ravel()[np.flatnonzero(bundle.mask)].astype(np.float32))
    np.testing.assert_allclose(pred[0], y, rtol=2e-4, atol=2e-3)
