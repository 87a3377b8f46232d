"""Incremental, causal preprocessing of the analysis voxels: detrending and baseline z-scoring.

Everything here uses only the current and past volumes, so the live loop and an offline batch
over the same volumes produce the same numbers.

Three named normalisations (``run.preprocess.normalise``), for decoders trained on differently
prepared data:

* ``baseline-detrend`` (rtdecode's own training): z-scored against the first volumes, with a
  causal high-pass (moving-average) detrend.
* ``baseline``: z-scored against the mean and SD of the run's first ``baseline_volumes`` volumes,
  no detrending — the Kamitani lab's per-run z-scoring, made causal.
* ``training``: no rescaling here; the bundle's own normalisation (an imported lab model's
  ``x_mean``/``x_norm``, its training statistics) applies to the motion-corrected values, from
  the first volume on.
"""

from __future__ import annotations

import numpy as np

from rtdecode.config import NORMALISATIONS, PreprocessConfig
from rtdecode.numerics.stats import welford


class Preprocessor:
    """Causal detrending and z-scoring against baseline volumes.

    The first ``baseline_volumes`` volumes of a series (rest, before the first stimulus) give each
    voxel's mean and standard deviation (ddof=1). From then on, each volume is expressed as its
    difference from an exponential moving average of the past volumes (a causal high-pass filter
    with time constant ``detrend_tau_s``, which removes scanner drift), divided by the baseline
    standard deviation.

    Parameters
    ----------
    baseline_volumes : int
        Number of baseline volumes, >= 2.
    detrend_tau_s : float
        Time constant of the moving average, seconds, > 0.
    normalise : {"baseline-detrend", "baseline", "training"}
        See the module's description.
    """

    def __init__(
        self, baseline_volumes: int = 8, detrend_tau_s: float = 60.0, normalise: str = "baseline-detrend"
    ) -> None:
        if baseline_volumes < 2:
            raise ValueError(f"baseline_volumes must be >= 2, got {baseline_volumes!r}")
        if detrend_tau_s <= 0:
            raise ValueError(f"detrend_tau_s must be > 0, got {detrend_tau_s!r}")
        if normalise not in NORMALISATIONS:
            raise ValueError(f"normalise must be one of {NORMALISATIONS}, got {normalise!r}")
        self.baseline_volumes = baseline_volumes
        self.detrend_tau_s = detrend_tau_s
        self.normalise = normalise
        self.reset()

    def reset(self) -> None:
        """Forget all state (a new series starts)."""
        self.n_seen_ = 0
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None
        self._scale: np.ndarray | None = None

    def get_state(self) -> dict[str, np.ndarray]:
        """The running statistics, as arrays (for checkpoints)."""
        state = {"n_seen": np.array(self.n_seen_)}
        for name in ("mean", "m2", "scale"):
            value = getattr(self, f"_{name}")
            if value is not None:
                state[name] = value
        return state

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Take the statistics :meth:`get_state` returned."""
        self.reset()
        self.n_seen_ = int(state["n_seen"])
        for name in ("mean", "m2", "scale"):
            if name in state:
                setattr(self, f"_{name}", np.array(state[name], dtype=np.float64))

    @classmethod
    def from_config(cls, pc: PreprocessConfig) -> Preprocessor:
        """The preprocessor a ``run.preprocess`` section describes."""
        return cls(pc.baseline_volumes, pc.detrend_tau_s, pc.normalise)

    @property
    def ready(self) -> bool:
        """True once the baseline is complete (at once with ``training``)."""
        return self._scale is not None or self.normalise == "training"

    def update(self, x: np.ndarray, tr_s: float) -> np.ndarray | None:
        """Take one volume's analysis voxels and return them preprocessed.

        Parameters
        ----------
        x : numpy.ndarray
            Shape (n_voxels,), values on the reference grid.
        tr_s : float
            Time since the previous volume, seconds (the filter's step).

        Returns
        -------
        numpy.ndarray or None
            float32 array of shape (n_voxels,), or None while the baseline is being collected.
        """
        if self.normalise == "training":
            self.n_seen_ += 1
            return np.asarray(x, dtype=np.float32)
        x = np.asarray(x, dtype=np.float64)
        if self._scale is None:
            # Welford's running mean and variance over the baseline volumes.
            self.n_seen_ += 1
            self._mean, self._m2 = welford(self._mean, self._m2, x, self.n_seen_)
            if self.n_seen_ == self.baseline_volumes:
                sd = np.sqrt(self._m2 / (self.n_seen_ - 1))
                # A voxel with no variation (outside the head after motion) must not divide by 0.
                floor = max(float(np.median(sd)) * 1e-3, 1e-12)
                self._scale = 1.0 / np.maximum(sd, floor)
            return None
        self.n_seen_ += 1
        z = (x - self._mean) * self._scale
        if self.normalise == "baseline-detrend":
            self._mean += min(1.0, tr_s / self.detrend_tau_s) * (x - self._mean)
        return z.astype(np.float32)
