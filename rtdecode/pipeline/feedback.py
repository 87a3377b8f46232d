"""Neurofeedback scores, per volume and per block.

Each configured score (``run.feedback``) has a kind:

``correlation``, ``rank``, ``softmax``
    Decoded content: the correlation of the decoded features (one ROI and layer) with a target
    category's features, the target's rank among all candidates (1 = best), or its softmax
    probability over the candidates' correlations.
``psc``
    ROI activation as percent signal change, as OpenNFT and Turbo-BrainVoyager give: the ROI mean
    of the motion-corrected volume, cleaned of drift (linear and quadratic) and the six motion
    parameters by a least-squares fit over the volumes so far (incremental, causal), relative to
    the mean of the cleaned signal over the first ``baseline_volumes``. With stimulus markers
    the fit uses rest volumes only; without, every volume, and part of a sustained activation is
    then taken for drift.
``classifier``
    Decoded neurofeedback (DecNef): the likelihood of the target class from a linear classifier
    over an ROI's preprocessed voxel pattern (:mod:`rtdecode.models.classifier`).

Every score is then optionally z-scored against its own first ``baseline_volumes`` values and
exponentially smoothed; the raw value travels beside the final one.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from rtdecode.config import CONTENT_FEEDBACK_KINDS, FeedbackConfig
from rtdecode.errors import ConfigError
from rtdecode.models.bank import CandidateBank
from rtdecode.models.bundle import Decoder
from rtdecode.models.classifier import LinearClassifier
from rtdecode.models.files import mask_checksum
from rtdecode.numerics.stats import correlations
from rtdecode.pipeline.blocks import BlockResult
from rtdecode.pipeline.chain import Result

_N_TERMS = 9  # constant, linear and quadratic drift, six motion parameters


class PercentSignalChange:
    """ROI percent signal change after incremental nuisance regression.

    Parameters
    ----------
    positions : numpy.ndarray
        The ROI's positions in the analysis vector.
    baseline_volumes : int
        The baseline is the cleaned signal's mean over the first this many volumes.
    """

    def __init__(self, positions: np.ndarray, baseline_volumes: int) -> None:
        self.positions = positions
        self.baseline_volumes = baseline_volumes
        self.reset()

    def reset(self) -> None:
        """Forget the series."""
        self._n = 0  # volumes so far
        self._n_fit = 0  # volumes in the nuisance fit
        self._xtx = np.zeros((_N_TERMS, _N_TERMS))  # sufficient statistics of the fit volumes
        self._xty = np.zeros(_N_TERMS)
        self._base_x = np.zeros(_N_TERMS)  # sums over the baseline volumes
        self._base_y = 0.0

    def update(
        self, values: np.ndarray, motion_params: np.ndarray | None, seq: int, rest: bool | None = None
    ) -> float:
        """Add one motion-corrected analysis vector; return its PSC (NaN during the baseline).

        ``rest`` tells whether the volume is outside every task block (from the stimulus
        markers); the nuisance model is then fitted on rest volumes only, so that it cannot
        absorb the activation. ``None`` (no markers): fitted on every volume. The fit is kept as
        its normal equations, so a volume costs the same at the end of a long series as at the
        start (a 9 × 9 solve).
        """
        y = float(values[self.positions].mean())
        t = float(seq)
        motion = np.zeros(6) if motion_params is None else np.asarray(motion_params, dtype=float)
        x = np.concatenate([[1.0, t, t * t], motion])
        self._n += 1
        if self._n <= self.baseline_volumes:
            self._base_x += x
            self._base_y += y
        if self._n <= self.baseline_volumes or rest is None or rest:
            self._xtx += np.outer(x, x)
            self._xty += x * y
            self._n_fit += 1
        if self._n < self.baseline_volumes:
            return math.nan
        # A nuisance term enters only once there are enough volumes to estimate it next to the
        # baseline level; drift columns are scaled by the current time so the terms are comparable.
        k = 1 + min(_N_TERMS - 1, max(0, (self._n_fit - self.baseline_volumes) // 4))
        scale = np.ones(_N_TERMS)
        scale[1], scale[2] = 1.0 / max(t, 1.0), 1.0 / max(t * t, 1.0)
        s = scale[:k]
        z = np.linalg.lstsq(self._xtx[:k, :k] * np.outer(s, s), self._xty[:k] * s, rcond=None)[0]
        beta = z * s
        cleaned = y - x[1:k] @ beta[1:]
        base = (self._base_y - self._base_x[1:k] @ beta[1:]) / self.baseline_volumes
        return float(100.0 * (cleaned - base) / base) if base != 0 else math.nan


class Score:
    """One configured feedback score with its normalisation and smoothing state."""

    def __init__(
        self,
        spec: FeedbackConfig,
        bundle: Decoder,
        bank: CandidateBank,
        bundle_dir: str | Path,
    ) -> None:
        self.spec = spec
        if spec.roi not in bundle.roi_names:
            raise ConfigError(
                f"feedback {spec.name!r}: ROI {spec.roi!r} is not in the bundle {bundle.roi_names}"
            )
        self._roi = bundle.roi_names.index(spec.roi)
        self._psc = self._classifier = None
        if spec.kind in CONTENT_FEEDBACK_KINDS:
            if spec.layer not in bundle.layer_slices:
                raise ConfigError(f"feedback {spec.name!r}: layer {spec.layer!r} is not in {bundle.layers}")
            if spec.target not in bank.labels:
                raise ConfigError(f"feedback {spec.name!r}: target {spec.target!r} is not a candidate label")
            self._slice = bundle.layer_slices[spec.layer]
            self._candidates = bank.features[spec.layer]
            self._target = bank.labels.index(spec.target)
        elif spec.kind == "psc":
            self._psc = PercentSignalChange(bundle.rois[spec.roi], spec.baseline_volumes)
        else:
            path = spec.classifier or Path(bundle_dir) / "classifier.json"
            self._classifier = LinearClassifier.load(path)
            if self._classifier.mask_sha256 != mask_checksum(bundle.mask):
                raise ConfigError(
                    f"feedback {spec.name!r}: classifier {str(path)!r} was trained on another mask"
                )
        self.reset()

    def reset(self) -> None:
        """Forget the series (baseline and smoothing restart)."""
        self._baseline: list[float] = []
        self._smoothed = math.nan
        if self._psc is not None:
            self._psc.reset()

    def _content(self, predictions: np.ndarray) -> float:
        r = correlations(predictions[self._roi : self._roi + 1, self._slice], self._candidates)[0]
        kind = self.spec.kind
        if kind == "correlation":
            return float(r[self._target])
        if kind == "rank":
            return float(1 + (r > r[self._target]).sum())
        z = r.astype(np.float64) / self.spec.temperature
        z -= z.max()
        return float(np.exp(z[self._target]) / np.exp(z).sum())

    def raw(self, res: Result, rest: bool | None = None) -> float:
        """The unnormalised score of one volume (NaN where it cannot be computed yet)."""
        if self._psc is not None:
            if res.values is None:
                return math.nan
            params = res.motion.params if res.motion is not None else None
            return self._psc.update(res.values, params, res.volume.seq, rest)
        if self._classifier is not None:
            return self._classifier.probability(res.x) if res.x is not None else math.nan
        return self._content(res.predictions) if res.predictions is not None else math.nan

    def block_raw(self, block: BlockResult) -> float:
        """The unnormalised score of a block: from its averaged predictions or pattern (PSC: mean)."""
        if block.predictions is None:
            return math.nan
        if self._psc is not None:
            return block.scores.get(self.spec.name, math.nan)
        if self._classifier is not None:
            return self._classifier.probability(block.x)
        return self._content(block.predictions)

    def normalise(self, raw: float) -> float:
        """Apply the baseline normalisation (z-score against the first scores) if configured."""
        if self.spec.normalise == "none" or math.isnan(raw):
            return raw
        if len(self._baseline) < self.spec.baseline_volumes:
            return math.nan
        b = np.array(self._baseline)
        sd = b.std(ddof=1)
        return float((raw - b.mean()) / sd) if sd > 0 else math.nan

    def update(self, res: Result, rest: bool | None = None) -> tuple[float, float]:
        """Score one volume; return ``(raw, value)`` with value normalised and smoothed."""
        raw = self.raw(res, rest)
        if not math.isnan(raw) and len(self._baseline) < self.spec.baseline_volumes:
            self._baseline.append(raw)
        value = self.normalise(raw)
        tau = self.spec.smoothing_volumes
        if tau > 0 and not math.isnan(value):
            a = 1.0 - math.exp(-1.0 / tau)
            self._smoothed = (
                value if math.isnan(self._smoothed) else self._smoothed + a * (value - self._smoothed)
            )
            value = self._smoothed
        return raw, value


class Feedback:
    """All configured scores of a run."""

    def __init__(self, scores: list[Score]) -> None:
        self.scores = scores

    @property
    def names(self) -> list[str]:
        """Score names, in configuration order."""
        return [s.spec.name for s in self.scores]

    def reset(self) -> None:
        """A new series."""
        for s in self.scores:
            s.reset()

    def update(self, res: Result, rest: bool | None = None) -> dict[str, tuple[float, float]]:
        """``{name: (raw, value)}`` for one volume; ``rest``: outside every marked block, if known."""
        return {s.spec.name: s.update(res, rest) for s in self.scores}

    def block(self, block: BlockResult) -> dict[str, tuple[float, float]]:
        """``{name: (raw, value)}`` for one block (normalised like the volumes, not smoothed)."""
        out = {}
        for s in self.scores:
            raw = s.block_raw(block)
            out[s.spec.name] = (raw, s.normalise(raw))
        return out
