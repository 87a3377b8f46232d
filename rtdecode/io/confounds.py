"""Motion as fMRIPrep's confounds table (BIDS ``_desc-confounds_timeseries.tsv``), beside a recording."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

CONFOUND_COLUMNS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z", "framewise_displacement")


def write_confounds(path: str | Path, motion: Mapping[int, tuple[list[float], float]]) -> None:
    """Write motion as fMRIPrep's confounds: translations in mm, rotations in radians, FD in mm.

    Rows follow the volume index; the first row's framewise displacement is ``n/a`` as in fMRIPrep.
    """
    lines = ["\t".join(CONFOUND_COLUMNS)]
    for i, seq in enumerate(sorted(motion)):
        params, fd = motion[seq]
        values = [*params[:3], *np.deg2rad(params[3:6])]
        cells = [f"{v:.6f}" for v in values] + ["n/a" if i == 0 else f"{fd:.6f}"]
        lines.append("\t".join(cells))
    Path(path).write_text("\n".join(lines) + "\n")
