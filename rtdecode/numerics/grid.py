"""Where two images meet: the same voxel grid in another voxel order, reoriented exactly.

Scanners, dcm2niix and SPM store the same head on the same grid in different voxel orders (axes
permuted or flipped). :func:`match_grid` tells whether an image's grid is the target grid in
another order, and how to reorder it; any other difference (a shifted, tilted or resampled grid)
is refused, naming both affines, because reading one grid as the other moves every voxel.
"""

from __future__ import annotations

import numpy as np
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

from rtdecode.errors import VolumeError

ATOL_MM = 1e-3  # affines that agree to a micrometre describe the same grid


def match_grid(
    affine: np.ndarray,
    shape: tuple[int, ...],
    target_affine: np.ndarray,
    target_shape: tuple[int, ...],
    what: str,
) -> np.ndarray | None:
    """How to put an image on the target grid: None if it already is, else a nibabel orientation.

    Parameters
    ----------
    affine, shape
        The image's voxel-to-RAS+ affine (4, 4) and its 3-D shape.
    target_affine, target_shape
        The grid it must be on.
    what : str
        What the image is, for the error message.

    Returns
    -------
    numpy.ndarray or None
        Shape (3, 2) orientation for :func:`reorient`, or None when no reordering is needed.

    Raises
    ------
    VolumeError
        The image is on another grid, not only in another voxel order.
    """
    affine, target_affine = np.asarray(affine, float), np.asarray(target_affine, float)
    if tuple(shape) == tuple(target_shape) and np.allclose(affine, target_affine, atol=ATOL_MM):
        return None
    ornt = orientation_between(affine, target_affine)
    new_shape = reoriented_shape(shape, ornt)
    new_affine = affine @ inv_ornt_aff(ornt, shape)
    if new_shape == tuple(target_shape) and np.allclose(new_affine, target_affine, atol=ATOL_MM):
        return ornt
    raise VolumeError(
        f"{what} is on another grid than the decoders: shape {tuple(shape)}, affine "
        f"{np.round(affine, 3).tolist()} against shape {tuple(target_shape)}, affine "
        f"{np.round(target_affine, 3).tolist()} (not the same grid in another voxel order)"
    )


def reoriented_shape(shape: tuple[int, ...], ornt: np.ndarray | None) -> tuple[int, ...]:
    """The shape an image of ``shape`` has after :func:`reorient` by ``ornt`` (None: unchanged)."""
    if ornt is None:
        return tuple(shape)
    return tuple(int(shape[int(axis)]) for axis in np.argsort(ornt[:, 0]))


def orientation_between(affine: np.ndarray, target_affine: np.ndarray) -> np.ndarray:
    """The axis permutation and flips from one voxel order to another's (nibabel orientation)."""
    return ornt_transform(io_orientation(affine), io_orientation(target_affine))


def reorient(data: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """``data`` reordered by :func:`match_grid`'s orientation, C-contiguous (values unchanged)."""
    return np.ascontiguousarray(apply_orientation(data, ornt))
