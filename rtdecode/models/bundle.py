"""What the pipeline needs from a decoder bundle, and the one loader that picks the kind.

A decoder bundle is a directory whose ``decoder.json`` names its format: ``rtdecode-decoder``
(:class:`~rtdecode.models.linear.LinearBundle`, ridge or imported lab decoders) or
``rtdecode-mlp`` (:class:`~rtdecode.models.mlp.MLPBundle`, torch imported only then). Stages
are typed against :class:`Decoder`, not against either class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from rtdecode.errors import ModelFileError
from rtdecode.models.files import read_format
from rtdecode.models.linear import LinearBundle, Share


class Decoder(Protocol):
    """A decoder bundle as the pipeline uses it."""

    mask: np.ndarray  # bool (nx, ny, nz), the analysis voxels
    affine: np.ndarray  # (4, 4) of the grid it was trained on
    rois: dict[str, np.ndarray]  # positions of each ROI's voxels in the analysis vector
    layers: list[str]
    n_units: list[int]

    @property
    def roi_names(self) -> list[str]:
        """ROIs in output order."""

    @property
    def layer_slices(self) -> dict[str, slice]:
        """Each layer's units within a prediction row."""

    @property
    def n_voxels(self) -> int:
        """Number of analysis voxels."""

    def predict(self, x: np.ndarray) -> np.ndarray:
        """float32 (n_rois, sum(n_units)) from one preprocessed analysis vector (n_voxels,)."""

    def predict_many(self, xs: np.ndarray, share: Share | None = None) -> np.ndarray:
        """float32 (n, n_rois, sum(n_units)) from (n, n_voxels); row i the same bits as ``predict(xs[i])``.

        ``share`` runs the work's independent tasks on its threads; the bits do not depend on it.
        """


def load_bundle(directory: str | Path) -> Decoder:
    """The bundle in ``directory``, of whichever kind its ``decoder.json`` names.

    Raises
    ------
    ModelFileError
        As the kind's ``load``, or if an MLP bundle is found and torch is not installed.
    """
    if read_format(Path(directory) / "decoder") == "rtdecode-mlp":
        try:
            from rtdecode.models.mlp import MLPBundle
        except ImportError as err:
            raise ModelFileError(
                f"{directory}: an MLP bundle needs torch (pip install torch==2.13.0)"
            ) from err
        return MLPBundle.load(directory)
    return LinearBundle.load(directory)
