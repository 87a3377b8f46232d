"""Rigid-body transforms: the one convention for motion parameters in rtdecode.

Parameters are six numbers ``(tx, ty, tz, rx, ry, rz)``: translations in mm along the RAS+ world
axes, then rotations in degrees about the x, y and z axes through the centre of the volume. The
transform maps a point ``X`` of the reference head position to where it is in the moved head::

    X' = R (X - c) + c + t,   R = Rz @ Ry @ Rx,

with ``c`` the world position of the grid centre.
"""

from __future__ import annotations

import numpy as np


def rotation_matrix(rx_deg: float, ry_deg: float, rz_deg: float) -> np.ndarray:
    """Return ``Rz @ Ry @ Rx`` for rotations in degrees, array of shape (3, 3)."""
    ax, ay, az = np.deg2rad([rx_deg, ry_deg, rz_deg])
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def grid_centre_mm(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """World position (mm) of the centre of a grid, array of shape (3,)."""
    centre_vox = (np.asarray(shape[:3], dtype=float) - 1) / 2.0
    return affine[:3, :3] @ centre_vox + affine[:3, 3]


def rigid_matrix(params: np.ndarray, affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """World-space 4x4 matrix of a rigid transform.

    Parameters
    ----------
    params : array-like
        Shape (6,): tx, ty, tz (mm), rx, ry, rz (deg).
    affine : numpy.ndarray
        Shape (4, 4), voxel to world of the grid whose centre is the rotation centre.
    shape : tuple of int
        Grid shape.

    Returns
    -------
    numpy.ndarray
        Shape (4, 4).
    """
    params = np.asarray(params, dtype=float)
    rot = rotation_matrix(*params[3:6])
    c = grid_centre_mm(affine, shape)
    m = np.eye(4)
    m[:3, :3] = rot
    m[:3, 3] = c - rot @ c + params[:3]
    return m


def params_from_matrix(m: np.ndarray, affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`rigid_matrix`: the six parameters of a world-space rigid matrix.

    Angles are recovered for ``|ry| < 90`` degrees, far beyond any head motion.
    """
    rot = m[:3, :3]
    ry = -np.arcsin(np.clip(rot[2, 0], -1.0, 1.0))
    rx = np.arctan2(rot[2, 1], rot[2, 2])
    rz = np.arctan2(rot[1, 0], rot[0, 0])
    c = grid_centre_mm(affine, shape)
    t = m[:3, 3] - (c - rot @ c)
    return np.concatenate([t, np.rad2deg([rx, ry, rz])])


def framewise_displacement(params: np.ndarray, radius_mm: float = 50.0) -> np.ndarray:
    """Framewise displacement (Power et al. 2012).

    Parameters
    ----------
    params : numpy.ndarray
        Shape (n_volumes, 6) in this module's convention.
    radius_mm : float
        Sphere radius converting rotations to arc length.

    Returns
    -------
    numpy.ndarray
        Shape (n_volumes,), mm; the first volume's FD is 0.
    """
    params = np.atleast_2d(np.asarray(params, dtype=float))
    d = np.abs(np.diff(params, axis=0))
    fd = d[:, :3].sum(1) + np.deg2rad(d[:, 3:]).sum(1) * radius_mm
    return np.concatenate([[0.0], fd])


def to_spm(params: np.ndarray) -> np.ndarray:
    """Reorder to SPM's ``rp_*.txt`` columns: x, y, z translations (mm), pitch, roll, yaw (radians).

    SPM composes rotations about the world origin; rtdecode about the volume centre. The
    rotations agree; the translations agree exactly for rotation-free motion and otherwise differ
    by the rotation of the centre's offset from the origin (use :func:`rigid_matrix` when the
    full matrix matters).

    Parameters
    ----------
    params : numpy.ndarray
        Shape (..., 6) in rtdecode's convention.
    """
    p = np.asarray(params, dtype=float)
    return np.concatenate([p[..., :3], np.deg2rad(p[..., 3:])], axis=-1)


def to_fsl(params: np.ndarray) -> np.ndarray:
    """Reorder to FSL MCFLIRT's ``.par`` columns: rx, ry, rz (radians), then tx, ty, tz (mm).

    Both rotate about the volume centre. FSL works in scaled voxel coordinates, which for a
    radiologically stored (negative-determinant) image flip x; rtdecode always uses RAS+ world
    axes.
    """
    p = np.asarray(params, dtype=float)
    return np.concatenate([np.deg2rad(p[..., 3:]), p[..., :3]], axis=-1)


def to_afni(params: np.ndarray) -> np.ndarray:
    """Reorder to AFNI 3dvolreg's ``-1Dfile`` columns: roll, pitch, yaw (deg), dS, dL, dP (mm).

    AFNI's axes are DICOM (x to the left, y to the back, z up): roll is about the
    inferior-superior axis (rtdecode's rz), pitch about the right-left axis (rx), yaw about the
    anterior-posterior axis (ry); dS = tz, dL = -tx, dP = -ty. The angles keep rtdecode's sign
    (right-hand rule about the RAS+ axes); this has not been checked against 3dvolreg output.
    """
    p = np.asarray(params, dtype=float)
    return np.stack([p[..., 5], p[..., 3], p[..., 4], p[..., 2], -p[..., 0], -p[..., 1]], axis=-1)
