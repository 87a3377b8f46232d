"""Rigid-body motion correction of each incoming volume to a reference.

Gauss-Newton on intensity least squares, linearised with the reference image's gradient as in
AFNI's 3dvolreg, so the Jacobian is computed once per reference and each iteration costs one
interpolation of the moving volume at the sampling points. Each volume starts from the previous
volume's pose. The estimated pose is then used to reslice the analysis voxels onto the reference
grid with cubic B-splines.

Parameter convention: :mod:`rtdecode.rigid`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import map_coordinates, spline_filter

from rtdecode.errors import NotFittedError
from rtdecode.rigid import framewise_displacement, grid_centre_mm, rigid_matrix

# Generators of rotations about x, y, z (derivative of R at 0 per radian).
_GENERATORS = np.array(
    [
        [[0, 0, 0], [0, 0, -1], [0, 1, 0]],
        [[0, 0, 1], [0, 0, 0], [-1, 0, 0]],
        [[0, -1, 0], [1, 0, 0], [0, 0, 0]],
    ],
    dtype=float,
)


@dataclass
class MotionEstimate:
    """Motion of one volume.

    Parameters
    ----------
    params : numpy.ndarray
        Shape (6,): tx, ty, tz (mm), rx, ry, rz (deg), see :mod:`rtdecode.rigid`.
    fd_mm : float
        Framewise displacement from the previous volume (Power et al. 2012).
    censored : bool
        True when ``fd_mm`` exceeds the corrector's threshold.
    iterations : int
        Gauss-Newton iterations used.
    """

    params: np.ndarray
    fd_mm: float
    censored: bool
    iterations: int


class MotionCorrector:
    """Realign volumes to a reference and reslice the analysis voxels.

    Parameters
    ----------
    analysis_index : numpy.ndarray
        Flat (C-order) indices of the voxels to reslice, shape (n_voxels,).
    n_reference : int
        The reference is the mean of the first ``n_reference`` volumes given to
        :meth:`correct` (1: the first volume); volumes before it is complete are realigned to
        the first volume.
    fd_threshold_mm : float
        Volumes whose framewise displacement exceeds this are flagged as censored.
    max_iter : int
        Gauss-Newton iterations at most.
    tol : float
        Stop when the update is smaller than this (mm, and degrees).
    sample_fraction : float
        Share of the brain voxels used for estimation, drawn at random once per reference (a
        regular sub-grid would bias the estimate through the interpolation's grid pattern).
    """

    def __init__(
        self,
        analysis_index: np.ndarray,
        n_reference: int = 1,
        fd_threshold_mm: float = 0.5,
        max_iter: int = 10,
        tol: float = 1e-3,
        sample_fraction: float = 1.0,
    ) -> None:
        if n_reference < 1:
            raise ValueError(f"n_reference must be >= 1, got {n_reference!r}")
        if not 0 < sample_fraction <= 1:
            raise ValueError(f"sample_fraction must be in (0, 1], got {sample_fraction!r}")
        if fd_threshold_mm <= 0:
            raise ValueError(f"fd_threshold_mm must be > 0, got {fd_threshold_mm!r}")
        self.analysis_index = np.asarray(analysis_index, dtype=np.int64)
        self.n_reference = n_reference
        self.fd_threshold_mm = fd_threshold_mm
        self.max_iter = max_iter
        self.tol = tol
        self.sample_fraction = sample_fraction
        self._ref_sum: np.ndarray | None = None
        self._n_ref_seen = 0
        self._prev: np.ndarray | None = None

    def set_reference(self, reference: np.ndarray, affine: np.ndarray) -> MotionCorrector:
        """Fix the reference image and precompute the Jacobian.

        Parameters
        ----------
        reference : numpy.ndarray
            Shape (nx, ny, nz).
        affine : numpy.ndarray
            Shape (4, 4), voxel to world mm.

        Returns
        -------
        MotionCorrector
            ``self``.
        """
        ref = np.asarray(reference, dtype=np.float64)
        self.shape_ = ref.shape
        self.affine_ = np.asarray(affine, dtype=np.float64)
        self.reference_ = ref.astype(np.float32)
        # Brain-ish weight mask: voxels brighter than a fraction of the robust maximum.
        thresh = 0.25 * np.percentile(ref, 99)
        rng = np.random.default_rng(0)  # fixed: the same volume always gives the same estimate
        sel = (ref > thresh) & (rng.random(ref.shape) < self.sample_fraction)
        # Keep away from the edge, where the gradient is undefined.
        sel[:1], sel[-1:], sel[:, :1], sel[:, -1:], sel[..., :1], sel[..., -1:] = (False,) * 6
        self.points_ = np.array(np.nonzero(sel), dtype=np.float64)  # (3, n)
        grads = np.gradient(ref)
        g = np.stack([gr[sel] for gr in grads], axis=1)  # (n, 3) per voxel step
        self.ref_values_ = ref[sel]
        world = self.affine_[:3, :3] @ self.points_ + self.affine_[:3, 3:]
        centre = grid_centre_mm(self.affine_, self.shape_)
        inv3 = np.linalg.inv(self.affine_[:3, :3])
        jac = np.empty((sel.sum(), 6))
        for k in range(3):  # translations: one mm along world axis k
            jac[:, k] = g @ inv3[:, k]
        for k in range(3):  # rotations: one degree about axis k through the centre
            d_world = (_GENERATORS[k] @ (world - centre[:, None])) * (np.pi / 180.0)
            jac[:, 3 + k] = np.einsum("ni,in->n", g, inv3 @ d_world)
        self.jacobian_ = jac
        self.solver_ = np.linalg.pinv(jac)  # (6, n)
        self._prev = np.zeros(6)
        self._prev_params: np.ndarray | None = None
        return self

    def _moved_coords(self, params: np.ndarray, vox: np.ndarray) -> np.ndarray:
        m = np.linalg.inv(self.affine_) @ rigid_matrix(params, self.affine_, self.shape_) @ self.affine_
        return m[:3, :3] @ vox + m[:3, 3:]

    def estimate(self, data: np.ndarray) -> tuple[np.ndarray, int]:
        """Estimate the pose of ``data`` relative to the reference, warm-started.

        Returns
        -------
        params : numpy.ndarray
            Shape (6,).
        iterations : int
        """
        if not hasattr(self, "jacobian_"):
            raise NotFittedError("MotionCorrector has no reference yet; call set_reference first")
        img = np.asarray(data, dtype=np.float32)
        p = self._prev.copy()
        it = 0
        for it in range(1, self.max_iter + 1):  # noqa: B007 - the count is reported
            vals = map_coordinates(img, self._moved_coords(p, self.points_), order=1, mode="nearest")
            delta = self.solver_ @ (self.ref_values_ - vals)
            p += delta
            if np.abs(delta).max() < self.tol:
                break
        return p, it

    def correct(self, data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, MotionEstimate]:
        """Realign one volume and reslice the analysis voxels.

        The first volume (or the mean of the first ``n_reference``) becomes the reference.

        Parameters
        ----------
        data : numpy.ndarray
            Shape (nx, ny, nz).
        affine : numpy.ndarray
            Shape (4, 4).

        Returns
        -------
        values : numpy.ndarray
            float32, shape (n_voxels,): the analysis voxels on the reference grid.
        estimate : MotionEstimate
        """
        if self._n_ref_seen < self.n_reference:
            img = np.asarray(data, dtype=np.float64)
            self._ref_sum = img if self._ref_sum is None else self._ref_sum + img
            self._n_ref_seen += 1
            if self._n_ref_seen == 1 or self._n_ref_seen == self.n_reference:
                prev = self._prev
                self.set_reference(self._ref_sum / self._n_ref_seen, affine)
                if prev is not None:
                    self._prev = prev
        params, it = self.estimate(data)
        self._prev = params
        fd = 0.0
        if self._prev_params is not None:
            fd = float(framewise_displacement(np.stack([self._prev_params, params]))[1])
        self._prev_params = params
        coeffs = spline_filter(np.asarray(data, dtype=np.float32), order=3, mode="mirror")
        vox = np.array(np.unravel_index(self.analysis_index, self.shape_), dtype=np.float64)
        values = map_coordinates(
            coeffs, self._moved_coords(params, vox), order=3, prefilter=False, mode="mirror"
        ).astype(np.float32)
        return values, MotionEstimate(params, fd, fd > self.fd_threshold_mm, it)
