"""Causal nuisance regression: recursive least squares on drift, motion, tissue and physiological signals.

Each analysis voxel is regressed on an intercept and the chosen regressors by recursive least
squares (an incremental GLM, as in OpenNFT and Turbo-BrainVoyager), with a ridge prior of
``penalty`` volumes' worth on every coefficient but the intercept, so the first volumes are barely
changed while the fit has little to go on. The fitted nuisance (all but the intercept) is
subtracted from the current volume. Regressors:

* ``drift``: minutes since the series began; ``motion``: the six parameters (mm, degrees);
  ``motion_derivatives``: their backward differences; ``global``: mean of the analysis voxels,
  % change from the first volume;
* ``wm``, ``csf``: mean of the white-matter and CSF voxels, % change from the first volume
  (RTPSpy's global/WM/ventricle regression);
* ``acompcor`` (Behzadi et al. 2007, made causal): the first ``compcor_components`` principal
  components of the WM and CSF voxels over the baseline volumes (each voxel centred and
  detrended); later volumes are projected on them, scaled to unit SD over the baseline, and the
  baseline volumes themselves get zeros (the fit learns nothing from them);
* ``retroicor`` (8 columns) and ``rvt``: from :class:`rtdecode.pipeline.physio.Physio`; RETROICOR
  differs between slices, so voxels acquired at different times have their own design rows
  (voxel groups, each with its own RLS covariance).
"""

from __future__ import annotations

import numpy as np

from rtdecode.config import NUISANCE_REGRESSORS
from rtdecode.pipeline.physio import N_RETROICOR

# The intercept's prior precision: effectively free, finite so the recursion can start.
_INTERCEPT_PRECISION = 1e-8


class NuisanceRegressor:
    """Regress nuisance signals out of each voxel by recursive least squares (see the module).

    Parameters
    ----------
    regressors : sequence of str
        Some of :data:`rtdecode.config.NUISANCE_REGRESSORS`.
    penalty : float
        Ridge prior on the nuisance coefficients, in volumes' worth of unit-size regressors, > 0.
    compcor_components : int
        aCompCor's components, >= 1.
    warmup : int
        Volumes over which aCompCor's components are found, >= 2.
    """

    def __init__(
        self,
        regressors: tuple[str, ...] | list[str],
        penalty: float = 1.0,
        compcor_components: int = 5,
        warmup: int = 8,
    ) -> None:
        unknown = set(regressors) - set(NUISANCE_REGRESSORS)
        if unknown or not regressors:
            raise ValueError(f"regressors must be some of {NUISANCE_REGRESSORS}, got {list(regressors)}")
        if not penalty > 0 or compcor_components < 1 or warmup < 2:
            raise ValueError(
                "need penalty > 0, compcor_components >= 1, warmup >= 2; got "
                f"{penalty!r}, {compcor_components!r}, {warmup!r}"
            )
        self.regressors = tuple(r for r in NUISANCE_REGRESSORS if r in regressors)
        self.penalty, self.compcor_components, self.warmup = penalty, compcor_components, warmup
        self.reset()

    def _width(self, name: str) -> int:
        widths = {"motion": 6, "motion_derivatives": 6, "acompcor": self.compcor_components}
        return widths.get(name, N_RETROICOR if name == "retroicor" else 1)

    @property
    def n_regressors(self) -> int:
        """Columns of the design, the intercept included."""
        return 1 + sum(self._width(r) for r in self.regressors)

    def reset(self) -> None:
        """Forget the series."""
        self.P_: np.ndarray | None = None  # (groups, k, k)
        self.B_: np.ndarray | None = None  # (k, voxels)
        self._first: dict[str, float] = {}  # first seq and mean signals of the series
        self._prev_motion: np.ndarray | None = None
        self._compcor: list[np.ndarray] = []  # the baseline volumes' WM + CSF voxels, then dropped
        self._components: dict[str, np.ndarray] = {}  # aCompCor's centre, components and scale

    def design(
        self,
        x: np.ndarray,
        motion: np.ndarray | None,
        seq: int,
        tr_s: float,
        tissue: dict[str, np.ndarray] | None = None,
        physio: tuple[np.ndarray, float] | None = None,
    ) -> np.ndarray:
        """The volume's design rows (groups, k), intercept first (also the offline reference's).

        ``tissue`` has the volume's ``wm`` and ``csf`` voxels; ``physio`` is RETROICOR per voxel
        group (groups, 8) and the RVT regressor. One group without RETROICOR.
        """
        tissue = tissue or {}
        row = [1.0]
        for name in self.regressors:
            if name == "drift":
                row.append((seq - self._once("seq", seq)) * tr_s / 60.0)
            elif name in ("global", "wm", "csf"):
                values = x if name == "global" else self._need(tissue, name)
                mean = float(np.mean(values))
                first = self._once(name, mean)
                row.append(100.0 * (mean / first - 1.0) if first else 0.0)
            elif name == "acompcor":
                both = np.concatenate([self._need(tissue, "wm"), self._need(tissue, "csf")])
                row += list(self._compcor_row(both))
            elif name == "rvt":
                row.append(self._need_physio(physio)[1])
            elif name in ("motion", "motion_derivatives"):
                if motion is None:
                    raise ValueError(f"the {name} regressors need motion correction (run.motion.enabled)")
                m = np.asarray(motion, np.float64)
                prev = m if self._prev_motion is None else self._prev_motion
                row += list(m if name == "motion" else m - prev)
        if motion is not None:
            self._prev_motion = np.asarray(motion, np.float64)
        if "retroicor" not in self.regressors:
            return np.array(row)[None]
        # RETROICOR's columns go where the order of NUISANCE_REGRESSORS puts them.
        retro = self._need_physio(physio)[0]
        at = 1 + sum(self._width(r) for r in self.regressors[: self.regressors.index("retroicor")])
        common = np.broadcast_to(np.array(row), (retro.shape[0], len(row)))
        return np.concatenate([common[:, :at], retro, common[:, at:]], axis=1)

    def _once(self, key: str, value: float) -> float:
        return self._first.setdefault(key, value)

    @staticmethod
    def _need(tissue: dict[str, np.ndarray], name: str) -> np.ndarray:
        if name not in tissue:
            raise ValueError(
                f"the {name} regressors need a {name} mask (run.preprocess.nuisance.{name}_mask)"
            )
        return np.asarray(tissue[name], np.float64)

    @staticmethod
    def _need_physio(physio: tuple[np.ndarray, float] | None) -> tuple[np.ndarray, float]:
        if physio is None:
            raise ValueError("the retroicor and rvt regressors need physiological recordings (run.physio)")
        return physio

    def _compcor_row(self, v: np.ndarray) -> np.ndarray:
        k = self.compcor_components
        if not self._components:
            self._compcor.append(v)
            if len(self._compcor) == self.warmup:
                self._find_components(np.array(self._compcor))
                self._compcor = []
            return np.zeros(k)
        c = self._components
        return c["components"] @ (v - c["centre"]) / c["scale"]

    def _find_components(self, y: np.ndarray) -> None:
        # Each voxel centred and detrended over the baseline; the patterns of the largest
        # components are kept, with their SDs (fewer volumes than components: the rest stay 0).
        k = self.compcor_components
        t = np.arange(len(y)) - (len(y) - 1) / 2
        centre = y.mean(0)
        resid = y - centre - np.outer(t, t @ (y - centre) / (t @ t))
        _, sv, vt = np.linalg.svd(resid, full_matrices=False)
        n = min(k, vt.shape[0])
        comps, scale = np.zeros((k, y.shape[1])), np.ones(k)
        comps[:n] = vt[:n]
        scale[:n] = np.where(sv[:n] > 0, sv[:n] / np.sqrt(len(y)), 1.0)
        self._components = {"centre": centre, "components": comps, "scale": scale}

    def update(
        self,
        x: np.ndarray,
        motion: np.ndarray | None,
        seq: int,
        tr_s: float,
        tissue: dict[str, np.ndarray] | None = None,
        physio: tuple[np.ndarray, float] | None = None,
        groups: np.ndarray | None = None,
    ) -> np.ndarray:
        """Take one volume (its voxels) and return it with the fitted nuisance removed (float64).

        ``groups`` gives each voxel's row of ``physio``'s RETROICOR (its slice); None: all row 0.
        """
        x = np.asarray(x, dtype=np.float64)
        rows = self.design(x, motion, seq, tr_s, tissue, physio)
        if self.B_ is None:
            prior = np.diag([1 / _INTERCEPT_PRECISION] + [1 / self.penalty] * (rows.shape[1] - 1))
            self.B_ = np.zeros((rows.shape[1], x.size))
            self.P_ = np.repeat(prior[None], rows.shape[0], axis=0)
        if rows.shape[0] != self.P_.shape[0]:
            raise ValueError(f"{rows.shape[0]} design rows for a fit of {self.P_.shape[0]} voxel groups")
        g = np.zeros(x.size, np.intp) if groups is None else np.asarray(groups, np.intp)
        pr = np.einsum("gij,gj->gi", self.P_, rows)
        gain = pr / (1.0 + np.einsum("gi,gi->g", rows, pr))[:, None]
        r_vox = rows[g].T  # (k, voxels)
        self.B_ += gain[g].T * (x - np.einsum("kv,kv->v", r_vox, self.B_))
        self.P_ -= gain[:, :, None] * pr[:, None, :]
        return x - np.einsum("kv,kv->v", r_vox[1:], self.B_[1:])

    def get_state(self) -> dict[str, np.ndarray]:
        """The fit so far (for checkpoints)."""
        state = {f"first/{k}": np.array(v) for k, v in self._first.items()}
        state |= {f"compcor/{k}": v for k, v in self._components.items()}
        for key, value in (("P", self.P_), ("B", self.B_), ("prev_motion", self._prev_motion)):
            if value is not None:
                state[key] = value
        if self._compcor:
            state["compcor_seen"] = np.array(self._compcor)
        return state

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Take what :meth:`get_state` returned."""
        self.reset()
        arrays = {k: np.array(v, np.float64) for k, v in state.items()}
        self._first = {k[6:]: float(v) for k, v in arrays.items() if k.startswith("first/")}
        self._components = {k[8:]: v for k, v in arrays.items() if k.startswith("compcor/")}
        self.P_, self.B_ = arrays.get("P"), arrays.get("B")
        self._prev_motion = arrays.get("prev_motion")
        self._compcor = list(arrays.get("compcor_seen", []))
