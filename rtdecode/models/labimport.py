"""Import decoders and features in the Kamitani lab's format (Horikawa & Kamitani 2017, bdpy).

A lab decoder directory holds ``<layer>/<subject>/<roi>/model/`` with ``x_mean.mat``,
``x_norm.mat``, ``y_mean.mat``, ``y_norm.mat``, ``W.mat`` and ``b.mat``; the prediction is

    y = (((x - x_mean) / x_norm) @ W + b) * y_norm + y_mean

over the ROI's voxels. Files are MATLAB v7.3 (HDF5, read with h5py; MATLAB stores arrays with
their axes reversed) or older MAT files (scipy); ``W`` may be bdpy's sparse struct (a group
with ``__bdpy_sparse_arrray``, ``index``, ``value``, ``shape``, ``background``). Features are
``<layer>/<label>.mat`` with key ``feat``. For convolutional layers the lab's training script
(bdpy's ``ModelTraining`` with ``chunk_axis=1``) writes ``W`` and ``b`` in chunks, one per channel:
``model/W/00000000.mat``, ``model/W/00000001.mat``, … and ``model/b/…``, each of shape
``(n_voxels, 1, h, w)`` / ``(1, 1, h, w)``; they are joined along that axis, and every 4-D array
(``W``, ``b``, ``y_mean``, ``y_norm``, features) is flattened in C order. The import folds the
normalisations into one affine map per ROI, so the lab's model runs in rtdecode unchanged.

The model's voxels are the ROI's voxels in the order of the lab's data: the caller gives each
ROI's mask and that order (``F``: first axis fastest, as MATLAB/SPM; ``C``: last axis fastest).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import nibabel as nib
import numpy as np

from rtdecode.errors import ModelFileError
from rtdecode.models.bank import CandidateBank
from rtdecode.models.linear import LinearBundle

MODEL_FILES = ("x_mean", "x_norm", "y_mean", "y_norm", "W", "b")


def _matlab_dataset(f: h5py.File, ds: h5py.Dataset) -> np.ndarray:
    if ds.dtype == h5py.ref_dtype:  # a cell array: read each cell
        return np.array([_matlab_dataset(f, f[r]) for r in ds[()].ravel()], dtype=object)
    # MATLAB writes column-major arrays as HDF5 row-major with the axes reversed.
    return np.asarray(ds[()]).T


def _sparse(f: h5py.File, g: h5py.Group) -> np.ndarray:
    # Older writers store shape and index as cell arrays, newer ones as plain matrices.
    shape_a = _matlab_dataset(f, g["shape"])
    if shape_a.dtype == object:
        shape = tuple(int(np.asarray(c).ravel()[0]) for c in shape_a)
    else:
        shape = tuple(int(v) for v in np.ravel(shape_a))
    index_a = _matlab_dataset(f, g["index"])
    if index_a.dtype == object:
        index = tuple(np.asarray(c).ravel().astype(np.int64) for c in index_a)
    else:
        index_a = np.atleast_2d(index_a)
        if index_a.shape[0] != len(shape):
            index_a = index_a.T
        index = tuple(row.astype(np.int64) for row in index_a)
    value = np.asarray(_matlab_dataset(f, g["value"]), dtype=np.float64).ravel()
    background = np.asarray(_matlab_dataset(f, g["background"])).ravel()
    dense = np.full(shape, float(background[0]) if background.size else 0.0)
    dense[index] = value
    return dense


def read_mat(path: str | Path, key: str) -> np.ndarray:
    """Read array ``key`` from a MAT file (v7.3 via h5py, older versions via scipy), dense.

    Raises
    ------
    ModelFileError
        If the file cannot be read or has no such key.
    """
    path = Path(path)
    try:
        if h5py.is_hdf5(path):
            with h5py.File(path, "r") as f:
                if key not in f:
                    raise ModelFileError(f"{path}: no variable {key!r} (has {sorted(f)})")
                obj = f[key]
                if isinstance(obj, h5py.Group):
                    if "__bdpy_sparse_arrray" not in obj:
                        raise ModelFileError(
                            f"{path}: {key!r} is a struct, not an array or bdpy sparse array"
                        )
                    return _sparse(f, obj)
                return _matlab_dataset(f, obj).astype(np.float64)
        from scipy.io import loadmat

        d = loadmat(path)
    except OSError as err:
        raise ModelFileError(f"cannot read {path}: {err}") from err
    if key not in d:
        raise ModelFileError(f"{path}: no variable {key!r}")
    return np.asarray(d[key], dtype=np.float64)


def load_lab_model(model_dir: str | Path) -> dict[str, np.ndarray]:
    """The six arrays of one lab model directory, as float64 (vectors flattened).

    Raises
    ------
    ModelFileError
        If a file is missing or the shapes do not fit together.
    """
    d = Path(model_dir)
    m = {}
    for name in MODEL_FILES:
        path = d / f"{name}.mat"
        chunks = sorted((d / name).glob("*.mat")) if name in ("W", "b") and (d / name).is_dir() else []
        if chunks:  # one file per channel of a convolutional layer's features, in channel order
            a = np.concatenate([read_mat(c, name) for c in chunks], axis=1)
        elif path.exists():
            a = read_mat(path, name)
        else:
            raise ModelFileError(
                f"{path}: missing (a lab model needs {', '.join(n + '.mat' for n in MODEL_FILES)}, "
                "or W/ and b/ folders of chunks)"
            )
        m[name] = a.reshape(a.shape[0], -1) if name == "W" else a.ravel()
    n_vox, n_units = m["W"].shape
    for name, n in (
        ("x_mean", n_vox),
        ("x_norm", n_vox),
        ("y_mean", n_units),
        ("y_norm", n_units),
        ("b", n_units),
    ):
        if m[name].size != n:
            raise ModelFileError(
                f"{d}: {name} has {m[name].size} values, W is {n_vox} voxels x {n_units} units"
            )
    return m


def fold(m: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The lab model as one affine map ``y = x @ W' + b'`` on raw voxel values."""
    xn = np.where(m["x_norm"] != 0, m["x_norm"], 1.0)
    w = m["W"] / xn[:, None] * m["y_norm"][None, :]
    b = (m["b"] - (m["x_mean"] / xn) @ m["W"]) * m["y_norm"] + m["y_mean"]
    return w, b


def import_lab_decoders(
    model_root: str | Path,
    subject: str,
    layers: list[str],
    roi_masks: dict[str, str | Path],
    voxel_order: str,
) -> LinearBundle:
    """Build a :class:`LinearBundle` from ``<model_root>/<layer>/<subject>/<roi>/model/``.

    Parameters
    ----------
    model_root : str or Path
    subject : str
    layers : list of str
        Layer directories to import, in the order of the output units.
    roi_masks : dict of str to path
        Each ROI's mask (NIfTI, all on one grid); its voxels, in ``voxel_order``, are the model's.
    voxel_order : {"F", "C"}
        Order of the ROI's voxels in the lab's data.

    Raises
    ------
    ModelFileError
        If a model is missing, or its voxel count differs from its mask's.
    """
    if voxel_order not in ("F", "C"):
        raise ValueError(f"voxel_order must be 'F' or 'C', got {voxel_order!r}")
    masks, affine = {}, None
    for roi, path in roi_masks.items():
        img = nib.load(str(path))
        masks[roi] = np.asarray(img.dataobj) > 0
        if affine is None:
            affine, shape = img.affine, masks[roi].shape
        elif masks[roi].shape != shape or not np.allclose(img.affine, affine, atol=1e-4):
            raise ModelFileError(f"ROI mask {str(path)!r} is not on the grid of the first mask")
    union = np.logical_or.reduce(list(masks.values()))
    position = np.full(union.size, -1, dtype=np.int64)
    position[np.flatnonzero(union)] = np.arange(int(union.sum()))
    rois, weights, intercepts, n_units = {}, {}, {}, []
    for roi, mask in masks.items():
        # Flat C-order indices of the ROI's voxels, listed in the lab's order.
        lab_idx = np.flatnonzero(mask.ravel(order=voxel_order))
        c_idx = np.ravel_multi_index(np.unravel_index(lab_idx, mask.shape, order=voxel_order), mask.shape)
        rois[roi] = position[c_idx]
        ws, bs = [], []
        for li, layer in enumerate(layers):
            model_dir = Path(model_root) / layer / subject / roi / "model"
            m = load_lab_model(model_dir)
            if m["W"].shape[0] != c_idx.size:
                raise ModelFileError(
                    f"{model_dir}: {m['W'].shape[0]} voxels, the {roi} mask has {c_idx.size}"
                )
            w, b = fold(m)
            if len(n_units) <= li:
                n_units.append(w.shape[1])
            elif n_units[li] != w.shape[1]:
                raise ModelFileError(
                    f"{model_dir}: {w.shape[1]} units, other ROIs' {layer} have {n_units[li]}"
                )
            ws.append(w)
            bs.append(b)
        weights[roi] = np.hstack(ws).astype(np.float32)
        intercepts[roi] = np.concatenate(bs).astype(np.float32)
    meta = {"imported_from": str(model_root), "subject": subject, "voxel_order": voxel_order}
    return LinearBundle(union, affine, rois, list(layers), n_units, weights, intercepts, meta)


def import_lab_features(feature_root: str | Path, layers: list[str]) -> CandidateBank:
    """A candidate bank from ``<feature_root>/<layer>/<label>.mat`` (key ``feat``).

    Raises
    ------
    ModelFileError
        If a layer lacks a label the first layer has, or has none.
    """
    root = Path(feature_root)
    labels = sorted(p.stem for p in (root / layers[0]).glob("*.mat"))
    if not labels:
        raise ModelFileError(f"no feature files {root / layers[0]}/*.mat")
    feats = {}
    for layer in layers:
        rows = []
        for label in labels:
            path = root / layer / f"{label}.mat"
            if not path.exists():
                raise ModelFileError(f"{path}: missing (layer {layers[0]} has label {label!r})")
            rows.append(read_mat(path, "feat").ravel())
        feats[layer] = np.stack(rows).astype(np.float32)
    return CandidateBank(labels, feats)
