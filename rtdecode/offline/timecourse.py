"""Decoding accuracy volume by volume around each trial's onset (Horikawa & Kamitani 2017, Fig. 3).

For every ROI × layer and every lag from the trial onset (the cue, for imagery), the prediction
of the volume acquired at onset + lag is compared with the trial's true category: its correlation
with the category's features (feature-prediction accuracy) and its pairwise identification among
the candidates. During imagery the higher layers' features are predicted earliest; each layer's
peak time (:func:`peak_times`) is reported.
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


def peak_times(course: dict[str, dict[str, list[float]]], lags_s: np.ndarray) -> dict[str, float]:
    """When each layer's identification is highest, for one ROI's entry of :func:`time_course`.

    A 15 s imagery period gives a plateau of accuracy, where the single best lag is mostly noise;
    the peak is taken as the centre of mass of the above-chance accuracy over the lags
    (``sum(lag * max(acc - 0.5, 0)) / sum(max(acc - 0.5, 0))``), which moves with the response.
    NaN for a layer never above chance.
    """
    out = {}
    for layer, v in course.items():
        w = np.clip(np.nan_to_num(np.asarray(v["identification"]) - 0.5, nan=0.0), 0.0, None)
        out[layer] = float((np.asarray(lags_s) * w).sum() / w.sum()) if w.sum() > 0 else float("nan")
    return out
