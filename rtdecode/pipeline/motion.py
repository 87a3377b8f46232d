"""Rigid-body motion correction of each incoming volume to a reference.

Each volume's pose is found by Gauss-Newton on intensities (:mod:`rtdecode.numerics.align`),
starting from the previous volume's pose; a volume that jumped is aligned on a 2x coarser grid
first. The analysis voxels are then resliced onto the reference grid with a cubic B-spline.

Parameter convention: :mod:`rtdecode.numerics.rigid`.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np

from rtdecode.errors import NotFittedError, VolumeError
from rtdecode.numerics.align import GridAligner, downsample, estimation_coefficients, sampling_points
from rtdecode.numerics.kernels import grid_points, sample, spline_coefficients
from rtdecode.numerics.rigid import framewise_displacement, params_from_matrix, rigid_matrix
from rtdecode.pipeline.helpers import HelperThreads, SharedWork


@dataclass
class MotionEstimate:
    """Motion of one volume.

    Parameters
    ----------
    params : numpy.ndarray
        Shape (6,): tx, ty, tz (mm), rx, ry, rz (deg), see :mod:`rtdecode.numerics.rigid`.
    fd_mm : float
        Framewise displacement from the previous volume (Power et al. 2012).
    censored : bool
        True when ``fd_mm`` exceeds the corrector's threshold.
    iterations : int
        Gauss-Newton iterations used on the fine grid.
    """

    params: np.ndarray
    fd_mm: float
    censored: bool
    iterations: int


_COARSE = np.array([[2.0, 0, 0, 0.5], [0, 2.0, 0, 0.5], [0, 0, 2.0, 0.5], [0, 0, 0, 1]])


class MotionCorrector:
    """Realign volumes to a reference and reslice the analysis voxels.

    Parameters
    ----------
    analysis_index : numpy.ndarray
        Flat (C-order) indices of the voxels to reslice, shape (n_voxels,).
    n_reference : int
        1: the first volume is the reference. N > 1: the first N volumes are aligned to the first,
        then their mean on the first volume's grid becomes the reference.
    fd_threshold_mm : float
        Volumes whose framewise displacement exceeds this are flagged as censored.
    max_iter : int
        Gauss-Newton iterations at most, per level.
    tol : float
        Stop when the update is below this (mm and degrees).
    max_points : int
        Brain voxels used on the fine grid (a random subset, fixed per reference).
    coarse : bool
        Align on a 2x coarser grid first when the first fine-grid update exceeds
        ``jump_threshold`` (a sudden movement).
    jump_threshold : float
        mm and degrees.
    smooth : bool
        Estimate on B-spline approximations of the images (smoothed by the cubic B-spline
        kernel) rather than interpolations; reslicing always interpolates.
    threads : int
        2: the interpolating B-spline coefficients of each volume (its reslicing needs them, its
        pose does not) are computed on a second thread while the pose is estimated. The result
        is the same; a volume is done ~0.8 ms (64x64x50) sooner. Should the helper not have
        started once the pose is known, the calling thread makes them. The helper also makes a
        new reference's solvers while the reference volume goes on through the pipeline.
    """

    def __init__(
        self,
        analysis_index: np.ndarray,
        n_reference: int = 1,
        fd_threshold_mm: float = 0.5,
        max_iter: int = 10,
        tol: float = 1e-3,
        max_points: int = 10000,
        coarse: bool = True,
        jump_threshold: float = 1.0,
        smooth: bool = True,
        threads: int = 1,
    ) -> None:
        if n_reference < 1:
            raise ValueError(f"n_reference must be >= 1, got {n_reference!r}")
        if fd_threshold_mm <= 0:
            raise ValueError(f"fd_threshold_mm must be > 0, got {fd_threshold_mm!r}")
        if max_points < 100:
            raise ValueError(f"max_points must be >= 100, got {max_points!r}")
        if threads not in (1, 2):
            raise ValueError(f"threads must be 1 or 2, got {threads!r}")
        self.analysis_index = np.asarray(analysis_index, dtype=np.int64)
        self.n_reference = n_reference
        self.fd_threshold_mm = fd_threshold_mm
        self.max_iter = max_iter
        self.tol = tol
        self.max_points = max_points
        self.coarse = coarse
        self.jump_threshold = jump_threshold
        self.smooth = smooth
        self._helper = HelperThreads(1, "motion") if threads == 2 else None
        self._levels: SharedWork | None = None  # the fine and coarse GridAligner; None: no reference yet
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._prev_params: np.ndarray | None = None
        self._n_seen = 0

    def set_reference(self, reference: np.ndarray, affine: np.ndarray) -> MotionCorrector:
        """Fix the reference image; its solvers are made by the helper, or else by the next estimate.

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

        Raises
        ------
        VolumeError
            The reference is not 3-D or has too few bright voxels to align on; nothing is changed.
        """
        ref = np.asarray(reference, dtype=np.float32)
        if ref.ndim != 3:
            raise VolumeError(f"reference must be 3-D, got shape {ref.shape}")
        affine = np.asarray(affine, dtype=np.float64)
        grids = [(ref, affine)]
        if self.coarse and min(ref.shape) >= 8:
            grids.append((downsample(ref), affine @ _COARSE))
        points = [sampling_points(img) for img, _ in grids]  # a refused reference is refused here
        # The solvers take ~10 ms, 40-57 ms with cold caches in a live run; made beside the
        # reference volume's own path, they no longer make it the slowest volume of a run.
        max_points, smooth = self.max_points, self.smooth
        self._levels = SharedWork(
            lambda i: GridAligner(*grids[i], points[i], affine, ref.shape, max_points, smooth), len(grids)
        )
        if self._helper is not None:
            self._helper.submit(self._levels.run)
        self.reference_ = ref
        self.shape_ = ref.shape
        self.affine_ = affine
        vox = np.array(np.unravel_index(self.analysis_index, self.shape_), dtype=np.float64).T
        self._analysis_points = np.ascontiguousarray(vox)
        self.pose_ = np.eye(4)
        return self

    def new_series(self) -> None:
        """A new series begins: its first volume's displacement is 0, not measured from another run.

        The reference and the pose (a warm start) are kept.
        """
        self._prev_params = None

    def get_state(self) -> dict[str, np.ndarray] | None:
        """Warm start, last pose and count (for checkpoints); None while there is no final reference.

        The reference image itself is ``reference_`` with ``affine_``.
        """
        if self._levels is None or self._pending:
            return None
        state = {"pose": self.pose_, "n_seen": np.array(self._n_seen)}
        if self._prev_params is not None:
            state["prev_params"] = self._prev_params
        return state

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Take what :meth:`get_state` returned, after :meth:`set_reference` with the same reference."""
        self.pose_ = np.array(state["pose"], dtype=np.float64)
        self._n_seen = int(state["n_seen"])
        self._prev_params = np.array(state["prev_params"]) if "prev_params" in state else None
        self._pending = []

    def estimate(self, data: np.ndarray) -> tuple[np.ndarray, int]:
        """Estimate the pose of ``data`` relative to the reference, warm-started.

        Returns
        -------
        params : numpy.ndarray
            Shape (6,).
        iterations : int
            Fine-grid iterations.
        """
        if self._levels is None:
            raise NotFittedError("MotionCorrector has no reference yet; call set_reference first")
        if data.shape != self.shape_:
            raise VolumeError(f"volume shape {data.shape} differs from the reference's {self.shape_}")
        try:
            fine, *coarse = self._levels.run_and_wait()
        except np.linalg.LinAlgError as err:  # e.g. a flat image: no gradient to align along
            self._levels, self._pending, self._n_seen, self._prev_params = None, [], 0, None
            raise VolumeError(
                f"the motion reference cannot be aligned to ({err}); the next volume becomes the reference"
            ) from err
        start = self.pose_
        coef = estimation_coefficients(data, self.smooth)
        jump = self.jump_threshold if coarse else np.inf
        world, it = fine.align(coef, start, self.max_iter, self.tol, jump)
        if it == 0:  # a jump: align on the coarse grid first, then finish on the fine one
            coarse_coef = estimation_coefficients(downsample(data), self.smooth)
            world, _ = coarse[0].align(coarse_coef, start, self.max_iter, 10 * self.tol)
            world, it = fine.align(coef, world, self.max_iter, self.tol)
        if not np.isfinite(world).all():
            raise VolumeError("motion estimate diverged (non-finite pose); the previous pose is kept")
        self.pose_ = world
        return params_from_matrix(world, self.affine_, self.shape_), it

    def reslice_points(self, coef: np.ndarray, params: np.ndarray, points: np.ndarray) -> np.ndarray:
        """Values of a volume (given by its coefficients) at reference-grid voxel ``points``.

        Parameters
        ----------
        points : numpy.ndarray
            float64 (n, 3) voxel coordinates on the reference grid.
        """
        world = rigid_matrix(params, self.affine_, self.shape_)
        mat = (np.linalg.inv(self.affine_) @ world @ self.affine_)[:3]
        out = np.empty(len(points), dtype=np.float32)
        sample(coef, np.ascontiguousarray(mat), points, out)
        return out

    def correct(self, data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, MotionEstimate]:
        """Realign one volume and reslice the analysis voxels.

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
        if self._levels is None:
            self.set_reference(data, affine)
            params, it = np.zeros(6), 0  # the reference's own pose
            coef = spline_coefficients(data)
        else:
            # With a helper the coefficients are made beside the estimate (numba releases the GIL).
            # A helper that has not started by the time the estimate is done (its CPU busy with
            # another process) is not waited for: this thread makes them itself.
            coefficients = SharedWork(lambda _: spline_coefficients(data), 1)
            with self._helper.alongside(coefficients.run) if self._helper else nullcontext():
                params, it = self.estimate(data)
                (coef,) = coefficients.run_and_wait()
        self._n_seen += 1
        if self.n_reference > 1 and self._n_seen <= self.n_reference:
            self._pending.append((coef, params))
            if self._n_seen == self.n_reference:
                self._average_reference()
        fd = 0.0
        if self._prev_params is not None:
            fd = float(framewise_displacement(np.stack([self._prev_params, params]))[1])
        self._prev_params = params
        values = self.reslice_points(coef, params, self._analysis_points)
        return values, MotionEstimate(params, fd, fd > self.fd_threshold_mm, it)

    def close(self) -> None:
        """Stop the helper thread, if any; safe to call twice."""
        if self._helper is not None:
            self._helper.shutdown()
            self._helper = None

    def _average_reference(self) -> None:
        # Mean of the first volumes, each resliced onto the first volume's grid with its pose; the
        # pose is kept, as the new reference lies on the first volume's grid.
        pts = grid_points(self.shape_)
        mean = np.mean([self.reslice_points(c, p, pts) for c, p in self._pending], axis=0)
        pose = self.pose_
        self.set_reference(mean.reshape(self.shape_), self.affine_)
        self.pose_ = pose
        self._pending = []
