"""Decoder bundles: linear maps from preprocessed voxels to DNN features, saved without pickle.

A bundle holds, for every ROI, one affine map over the ROI's voxels that predicts the units of all
layers at once (the training normalisations are folded in), so a volume costs one matrix-vector
product per ROI. Units trained on a few hundred selected voxels (Horikawa & Kamitani 2017) are
applied in a sparse form that reads only those weights: 5,000 voxels x 8,000 units is 160 MB dense
and 32 MB sparse.

On disk a bundle is a directory with ``decoder.npz`` (arrays) and ``decoder.json`` (metadata and
SHA-256 checksums); see ``docs/formats.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from rtdecode.errors import ModelFileError, VolumeError
from rtdecode.models.files import mask_checksum, read_model, write_model
from rtdecode.numerics.sparsedot import SparseMap, kernels

BUNDLE_FORMAT = "rtdecode-decoder"
BUNDLE_VERSION = 1
SPARSE_BELOW = 0.25  # apply a ROI's map in sparse form when no unit uses more than this share of voxels
TASK_BYTES = 8 * 2**20  # a sparse map is decoded in pieces of about this many bytes of weights, for threads

# ``share(fn, n)`` runs ``fn(0) ... fn(n - 1)`` (each once, or again with the same result) and
# returns when all have run, on as many threads as it has: :func:`rtdecode.pipeline.helpers.share`.
Share = Callable[[Callable[[int], object], int], object]


def in_turn(fn: Callable[[int], object], n: int) -> None:
    """:data:`Share` on the calling thread alone: ``fn(0) ... fn(n - 1)`` in turn."""
    for i in range(n):
        fn(i)


@dataclass
class LinearBundle:
    """Trained decoders for several ROIs and layers.

    Parameters
    ----------
    mask : numpy.ndarray
        bool, shape (nx, ny, nz): the analysis voxels (union of all ROIs), in C order.
    affine : numpy.ndarray
        Shape (4, 4) of the grid the decoders were trained on.
    rois : dict of str to numpy.ndarray
        Positions (int64) of each ROI's voxels within the analysis vector.
    layers : list of str
        Layer names, in the order of the output units.
    n_units : list of int
        Units per layer.
    weights : dict of str to numpy.ndarray
        float32 (n_roi_voxels, sum(n_units)) per ROI.
    intercepts : dict of str to numpy.ndarray
        float32 (sum(n_units),) per ROI.
    meta : dict
        Training settings (JSON-serialisable).
    """

    mask: np.ndarray
    affine: np.ndarray
    rois: dict[str, np.ndarray]
    layers: list[str]
    n_units: list[int]
    weights: dict[str, np.ndarray]
    intercepts: dict[str, np.ndarray]
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mask = np.asarray(self.mask, dtype=bool)
        bounds = np.concatenate([[0], np.cumsum(self.n_units)])
        self.layer_slices = {
            ly: slice(int(a), int(b)) for ly, a, b in zip(self.layers, bounds[:-1], bounds[1:])
        }
        n_vox, n_out = int(self.mask.sum()), int(bounds[-1])
        for roi, pos in self.rois.items():
            w, b = self.weights.get(roi), self.intercepts.get(roi)
            if w is None or b is None:
                raise ModelFileError(f"ROI {roi!r} has no weights or intercept")
            if pos.size and (pos.min() < 0 or pos.max() >= n_vox):
                raise ModelFileError(f"ROI {roi!r}: voxel positions outside the {n_vox}-voxel mask")
            if w.shape != (pos.size, n_out) or b.shape != (n_out,):
                raise ModelFileError(
                    f"ROI {roi!r}: weights {w.shape} / intercept {b.shape} do not match "
                    f"{pos.size} voxels x {n_out} units"
                )
        self.roi_names = list(self.rois)
        self.sparse: dict[str, SparseMap] = {}
        for roi in self.roi_names:
            sp = sparse_columns(self.weights[roi])
            if sp is not None:
                self.sparse[roi] = SparseMap(*sp, self.intercepts[roi], self.rois[roi].size)
        if self.sparse:
            kernels()  # compiled now, not on the first volume

    @property
    def n_voxels(self) -> int:
        """Number of analysis voxels."""
        return int(self.mask.sum())

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predict the features of all layers from every ROI.

        Parameters
        ----------
        x : numpy.ndarray
            float32, shape (n_voxels,): preprocessed analysis voxels.

        Returns
        -------
        numpy.ndarray
            float32, shape (n_rois, sum(n_units)); row order ``roi_names``, columns split by
            ``layer_slices``.
        """
        if np.shape(x) != (self.n_voxels,):
            raise VolumeError(f"expected {self.n_voxels} analysis voxels, got shape {np.shape(x)}")
        return self.predict_many(np.asarray(x)[None])[0]

    def predict_many(self, xs: np.ndarray, share: Share | None = None) -> np.ndarray:
        """:meth:`predict` for several volumes at once; each row the same bits as :meth:`predict`'s.

        Sparse ROIs read their weights once for up to 16 volumes
        (:class:`~rtdecode.numerics.sparsedot.SparseMap`); dense ones take one product per volume.

        Parameters
        ----------
        xs : numpy.ndarray
            float32, shape (n_volumes, n_voxels).
        share : callable, optional
            Runs the work's independent tasks (:data:`Share`), largest first: one per dense ROI
            and one per :data:`TASK_BYTES` of each sparse ROI's weights, all without the GIL. The
            bits do not depend on it. None runs them in turn.

        Returns
        -------
        numpy.ndarray
            float32, shape (n_volumes, n_rois, sum(n_units)).
        """
        if np.ndim(xs) != 2 or np.shape(xs)[1] != self.n_voxels:
            raise VolumeError(f"expected (n, {self.n_voxels}) analysis voxels, got shape {np.shape(xs)}")
        xs = np.asarray(xs, dtype=np.float32)
        out = np.empty((len(xs), len(self.roi_names), sum(self.n_units)), dtype=np.float32)
        tasks: list[tuple[float, Callable[[], None]]] = []  # (rough size, to start the largest first; call)
        for i, roi in enumerate(self.roi_names):
            # take, not xs[:, positions]: that copy's rows are strided for n > 1, and BLAS sums a
            # strided vector in another order, so a volume's dense features would depend on its batch.
            xr = xs.take(self.rois[roi], axis=1)
            if roi in self.sparse:
                sp = self.sparse[roi]
                calls = sp.tasks(xr, out[:, i], round(sp.nbytes / TASK_BYTES))
                tasks += [(sp.nbytes * len(xs) / len(calls), call) for call in calls]
            else:
                tasks.append((self.weights[roi].nbytes * len(xs), partial(self._dense, roi, xr, out[:, i])))
        calls = [call for _, call in sorted(tasks, key=lambda t: -t[0])]
        (share or in_turn)(lambda j: calls[j](), len(calls))
        return out

    def _dense(self, roi: str, xr: np.ndarray, out: np.ndarray) -> None:
        # One product per volume (the bits do not depend on the batch), each row written whole
        # rather than added to in place: a task run twice (SharedWork) writes the same bits.
        for v, row in enumerate(xr):
            out[v] = np.dot(row, self.weights[roi]) + self.intercepts[roi]

    def save(self, directory: str | Path) -> Path:
        """Write ``decoder.npz`` and ``decoder.json`` into ``directory``."""
        arrays = {"mask": self.mask, "affine": self.affine}
        for roi in self.roi_names:
            arrays[f"roi/{roi}"] = self.rois[roi]
            arrays[f"weights/{roi}"] = self.weights[roi].astype(np.float32)
            arrays[f"intercept/{roi}"] = self.intercepts[roi].astype(np.float32)
        meta = {
            "rois": self.roi_names,
            "layers": self.layers,
            "n_units": [int(n) for n in self.n_units],
            "mask_shape": list(self.mask.shape),
            "mask_sha256": mask_checksum(self.mask),
            "meta": self.meta,
        }
        write_model(Path(directory) / "decoder", BUNDLE_FORMAT, BUNDLE_VERSION, arrays, meta)
        return Path(directory)

    @classmethod
    def load(cls, directory: str | Path) -> LinearBundle:
        """Load and verify a bundle written by :meth:`save`.

        Raises
        ------
        ModelFileError
            If a file is missing, the format or version is unknown, or a checksum differs.
        """
        meta, z = read_model(Path(directory) / "decoder", BUNDLE_FORMAT, BUNDLE_VERSION)
        mask = z["mask"]
        if mask_checksum(mask) != meta["mask_sha256"]:
            raise ModelFileError(f"{directory}/decoder.npz: mask checksum differs from decoder.json")
        rois = {r: z[f"roi/{r}"] for r in meta["rois"]}
        weights = {r: z[f"weights/{r}"] for r in meta["rois"]}
        intercepts = {r: z[f"intercept/{r}"] for r in meta["rois"]}
        layers, n_units = meta["layers"], meta["n_units"]
        return cls(mask, z["affine"], rois, layers, n_units, weights, intercepts, meta["meta"])


def sparse_columns(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Each column's nonzero weights and their rows, padded to one length, if that saves work.

    Parameters
    ----------
    weights : numpy.ndarray
        (n_voxels, n_units).

    Returns
    -------
    tuple of numpy.ndarray or None
        float32 ``w`` and int32 ``rows``, both (n_units, max nonzeros per unit), padded with
        weight 0 at row 0; None when some unit uses more than ``SPARSE_BELOW`` of the voxels.
    """
    nz = weights != 0
    counts = nz.sum(axis=0)
    width = int(counts.max()) if counts.size else 0
    if weights.shape[0] == 0 or width > SPARSE_BELOW * weights.shape[0]:
        return None
    w = np.zeros((weights.shape[1], max(width, 1)), dtype=np.float32)
    rows = np.zeros(w.shape, dtype=np.int32)
    unit, voxel = np.nonzero(nz.T)  # sorted by unit, then voxel
    slot = np.arange(unit.size) - np.repeat(np.cumsum(counts) - counts, counts)
    w[unit, slot] = weights[voxel, unit]
    rows[unit, slot] = voxel
    return w, rows
