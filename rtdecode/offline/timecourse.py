"""Decoding accuracy volume by volume around each trial's onset (Horikawa & Kamitani 2017, Fig. 3).

For every ROI × layer and every lag from the trial onset (the cue, for imagery), the prediction
of the volume acquired at onset + lag is compared with the trial's true category: its correlation
with the category's features (feature-prediction accuracy) and its pairwise identification among
the candidates. During imagery the higher layers' features are predicted earliest; each layer's
peak time is reported.
"""

from __future__ import annotations

import numpy as np

from rtdecode.models.bank import CandidateBank
from rtdecode.numerics.stats import correlations
from rtdecode.pipeline.ranking import pairwise_identification


def time_course(
    features: dict[tuple[str, str], np.ndarray],
    tr_s: float,
    onsets_s: np.ndarray,
    true_index: np.ndarray,
    bank: CandidateBank,
    lags_s: np.ndarray,
) -> dict[str, dict[str, dict[str, list[float]]]]:
    """Feature-prediction and identification accuracy per lag from trial onset.

    Parameters
    ----------
    features : dict of (roi, layer) to numpy.ndarray
        Per-volume predictions, (n_volumes, n_units), NaN rows where a volume was not decoded;
        volume ``k`` was acquired at ``k * tr_s`` seconds.
    tr_s : float
    onsets_s : numpy.ndarray
        Trial onsets (s from volume 0), shape (n_trials,).
    true_index : numpy.ndarray
        Each trial's category among ``bank``'s candidates.
    bank : CandidateBank
    lags_s : numpy.ndarray
        Lags from onset (s); each picks the volume acquired nearest to onset + lag.

    Returns
    -------
    dict
        ``{roi: {layer: {"feature_correlation": [...], "identification": [...], "n": [...]}}}``,
        one value per lag (NaN where no trial had a decoded volume at that lag).
    """
    out: dict[str, dict[str, dict[str, list[float]]]] = {}
    for (roi, layer), f in features.items():
        corr, ident, count = [], [], []
        for lag in lags_s:
            k = np.rint((np.asarray(onsets_s) + lag) / tr_s).astype(int)
            ok = (k >= 0) & (k < len(f))
            ok[ok] &= np.isfinite(f[k[ok]]).all(axis=1)
            if not ok.any():
                corr.append(float("nan"))
                ident.append(float("nan"))
                count.append(0)
                continue
            r = correlations(f[k[ok]], bank.features[layer])
            truth = np.asarray(true_index)[ok]
            corr.append(float(r[np.arange(truth.size), truth].mean()))
            ident.append(float(pairwise_identification(r, truth).mean()))
            count.append(int(ok.sum()))
        out.setdefault(roi, {})[layer] = {"feature_correlation": corr, "identification": ident, "n": count}
    return out


def peak_times(
    course: dict[str, dict[str, list[float]]], lags_s: np.ndarray, measure: str
) -> dict[str, float]:
    """The lag at which each layer's ``measure`` peaks, for one ROI's entry of :func:`time_course`."""
    return {
        layer: float(lags_s[int(np.nanargmax(v[measure]))]) if np.isfinite(v[measure]).any() else float("nan")
        for layer, v in course.items()
    }
