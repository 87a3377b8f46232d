"""How close reconstructions are to the images seen: pairwise identification by pixels or features.

As in Shen et al. (2019): a reconstruction is compared with the image it came from and with every
other image of the set; pairwise identification is the share of other images it correlates with
less than with its own (chance 0.5). Pixels are compared at a common small size, so that the
measure follows layout and colour rather than fine texture.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rtdecode.numerics.stats import correlations, normalise_rows
from rtdecode.pipeline.ranking import pairwise_identification

PIXEL_SIZE = 64


def read_png(path: str | Path) -> np.ndarray:
    """An image file as RGB uint8 (H, W, 3)."""
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def pixel_vectors(images: Sequence[np.ndarray], size: int = PIXEL_SIZE) -> np.ndarray:
    """Images (grey or RGB, square) as rows of their RGB pixels at ``size`` x ``size``."""
    from skimage.transform import resize

    rows = []
    for img in images:
        rgb = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]
        rows.append(resize(rgb.astype(np.float64), (size, size), anti_aliasing=True).ravel())
    return np.array(rows)


def identification(reconstructions: np.ndarray, originals: np.ndarray, truth: Sequence[int]) -> float:
    """Mean pairwise identification of each reconstruction (row) among the originals (rows).

    Parameters
    ----------
    reconstructions : numpy.ndarray
        (n, d) vectors (pixels or features) of the reconstructions.
    originals : numpy.ndarray
        (n_images, d) vectors of the images.
    truth : sequence of int
        For each reconstruction, the row of ``originals`` it came from.
    """
    if len(reconstructions) == 0:
        return float("nan")
    scores = correlations(np.asarray(reconstructions), normalise_rows(np.asarray(originals)))
    return float(pairwise_identification(scores, np.asarray(truth)).mean())
