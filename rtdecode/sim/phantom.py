"""A brain-shaped phantom with visual regions of interest on a 3 mm EPI grid."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Individual ROIs and the composites built from them, as in Horikawa & Kamitani (2017).
ROIS = ("V1", "V2", "V3", "V4", "LOC", "FFA", "PPA")
COMPOSITES = {"LVC": ("V1", "V2", "V3"), "HVC": ("LOC", "FFA", "PPA"), "VC": ROIS}

# Centres in mm relative to the brain centre (x right, y anterior, z superior), one per hemisphere
# (x mirrored), and radii in mm. Lower areas sit at the occipital pole, higher ones ventral and
# lateral, roughly as on a real cortex.
_ROI_SEEDS = {
    "V1": ((6.0, -66.0, -2.0), 13.0),
    "V2": ((14.0, -60.0, 8.0), 12.0),
    "V3": ((22.0, -55.0, 16.0), 11.0),
    "V4": ((26.0, -50.0, -12.0), 10.0),
    "LOC": ((40.0, -40.0, 0.0), 12.0),
    "FFA": ((34.0, -30.0, -20.0), 9.0),
    "PPA": ((20.0, -28.0, -14.0), 9.0),
}


@dataclass
class Phantom:
    """Baseline image, tissue masks and ROI masks on one grid.

    Parameters
    ----------
    baseline : numpy.ndarray
        float32 array of shape (nx, ny, nz): mean EPI intensity per voxel.
    brain : numpy.ndarray
        bool array of shape (nx, ny, nz).
    rois : dict of str to numpy.ndarray
        bool masks of shape (nx, ny, nz) for each individual ROI (disjoint).
    affine : numpy.ndarray
        Array of shape (4, 4), voxel to RAS+ mm.
    tissue : numpy.ndarray
        str array of shape (nx, ny, nz): ``gm``, ``wm``, ``csf`` in the brain, ``""`` outside.
    """

    baseline: np.ndarray
    brain: np.ndarray
    rois: dict[str, np.ndarray]
    affine: np.ndarray
    tissue: np.ndarray

    def roi_mask(self, name: str) -> np.ndarray:
        """Return the mask of an individual or composite ROI."""
        if name in self.rois:
            return self.rois[name]
        if name in COMPOSITES:
            return np.logical_or.reduce([self.rois[r] for r in COMPOSITES[name]])
        raise KeyError(f"unknown ROI {name!r}; known: {list(self.rois) + list(COMPOSITES)}")


def tissue_masks(phantom: Phantom) -> dict[str, np.ndarray]:
    """White-matter and CSF masks for nuisance regression.

    The white matter eroded by two voxels, as for aCompCor, so that no grey matter leaks in; the
    ventricles as they are.
    """
    from scipy.ndimage import binary_erosion

    return {"wm": binary_erosion(phantom.tissue == "wm", iterations=2), "csf": phantom.tissue == "csf"}


def grid_affine(shape: tuple[int, int, int], voxel_size_mm: float) -> np.ndarray:
    """Return an RAS+ affine with isotropic voxels and the grid centre at world (0, 0, 0)."""
    affine = np.diag([voxel_size_mm] * 3 + [1.0])
    affine[:3, 3] = -voxel_size_mm * (np.asarray(shape) - 1) / 2.0
    return affine


def make_phantom(
    shape: tuple[int, int, int] = (64, 64, 36), voxel_size_mm: float = 3.0, seed: int = 0
) -> Phantom:
    """Build a phantom: an ellipsoidal brain with cortex, white matter and ventricles.

    Parameters
    ----------
    shape : tuple of int
        Grid shape (nx, ny, nz).
    voxel_size_mm : float
        Isotropic voxel size in mm.
    seed : int
        Seed for the texture that gives motion correction something to lock onto.

    Returns
    -------
    Phantom
    """
    rng = np.random.default_rng(seed)
    affine = grid_affine(shape, voxel_size_mm)
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
    xyz = (affine[:3, :3] @ ijk + affine[:3, 3:]).T.reshape(*shape, 3)
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    # Brain ellipsoid: 140 mm wide, 170 mm long, 100 mm tall at 3 mm x 36 slices.
    half_extent = np.array([68.0, 84.0, min(52.0, voxel_size_mm * shape[2] / 2 - 3)])
    r = np.sqrt((x / half_extent[0]) ** 2 + (y / half_extent[1]) ** 2 + (z / half_extent[2]) ** 2)
    brain = r < 1.0
    cortex = brain & (r > 0.8)
    ventricles = (np.abs(x) > 3) & (np.abs(x) < 14) & (np.abs(y + 5) < 25) & (np.abs(z - 5) < 10)
    baseline = np.zeros(shape, dtype=np.float32)
    baseline[brain] = 700.0  # white matter
    baseline[cortex] = 1000.0  # grey matter is brighter on T2*-weighted EPI
    baseline[ventricles & brain] = 1400.0  # CSF brightest
    # Skull and scalp as a faint shell, so the head has an edge outside the brain.
    scalp = (r >= 1.05) & (r < 1.15)
    baseline[scalp] = 300.0
    # Smooth texture (sulcal pattern) makes the image locally distinctive.
    from scipy.ndimage import gaussian_filter

    texture = gaussian_filter(rng.standard_normal(shape), 1.2)
    texture /= texture.std()
    baseline[brain] *= (1.0 + 0.12 * texture[brain]).astype(np.float32)
    baseline = gaussian_filter(baseline, 0.6).astype(np.float32)

    rois: dict[str, np.ndarray] = {}
    taken = np.zeros(shape, dtype=bool)
    for name in ROIS:
        centre, radius = _ROI_SEEDS[name]
        mask = np.zeros(shape, dtype=bool)
        for hemi in (-1.0, 1.0):
            c = np.array([hemi * centre[0], centre[1], centre[2]])
            d = np.sqrt(((xyz - c) ** 2).sum(-1))
            mask |= d < radius
        mask &= brain & ~ventricles & ~taken
        taken |= mask
        rois[name] = mask
    tissue = np.where(cortex, "gm", np.where(ventricles, "csf", "wm"))
    tissue[~brain] = ""
    return Phantom(baseline=baseline, brain=brain, rois=rois, affine=affine, tissue=tissue)
