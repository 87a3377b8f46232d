"""Block-level evaluation of decoded features against the truth (GOD's measures)."""

from __future__ import annotations

import numpy as np

from rtdecode.identify import CandidateBank, correlations, pairwise_identification, top_k
from rtdecode.train import block_average


def block_scores(
    features: np.ndarray,
    times_s: np.ndarray,
    onsets_s: np.ndarray,
    duration_s: float,
    shift_s: float,
    candidates: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Average per-volume predictions over each block and correlate with every candidate.

    The decoders are linear, so the average of per-volume predictions equals the prediction of
    the block-averaged volume.

    Parameters
    ----------
    features : numpy.ndarray
        Shape (n_volumes, n_units), NaN rows for volumes without a prediction.
    times_s, onsets_s, duration_s, shift_s
        As in :func:`rtdecode.train.block_average`.
    candidates : numpy.ndarray
        Shape (n_candidates, n_units), normalised.

    Returns
    -------
    scores : numpy.ndarray
        Shape (n_kept_blocks, n_candidates).
    kept : numpy.ndarray
        Indices of blocks that had predictions.
    """
    avg, kept = block_average(features, times_s, onsets_s, duration_s, shift_s)
    if not kept.size:
        return np.zeros((0, candidates.shape[0])), kept
    return correlations(avg, candidates), kept


def identification_table(
    features: dict[tuple[str, str], np.ndarray],
    times_s: np.ndarray,
    onsets_s: np.ndarray,
    duration_s: float,
    shift_s: float,
    true_index: np.ndarray,
    bank: CandidateBank,
) -> dict[str, dict[str, float]]:
    """Mean pairwise identification accuracy per ROI and layer over blocks.

    Returns
    -------
    dict
        ``{roi: {layer: accuracy}}``; chance is 0.5.
    """
    out: dict[str, dict[str, float]] = {}
    for (roi, layer), f in features.items():
        scores, kept = block_scores(f, times_s, onsets_s, duration_s, shift_s, bank.features[layer])
        acc = pairwise_identification(scores, true_index[kept]).mean() if kept.size else float("nan")
        out.setdefault(roi, {})[layer] = float(acc)
    return out


def block_top_k(
    features: dict[str, np.ndarray],
    times_s: np.ndarray,
    onsets_s: np.ndarray,
    duration_s: float,
    shift_s: float,
    bank: CandidateBank,
    k: int = 5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k candidates per block from one ROI, scoring by the correlation averaged over layers.

    Parameters
    ----------
    features : dict of str to numpy.ndarray
        Per layer, shape (n_volumes, n_units).

    Returns
    -------
    indices, scores : numpy.ndarray
        Shape (n_kept, k).
    kept : numpy.ndarray
    """
    total, kept = None, None
    for layer, f in features.items():
        s, kept = block_scores(f, times_s, onsets_s, duration_s, shift_s, bank.features[layer])
        total = s if total is None else total + s
    total = total / len(features)
    idx, val = top_k(total, k)
    return idx, val, kept
