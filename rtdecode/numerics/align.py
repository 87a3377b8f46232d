"""Rigid alignment of an image to a reference on one grid, by inverse-compositional Gauss-Newton.

Intensity least squares (Baker & Matthews 2004), the approach of AFNI's 3dvolreg: the Jacobian
comes from the analytic gradient of the reference's cubic B-spline and is computed once per
reference, so an iteration costs one cubic B-spline interpolation of the moving image at the
sampling points (numba kernels in :mod:`rtdecode.numerics.kernels`). Parameter convention:
:mod:`rtdecode.numerics.rigid`.
"""

from __future__ import annotations

import numpy as np

from rtdecode.errors import VolumeError
from rtdecode.numerics.kernels import inside_grid, sample, sample_gradient, spline_coefficients
from rtdecode.numerics.rigid import grid_centre_mm, rigid_matrix

# Generators of rotations about x, y, z (derivative of R at 0, per radian).
_GENERATORS = np.array(
    [
        [[0, 0, 0], [0, 0, -1], [0, 1, 0]],
        [[0, 0, 1], [0, 0, 0], [-1, 0, 0]],
        [[0, -1, 0], [1, 0, 0], [0, 0, 0]],
    ],
    dtype=float,
)


def downsample(img: np.ndarray) -> np.ndarray:
    """The image on a 2x coarser grid: float32 means of 2x2x2 blocks, an odd last plane dropped."""
    # Eight strided sums beat a reshaped mean.
    nx, ny, nz = (s // 2 * 2 for s in img.shape)
    v = np.asarray(img, dtype=np.float32)
    out = np.zeros((nx // 2, ny // 2, nz // 2), dtype=np.float32)
    for i in (0, 1):
        for j in (0, 1):
            for k in (0, 1):
                out += v[i:nx:2, j:ny:2, k:nz:2]
    out *= 0.125
    return out


def estimation_coefficients(img: np.ndarray, smooth: bool) -> np.ndarray:
    """Cubic B-spline coefficients to estimate a pose on: the image itself when ``smooth``."""
    # With smooth=True the image itself serves as B-spline coefficients: a B-spline approximation,
    # i.e. the image smoothed by the cubic B-spline kernel (FWHM about 1.4 voxels), which makes
    # the estimate less sensitive to noise and to interpolation error, and skips the prefilter.
    return np.ascontiguousarray(img, dtype=np.float32) if smooth else spline_coefficients(img)


def _gain(moved: np.ndarray, ref: np.ndarray) -> np.float32:
    # The scale that brings the moved samples closest to the reference's.
    den = float(moved @ moved)
    return np.float32(float(moved @ ref) / den if den > 0 else 1.0)


def sampling_points(ref: np.ndarray) -> np.ndarray:
    """The voxels a reference can be aligned on: float64 (n, 3) voxel coordinates.

    Raises
    ------
    VolumeError
        Fewer than 50 voxels lie above a quarter of the image's 99th percentile.
    """
    inside = ref > 0.25 * np.percentile(ref, 99)
    # Tissue near the edges of the field of view moves in and out of it; leave 2 voxels out.
    inside[:2] = inside[-2:] = inside[:, :2] = inside[:, -2:] = inside[..., :2] = inside[..., -2:] = False
    pts = np.argwhere(inside).astype(np.float64)
    if len(pts) < 50:
        raise VolumeError(f"reference has only {len(pts)} voxels above a quarter of its 99th percentile")
    return pts


class GridAligner:
    """Sampling points, reference values and Gauss-Newton solver on one grid.

    Parameters
    ----------
    ref : numpy.ndarray
        The reference image on this grid, shape (nx, ny, nz).
    affine : numpy.ndarray
        Shape (4, 4): this grid's voxels to world mm.
    pts : numpy.ndarray
        :func:`sampling_points` of ``ref``.
    centre_affine, centre_shape
        The grid whose centre the rotations turn about (the full-resolution one).
    max_points : int
        Points kept at most: those of steepest gradient.
    smooth : bool
        As :func:`estimation_coefficients`.
    """

    def __init__(
        self,
        ref: np.ndarray,
        affine: np.ndarray,
        pts: np.ndarray,
        centre_affine: np.ndarray,
        centre_shape: tuple,
        max_points: int,
        smooth: bool,
    ) -> None:
        self.affine = affine
        self.inv_affine = np.linalg.inv(affine)
        coef = estimation_coefficients(ref, smooth)
        grad = np.empty((len(pts), 3))
        sample_gradient(coef, pts, grad)
        if len(pts) > max_points:
            # The voxels with the steepest gradient carry most of the information about the pose.
            keep = np.sort(np.argpartition(-np.einsum("ij,ij->i", grad, grad), max_points - 1)[:max_points])
            pts, grad = pts[keep], grad[keep]
        self.points = pts
        self.ref_values = np.empty(len(pts), dtype=np.float32)
        sample(coef, np.eye(4)[:3], pts, self.ref_values)
        world = pts @ affine[:3, :3].T + affine[:3, 3]
        centre = grid_centre_mm(centre_affine, centre_shape)
        g_world = grad @ self.inv_affine[:3, :3]  # intensity per mm along each world axis
        jac = np.empty((len(pts), 6))
        jac[:, :3] = g_world
        for k in range(3):  # one degree about axis k through the centre
            d_world = (world - centre) @ _GENERATORS[k].T * (np.pi / 180.0)
            jac[:, 3 + k] = np.einsum("ni,ni->n", g_world, d_world)
        self.jacobian = jac
        self.solver = np.linalg.solve(jac.T @ jac, jac.T)  # (6, n)
        self.shape = ref.shape
        self.centre_affine, self.centre_shape = centre_affine, centre_shape
        self._inside = np.empty(len(pts), dtype=bool)
        self._vals = np.empty(len(pts), dtype=np.float32)

    def align(
        self,
        coef: np.ndarray,
        world: np.ndarray,
        max_iter: int,
        tol: float,
        max_first_step: float = np.inf,
    ) -> tuple[np.ndarray, int]:
        """Refine the world-space pose matrix ``world``; return it and the iterations used.

        If the first update exceeds ``max_first_step`` (mm or deg), ``world`` is returned
        unchanged with 0 iterations: the start is too far off for this grid.
        """
        it = 0
        for it in range(1, max_iter + 1):  # noqa: B007 - the count is reported
            mat = (self.inv_affine @ world @ self.affine)[:3]
            resid = self._vals
            # The volume's brightness is matched to the reference's first (least squares): the
            # first volumes of a run, before the magnetisation settles, are brighter overall, and
            # an image of other brightness would otherwise be "aligned" by moving it.
            if sample(coef, mat, self.points, resid):
                # Points that left the field of view would be compared with mirrored data.
                inside_grid(mat, self.points, self.shape, self._inside)
                jac = self.jacobian[self._inside]
                moved, ref = resid[self._inside], self.ref_values[self._inside]
                r = _gain(moved, ref) * moved - ref
                delta = np.linalg.solve(jac.T @ jac, jac.T @ r)
            else:
                delta = self.solver @ (_gain(resid, self.ref_values) * resid - self.ref_values)
            if it == 1 and np.abs(delta).max() > max_first_step:
                return world, 0
            # Inverse composition: W(x; p) <- W(W(x; delta)^-1; p).
            world = world @ np.linalg.inv(rigid_matrix(delta, self.centre_affine, self.centre_shape))
            if np.abs(delta).max() < tol:
                break
        return world, it
