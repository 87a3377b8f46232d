"""Causal slice-timing correction: every slice brought to the time of the volume's first slice.

A slice acquired ``s`` seconds into its volume is a sample of the signal at ``t + s``. With only
the current and past volumes, the value at ``t`` (the volume's ``acq_time_s``) is interpolated
linearly between the slice's previous acquisition and its current one:

    x̂_k = x_k + s / (Δ · TR) · (x_prev − x_k)

where ``Δ`` is the number of TRs since the previous volume received (1 without a gap). Offline
tools (SPM, FSL, AFNI) interpolate with sinc or Fourier kernels over the whole series and may
choose any reference slice; causally, the first slice is the reference that needs no
extrapolation. The slice times come from the scanner's headers (``Volume.slice_times_s``: Siemens
MosaicRefAcqTimes, XA frame or slice times; multiband slices share times). It runs on the volume
as received, before motion correction and before any reorientation, where slices lie along the
third array axis.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


class SliceTimer:
    """Correct each volume's slices to the time of its first slice (see the module)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the series."""
        self._prev: np.ndarray | None = None
        self._prev_seq = -1
        self._warned = False

    def update(self, data: np.ndarray, slice_times_s, seq: int, tr_s: float) -> np.ndarray:
        """Take one volume (nx, ny, nz) and return it corrected, float32.

        A volume without slice times, or the first of a series, is returned as it is (float32).
        """
        x = np.asarray(data, dtype=np.float32)
        prev, prev_seq = self._prev, self._prev_seq
        self._prev, self._prev_seq = x, seq
        if slice_times_s is None:
            if not self._warned:
                log.warning("volume %d has no slice times: slice-timing correction passes it as it is", seq)
                self._warned = True
            return x
        if prev is None or prev.shape != x.shape or seq <= prev_seq:
            return x
        weight = np.asarray(slice_times_s, np.float32) / np.float32((seq - prev_seq) * tr_s)
        return x + weight * (prev - x)

    def get_state(self) -> dict[str, np.ndarray]:
        """The previous volume (for checkpoints)."""
        return {} if self._prev is None else {"prev": self._prev, "prev_seq": np.array(self._prev_seq)}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Take what :meth:`get_state` returned."""
        self.reset()
        if "prev" in state:
            self._prev, self._prev_seq = np.array(state["prev"], np.float32), int(state["prev_seq"])
