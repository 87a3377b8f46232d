"""Per-volume quality of a series, causal: what OpenNFT and FIRMM show the operator while it runs.

Computed on the analysis voxels after motion correction and denoising (scanner units), so the
figures describe what the decoders read:

* DVARS: root mean square over voxels of the change from the previous volume, in % of the mean
  signal (Power et al. 2012; Smyser et al.'s percentage form);
* global signal: mean over the analysis voxels;
* tSNR per ROI: each voxel's running mean over its running SD (Welford, all volumes so far), the
  median over the ROI's voxels; None until three volumes are in;
* FIRMM's motion summary (Dosenbach et al. 2017): the share of frames with framewise displacement
  at or under 0.2, 0.3 and 0.5 mm, the minutes of clean data so far (frames not censored), and,
  when the run's length is known, the minutes of clean data projected at its end at the rate so far.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rtdecode.numerics.stats import welford

FD_LEVELS_MM = (0.2, 0.3, 0.5)  # FIRMM's thresholds


@dataclass
class Quality:
    """One volume's quality figures (see the module)."""

    dvars_pct: float | None
    global_signal: float
    tsnr: dict[str, float | None]
    frames_under: dict[str, float]
    clean_minutes: float
    projected_clean_minutes: float | None


class QualityMonitor:
    """Follow a series' quality volume by volume.

    Parameters
    ----------
    rois : dict of str to numpy.ndarray
        Positions of each ROI's voxels in the analysis vector.
    expected_volumes : int
        The run's length in volumes, for the projection; 0 when unknown.
    """

    def __init__(self, rois: dict[str, np.ndarray], expected_volumes: int = 0) -> None:
        if expected_volumes < 0:
            raise ValueError(f"expected_volumes must be >= 0, got {expected_volumes!r}")
        self.rois = {name: np.asarray(index) for name, index in rois.items()}
        self.expected_volumes = expected_volumes
        self.reset()

    def reset(self) -> None:
        """Forget the series."""
        self.n_ = 0
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None
        self._prev: np.ndarray | None = None
        self._under = np.zeros(len(FD_LEVELS_MM))
        self._clean = 0
        self._frames = 0

    def update(self, values: np.ndarray, fd_mm: float | None, censored: bool, tr_s: float) -> Quality:
        """Take one volume's analysis voxels and its motion; return the figures so far.

        ``fd_mm`` is None without motion correction (every frame then counts as clean).
        """
        x = np.asarray(values, dtype=np.float64)
        self.n_ += 1
        self._mean, self._m2 = welford(self._mean, self._m2, x, self.n_)
        level = float(np.mean(x))
        dvars = None
        if self._prev is not None and level:
            dvars = 100.0 * float(np.sqrt(np.mean((x - self._prev) ** 2))) / level
        self._prev = x
        tsnr: dict[str, float | None] = dict.fromkeys(self.rois)
        if self.n_ >= 3:
            sd = np.sqrt(self._m2 / (self.n_ - 1))
            ratio = np.divide(self._mean, sd, out=np.zeros_like(sd), where=sd > 0)
            tsnr = {name: float(np.median(ratio[index])) for name, index in self.rois.items()}
        # The first frame has no displacement (FD 0 by convention): it counts as a frame under all.
        self._frames += 1
        self._under += np.array(FD_LEVELS_MM) >= (fd_mm or 0.0)
        self._clean += not censored
        clean_minutes = self._clean * tr_s / 60.0
        projected = None
        if self.expected_volumes:
            remaining = max(self.expected_volumes - self._frames, 0)
            projected = clean_minutes + remaining * (self._clean / self._frames) * tr_s / 60.0
        return Quality(
            dvars_pct=dvars,
            global_signal=level,
            tsnr=tsnr,
            frames_under={f"{t:g}": float(u / self._frames) for t, u in zip(FD_LEVELS_MM, self._under)},
            clean_minutes=clean_minutes,
            projected_clean_minutes=projected,
        )

    def get_state(self) -> dict[str, np.ndarray]:
        """The running sums (for checkpoints)."""
        state = {"counts": np.array([self.n_, self._clean, self._frames]), "under": self._under}
        for name in ("mean", "m2", "prev"):
            if (value := getattr(self, f"_{name}")) is not None:
                state[name] = value
        return state

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Take what :meth:`get_state` returned."""
        self.n_, self._clean, self._frames = (int(v) for v in state["counts"])
        self._under = np.array(state["under"], np.float64)
        for name in ("mean", "m2", "prev"):
            setattr(self, f"_{name}", np.array(state[name], np.float64) if name in state else None)
