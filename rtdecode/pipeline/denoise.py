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
* :class:`NuisanceRegressor`: recursive least squares (an incremental GLM, as in OpenNFT and
  Turbo-BrainVoyager) of each voxel on an intercept and the chosen regressors, with a ridge prior of
  ``penalty`` volumes' worth on every coefficient but the intercept, so the first volumes are barely
  changed while the fit has little to go on. The fitted nuisance (all but the intercept) is
  subtracted from the current volume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rtdecode.config import NUISANCE_REGRESSORS, PreprocessConfig
from rtdecode.numerics.stats import welford

# The intercept's prior precision: effectively free, finite so the recursion can start.
_INTERCEPT_PRECISION = 1e-8
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


class NuisanceRegressor:
    """Regress nuisance signals out of each voxel by recursive least squares (see the module).

    Parameters
    ----------
    regressors : sequence of str
        Any of ``drift`` (linear, minutes since the series began), ``motion`` (the six
        parameters, mm and degrees), ``motion_derivatives`` (their backward differences) and
        ``global`` (mean of the analysis voxels, % change from the first volume).
    penalty : float
        Ridge prior on the nuisance coefficients, in volumes' worth of unit-size regressors, > 0.
    """

    def __init__(self, regressors: tuple[str, ...] | list[str], penalty: float = 1.0) -> None:
        unknown = set(regressors) - set(NUISANCE_REGRESSORS)
        if unknown or not regressors:
            raise ValueError(f"regressors must be some of {NUISANCE_REGRESSORS}, got {list(regressors)}")
        if not penalty > 0:
            raise ValueError(f"penalty must be > 0, got {penalty!r}")
        self.regressors = tuple(r for r in NUISANCE_REGRESSORS if r in regressors)
        self.penalty = penalty
        self.reset()

    @property
    def n_regressors(self) -> int:
        """Columns of the design, the intercept included."""
        return 1 + sum({"motion": 6, "motion_derivatives": 6}.get(r, 1) for r in self.regressors)

    def reset(self) -> None:
        """Forget the series."""
        k = self.n_regressors
        self.P_ = np.diag([1 / _INTERCEPT_PRECISION] + [1 / self.penalty] * (k - 1))
        self.B_: np.ndarray | None = None
        self._first: tuple[int, float] | None = None  # first seq and global signal of the series
        self._prev_motion: np.ndarray | None = None

    def design_row(self, x: np.ndarray, motion: np.ndarray | None, seq: int, tr_s: float) -> np.ndarray:
        """The volume's regressors, intercept first (also the offline reference's design)."""
        mean = float(np.mean(x))
        if self._first is None:
            self._first = (seq, mean)
        row = [1.0]
        for name in self.regressors:
            if name == "drift":
                row.append((seq - self._first[0]) * tr_s / 60.0)
            elif name == "global":
                row.append(100.0 * (mean / self._first[1] - 1.0) if self._first[1] else 0.0)
            else:
                if motion is None:
                    raise ValueError(f"the {name} regressors need motion correction (run.motion.enabled)")
                m = np.asarray(motion, np.float64)
                row += list(
                    m if name == "motion" else m - (m if self._prev_motion is None else self._prev_motion)
                )
        if motion is not None:
            self._prev_motion = np.asarray(motion, np.float64)
        return np.array(row)

    def update(self, x: np.ndarray, motion: np.ndarray | None, seq: int, tr_s: float) -> np.ndarray:
        """Take one volume (float64, its voxels) and return it with the fitted nuisance removed."""
        x = np.asarray(x, dtype=np.float64)
        r = self.design_row(x, motion, seq, tr_s)
        if self.B_ is None:
            self.B_ = np.zeros((r.size, x.size))
        pr = self.P_ @ r
        gain = pr / (1.0 + r @ pr)
        self.B_ += np.outer(gain, x - r @ self.B_)
        self.P_ -= np.outer(gain, pr)
        return x - r[1:] @ self.B_[1:]

    def get_state(self) -> dict[str, np.ndarray]:
        """The fit so far (for checkpoints)."""
        state = {"P": self.P_}
        if self.B_ is not None:
            state["B"] = self.B_
        if self._first is not None:
            state["first"] = np.array(self._first, np.float64)
        if self._prev_motion is not None:
            state["prev_motion"] = self._prev_motion
        return state

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Take what :meth:`get_state` returned."""
        self.P_ = np.array(state["P"], np.float64)
        self.B_ = np.array(state["B"], np.float64) if "B" in state else None
        first = state.get("first")
        self._first = None if first is None else (int(first[0]), float(first[1]))
        self._prev_motion = np.array(state["prev_motion"], np.float64) if "prev_motion" in state else None


@dataclass
class Denoised:
    """One volume after denoising: its voxels and the count of voxels despiked."""

    values: np.ndarray
    spikes: int


class Denoiser:
    """The configured denoising steps in order: despiking, smoothing, nuisance regression."""

    def __init__(
        self,
        despiker: Despiker | None,
        regressor: NuisanceRegressor | None,
        smoother: MaskSmoother | None = None,
    ) -> None:
        self.despiker, self.regressor, self.smoother = despiker, regressor, smoother

    @classmethod
    def from_config(cls, pc: PreprocessConfig, mask: np.ndarray, affine: np.ndarray) -> Denoiser | None:
        """The steps ``run.preprocess`` turns on, or None for none.

        ``despike``, ``smoothing_fwhm_mm`` and ``nuisance``; the despiker warms up over the
        baseline volumes, the smoother works on ``mask``'s grid (``affine``).
        """
        sp, nu = pc.despike, pc.nuisance
        d = Despiker(sp.threshold, sp.tau_s, pc.baseline_volumes) if sp.enabled else None
        n = NuisanceRegressor(nu.regressors, nu.penalty) if nu.regressors else None
        s = MaskSmoother(mask, affine, pc.smoothing_fwhm_mm) if pc.smoothing_fwhm_mm > 0 else None
        return cls(d, n, s) if d or n or s else None

    def reset(self) -> None:
        """Forget the series."""
        for step in (self.despiker, self.regressor):
            if step is not None:
                step.reset()

    def update(self, x: np.ndarray, motion: np.ndarray | None, seq: int, tr_s: float) -> Denoised:
        """Denoise one volume's analysis voxels; float32 out, as the motion stage gives."""
        spikes = 0
        if self.despiker is not None:
            x, spikes = self.despiker.update(x, tr_s)
        if self.smoother is not None:
            x = self.smoother.update(x)
        if self.regressor is not None:
            x = self.regressor.update(x, motion, seq, tr_s)
        return Denoised(np.asarray(x, dtype=np.float32), spikes)

    def get_state(self) -> dict[str, np.ndarray]:
        """Both steps' state, keys prefixed ``despike/`` and ``nuisance/``."""
        state = {}
        for name, step in (("despike", self.despiker), ("nuisance", self.regressor)):
            if step is not None:
                state |= {f"{name}/{k}": v for k, v in step.get_state().items()}
        return state

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Take what :meth:`get_state` returned."""
        for name, step in (("despike", self.despiker), ("nuisance", self.regressor)):
            if step is not None:
                step.set_state({k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(f"{name}/")})
