"""Multi-echo volumes combined into one, weighting each echo by its BOLD sensitivity.

A multi-echo EPI volume holds one image per echo time ``TE_e``. Each voxel decays as
``S_e = S0 · exp(−TE_e / T2*)``; the BOLD contrast of echo ``e`` is proportional to
``TE_e · exp(−TE_e / T2*)``, so the optimal combination (Posse et al. 1999, as AFNI's and
tedana's ``t2s`` combination) weights the echoes by that, normalised to sum 1. T2* is fitted per
voxel, log-linearly, on the mean of the first ``n_fit`` volumes of the series, then kept: the
weights of every later volume are fixed (causal, and the combined series has no steps). Until
then each volume uses the fit on the volumes so far.
"""

from __future__ import annotations

import numpy as np

from rtdecode.errors import VolumeError

T2STAR_RANGE_MS = (1.0, 500.0)  # a fit outside (noise, no signal) is clipped to it


def t2star(mean: np.ndarray, te_ms: np.ndarray) -> np.ndarray:
    """T2* (ms) per voxel from its echoes' signal (..., n_echoes), log-linear least squares."""
    y = np.log(np.maximum(mean, 1e-6))
    te = te_ms - te_ms.mean()
    slope = (y * te).sum(-1) / (te @ te)
    with np.errstate(divide="ignore"):
        t2 = np.where(slope < 0, -1.0 / np.minimum(slope, -1e-12), np.inf)
    return np.clip(t2, *T2STAR_RANGE_MS)


def echo_weights(t2s_ms: np.ndarray, te_ms: np.ndarray) -> np.ndarray:
    """Posse's weights (..., n_echoes): ``TE · exp(−TE / T2*)``, normalised to sum 1."""
    w = te_ms * np.exp(-te_ms / t2s_ms[..., None])
    return w / w.sum(-1, keepdims=True)


class EchoCombiner:
    """Combine each multi-echo volume's echoes (see the module).

    Parameters
    ----------
    n_fit : int
        Volumes whose mean fixes T2*, >= 1.
    """

    def __init__(self, n_fit: int = 8) -> None:
        if n_fit < 1:
            raise ValueError(f"n_fit must be >= 1, got {n_fit!r}")
        self.n_fit = n_fit
        self.reset()

    def reset(self) -> None:
        """Forget the series."""
        self.n_seen_ = 0
        self.te_ms_: np.ndarray | None = None
        self.mean_: np.ndarray | None = None
        self.weights_: np.ndarray | None = None

    def update(self, data: np.ndarray, echo_times_ms: tuple[float, ...]) -> np.ndarray:
        """Combine one volume (nx, ny, nz, n_echoes) into (nx, ny, nz), float32.

        Raises
        ------
        VolumeError
            The echo times differ from the series' first volume's.
        """
        te = np.asarray(echo_times_ms, np.float64)
        if self.te_ms_ is not None and not np.array_equal(te, self.te_ms_):
            raise VolumeError(
                f"echo times {te.tolist()} ms differ from the series' ({self.te_ms_.tolist()} ms)"
            )
        x = np.asarray(data, np.float32)
        if self.n_seen_ < self.n_fit:
            self.te_ms_ = te
            self.n_seen_ += 1
            if self.mean_ is None:
                self.mean_ = x.astype(np.float64)
            else:
                self.mean_ += (x - self.mean_) / self.n_seen_
            self.weights_ = echo_weights(t2star(self.mean_, te), te).astype(np.float32)
            if self.n_seen_ == self.n_fit:
                self.mean_ = None  # the weights are fixed now
        return np.einsum("xyze,xyze->xyz", x, self.weights_)

    def get_state(self) -> dict[str, np.ndarray]:
        """The weights and the fit so far (for checkpoints)."""
        state = {"n_seen": np.array(self.n_seen_)}
        for key, value in (("te_ms", self.te_ms_), ("mean", self.mean_), ("weights", self.weights_)):
            if value is not None:
                state[key] = value
        return state

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Take what :meth:`get_state` returned."""
        self.reset()
        self.n_seen_ = int(state.get("n_seen", 0))
        self.te_ms_ = np.array(state["te_ms"], np.float64) if "te_ms" in state else None
        self.mean_ = np.array(state["mean"], np.float64) if "mean" in state else None
        self.weights_ = np.array(state["weights"], np.float32) if "weights" in state else None
