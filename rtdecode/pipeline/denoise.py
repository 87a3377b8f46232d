"""Causal denoising of the analysis voxels: despiking and nuisance regression, one volume at a time.

Between motion correction and the baseline z-scoring (:mod:`rtdecode.pipeline.preprocess`), on
the motion-corrected voxels in scanner units. Each step uses only the current and past volumes,
so the live loop and an offline batch over the same volumes give the same numbers; the offline
equivalents they are tested against are a robust clip against the same running statistics and a
ridge regression refitted on all volumes so far.

* :class:`Despiker`: a voxel more than ``threshold`` running SDs from its running level is a
  spike and replaced by that level, its prediction (as OpenNFT's Kalman despiking replaces it by
  the filter's; AFNI's 3dDespike made causal). Level and SD start from the first ``warmup``
  volumes and then follow exponentially (time constant ``tau_s``), fed the deviation clipped to
  the bound so a spike neither moves the level much nor widens its own bound.
* :class:`MaskSmoother`: a Gaussian of ``fwhm_mm`` inside the analysis mask (normalised
  convolution: voxels outside neither contribute nor receive, so the ROI edges keep their level).
* :class:`~rtdecode.pipeline.nuisance.NuisanceRegressor`: recursive least squares on drift, motion,
  global, white-matter and CSF signals, aCompCor and the physiological regressors of
  :class:`~rtdecode.pipeline.physio.Physio`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rtdecode.config import PreprocessConfig
from rtdecode.numerics.stats import welford
from rtdecode.pipeline.nuisance import NuisanceRegressor
from rtdecode.pipeline.physio import Physio

# The smoothing kernel is cut at this many SDs per axis.
_TRUNCATE = 3.0


class Despiker:
    """Replace each voxel's spikes by its running level (see the module).

    Parameters
    ----------
    threshold : float
        Bound, in running SDs, > 0.
    tau_s : float
        Time constant of the running level and SD, seconds, > 0.
    warmup : int
        Volumes that set the first level and SD (passed through unchanged), >= 2.
    """

    def __init__(self, threshold: float = 4.0, tau_s: float = 30.0, warmup: int = 8) -> None:
        if not threshold > 0 or not tau_s > 0 or warmup < 2:
            raise ValueError(
                f"need threshold > 0, tau_s > 0, warmup >= 2; got {threshold}, {tau_s}, {warmup}"
            )
        self.threshold, self.tau_s, self.warmup = threshold, tau_s, warmup
        self.reset()

    def reset(self) -> None:
        """Forget the series."""
        self.n_seen_ = 0
        self.level_: np.ndarray | None = None
        self.var_: np.ndarray | None = None

    def update(self, x: np.ndarray, tr_s: float) -> tuple[np.ndarray, int]:
        """Despike one volume; return it (float64) and the number of voxels replaced."""
        x = np.asarray(x, dtype=np.float64)
        self.n_seen_ += 1
        if self.n_seen_ <= self.warmup:  # Welford over the warm-up volumes
            self.level_, self.var_ = welford(self.level_, self.var_, x, self.n_seen_)
            if self.n_seen_ == self.warmup:
                self.var_ /= self.warmup - 1
            return x, 0
        bound = self.threshold * np.sqrt(self.var_)
        dev = x - self.level_
        spike = np.abs(dev) > bound
        out = np.where(spike, self.level_, x)
        d = np.clip(dev, -bound, bound)
        a = min(1.0, tr_s / self.tau_s)
        self.level_ += a * d
        self.var_ += a * ((1 - a) * d * d - self.var_)  # exponentially weighted variance (West 1979)
        return out, int(np.count_nonzero(spike))

    def get_state(self) -> dict[str, np.ndarray]:
        """The running statistics (for checkpoints)."""
        state = {"n_seen": np.array(self.n_seen_)}
        if self.level_ is not None:
            state |= {"level": self.level_, "var": self.var_}
        return state

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Take what :meth:`get_state` returned."""
        self.n_seen_ = int(state["n_seen"])
        self.level_ = np.array(state["level"], np.float64) if "level" in state else None
        self.var_ = np.array(state["var"], np.float64) if "var" in state else None


class MaskSmoother:
    """Smooth the analysis voxels with a Gaussian, inside their mask (see the module).

    Parameters
    ----------
    mask : numpy.ndarray
        bool (nx, ny, nz): the analysis voxels, in the order of their flat indices.
    affine : numpy.ndarray
        (4, 4): the mask's grid, for the voxel sizes.
    fwhm_mm : float
        Full width at half maximum, mm, > 0.
    """

    def __init__(self, mask: np.ndarray, affine: np.ndarray, fwhm_mm: float) -> None:
        if not fwhm_mm > 0:
            raise ValueError(f"fwhm_mm must be > 0, got {fwhm_mm!r}")
        mask = np.asarray(mask, dtype=bool)
        zooms = np.linalg.norm(np.asarray(affine, np.float64)[:3, :3], axis=0)
        self.sigma = fwhm_mm / np.sqrt(8 * np.log(2)) / zooms  # in voxels, per axis
        # Only the mask's bounding box, widened by the kernel's reach, is filtered: beyond it
        # everything is zero, as the filter's constant mode assumes.
        reach = (_TRUNCATE * self.sigma + 0.5).astype(int)
        ijk = np.argwhere(mask)
        lo, hi = np.maximum(ijk.min(0) - reach, 0), np.minimum(ijk.max(0) + reach + 1, mask.shape)
        self._box = tuple(slice(a, b) for a, b in zip(lo, hi))
        self._shape = tuple(hi - lo)
        self._index = np.flatnonzero(mask[self._box])  # the same order as in the whole grid
        self._weight = self._smooth(np.ones(self._index.size, np.float32))

    def _smooth(self, x: np.ndarray) -> np.ndarray:
        from scipy.ndimage import gaussian_filter

        grid = np.zeros(self._shape, np.float32)
        grid.flat[self._index] = x
        return gaussian_filter(grid, self.sigma, mode="constant", truncate=_TRUNCATE).flat[self._index]

    def update(self, x: np.ndarray) -> np.ndarray:
        """Smooth one volume's analysis voxels."""
        return self._smooth(np.asarray(x, np.float32)) / self._weight


@dataclass
class Denoised:
    """One volume after denoising: its voxels and the count of voxels despiked."""

    values: np.ndarray
    spikes: int


class Denoiser:
    """The configured denoising steps in order: despiking, smoothing, nuisance regression.

    Parameters
    ----------
    despiker, regressor, smoother
        The steps, None for those off.
    tissue_index : dict of str to numpy.ndarray, optional
        Flat grid indices of the ``wm`` and ``csf`` voxels the regressor reads.
    physio : Physio, optional
        The physiological recording (for the ``retroicor`` and ``rvt`` regressors).
    """

    def __init__(
        self,
        despiker: Despiker | None,
        regressor: NuisanceRegressor | None,
        smoother: MaskSmoother | None = None,
        tissue_index: dict[str, np.ndarray] | None = None,
        physio: Physio | None = None,
    ) -> None:
        self.despiker, self.regressor, self.smoother = despiker, regressor, smoother
        self.tissue_index = {k: np.asarray(v, np.int64) for k, v in (tissue_index or {}).items()}
        self.physio = physio
        self._groups: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # offsets, times, groups

    @property
    def extra_index(self) -> np.ndarray:
        """Flat grid indices read besides the analysis voxels: the white matter's, then the CSF's."""
        return np.concatenate([np.zeros(0, np.int64), *self.tissue_index.values()])

    @classmethod
    def from_config(
        cls,
        pc: PreprocessConfig,
        mask: np.ndarray,
        affine: np.ndarray,
        tissue_masks: dict[str, np.ndarray] | None = None,
        physio_window_s: float = 120.0,
    ) -> Denoiser | None:
        """The steps ``run.preprocess`` turns on, or None for none.

        ``despike``, ``smoothing_fwhm_mm`` and ``nuisance``; the despiker and aCompCor warm up
        over the baseline volumes, the smoother works on ``mask``'s grid (``affine``);
        ``tissue_masks`` (``wm``, ``csf``: bool, on that grid) are needed by the ``wm``, ``csf``
        and ``acompcor`` regressors.

        Raises
        ------
        ValueError
            A regressor's mask is missing or empty.
        """
        sp, nu = pc.despike, pc.nuisance
        d = Despiker(sp.threshold, sp.tau_s, pc.baseline_volumes) if sp.enabled else None
        n = (
            NuisanceRegressor(nu.regressors, nu.penalty, nu.compcor_components, max(2, pc.baseline_volumes))
            if nu.regressors
            else None
        )
        s = MaskSmoother(mask, affine, pc.smoothing_fwhm_mm) if pc.smoothing_fwhm_mm > 0 else None
        tissue = {}
        for name in nu.masks_needed:
            m = (tissue_masks or {}).get(name)
            if m is None or not np.any(m):
                users = [r for r in (name, "acompcor") if r in nu.regressors]
                raise ValueError(f"the {users} regressors need a non-empty {name} mask")
            tissue[name] = np.flatnonzero(m)
        physio = Physio(physio_window_s) if {"retroicor", "rvt"} & set(nu.regressors) else None
        return cls(d, n, s, tissue, physio) if d or n or s else None

    def reset(self) -> None:
        """Forget the series (the physiological recording goes on)."""
        for _, step in self._steps():
            if step is not None:
                step.reset()

    def update(
        self,
        x: np.ndarray,
        motion: np.ndarray | None,
        seq: int,
        tr_s: float,
        extra: np.ndarray | None = None,
        acquired_s: float | None = None,
        slice_offsets_s: np.ndarray | None = None,
    ) -> Denoised:
        """Denoise one volume's analysis voxels; float32 out, as the motion stage gives.

        ``extra`` holds the voxels of :attr:`extra_index`; ``acquired_s`` (the volume's start on
        the physiological recording's clock, None: times relative to volume 0) and
        ``slice_offsets_s`` (each analysis voxel's acquisition time within the volume, None: all
        at its start) place the volume on the recording.
        """
        spikes = 0
        if self.despiker is not None:
            x, spikes = self.despiker.update(x, tr_s)
        if self.smoother is not None:
            x = self.smoother.update(x)
        if self.regressor is not None:
            tissue, at = {}, 0
            for name, index in self.tissue_index.items():
                tissue[name] = extra[at : at + index.size]
                at += index.size
            physio, groups = None, None
            if self.physio is not None:
                times, groups = self._slice_groups(slice_offsets_s, np.size(x))
                physio = self.physio.regressors(seq, tr_s, times, acquired_s)
            x = self.regressor.update(x, motion, seq, tr_s, tissue, physio, groups)
        return Denoised(np.asarray(x, dtype=np.float32), spikes)

    def _slice_groups(self, offsets: np.ndarray | None, n: int) -> tuple[np.ndarray, np.ndarray]:
        # The distinct acquisition times and each voxel's, kept while the offsets stay the same.
        if offsets is None:
            return np.zeros(1), np.zeros(n, np.intp)
        if self._groups is None or not np.array_equal(self._groups[0], offsets):
            times, groups = np.unique(np.round(np.asarray(offsets, np.float64), 6), return_inverse=True)
            self._groups = (np.array(offsets), times, groups)
        return self._groups[1], self._groups[2]

    def _steps(self) -> tuple[tuple[str, object], ...]:
        return (("despike", self.despiker), ("nuisance", self.regressor), ("physio", self.physio))

    def get_state(self) -> dict[str, np.ndarray]:
        """The steps' state, keys prefixed ``despike/``, ``nuisance/`` and ``physio/``."""
        state = {}
        for name, step in self._steps():
            if step is not None:
                state |= {f"{name}/{k}": v for k, v in step.get_state().items()}
        return state

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Take what :meth:`get_state` returned."""
        for name, step in self._steps():
            if step is not None:
                step.set_state({k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(f"{name}/")})
