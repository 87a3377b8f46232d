"""Block-level evaluation of decoded features against the truth (GOD's measures)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rtdecode.errors import EventsError
from rtdecode.io.nifti import read_events
from rtdecode.io.recording import Recording
from rtdecode.models.bank import CandidateBank
from rtdecode.numerics.stats import correlations, mean_column_correlation
from rtdecode.offline.train import block_average
from rtdecode.pipeline.ranking import pairwise_identification, top_k


def block_scores(
    features: np.ndarray,
    times_s: np.ndarray,
    onsets_s: np.ndarray,
    duration_s: float,
    hrf_shift_s: float,
    candidates: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Average per-volume predictions over each block and correlate with every candidate.

    The decoders are linear, so the average of per-volume predictions equals the prediction of
    the block-averaged volume.

    Parameters
    ----------
    features : numpy.ndarray
        Shape (n_volumes, n_units), NaN rows for volumes without a prediction.
    times_s, onsets_s, duration_s, hrf_shift_s
        As in :func:`rtdecode.offline.train.block_average`.
    candidates : numpy.ndarray
        Shape (n_candidates, n_units), normalised.

    Returns
    -------
    scores : numpy.ndarray
        Shape (n_kept_blocks, n_candidates).
    kept : numpy.ndarray
        Indices of blocks that had predictions.
    """
    avg, kept = block_average(features, times_s, onsets_s, duration_s, hrf_shift_s)
    if not kept.size:
        return np.zeros((0, candidates.shape[0])), kept
    return correlations(avg, candidates), kept


def identification_table(
    features: dict[tuple[str, str], np.ndarray],
    times_s: np.ndarray,
    onsets_s: np.ndarray,
    duration_s: float,
    hrf_shift_s: float,
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
        scores, kept = block_scores(f, times_s, onsets_s, duration_s, hrf_shift_s, bank.features[layer])
        acc = pairwise_identification(scores, true_index[kept]).mean() if kept.size else float("nan")
        out.setdefault(roi, {})[layer] = float(acc)
    return out


def block_top_k(
    features: dict[str, np.ndarray],
    times_s: np.ndarray,
    onsets_s: np.ndarray,
    duration_s: float,
    hrf_shift_s: float,
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
        s, kept = block_scores(f, times_s, onsets_s, duration_s, hrf_shift_s, bank.features[layer])
        total = s if total is None else total + s
    total = total / len(features)
    idx, val = top_k(total, k)
    return idx, val, kept


def block_truth(events_tsv: str | Path, bank: CandidateBank) -> tuple[np.ndarray, float, np.ndarray]:
    """The blocks of an events table and the index of each block's category among ``bank``'s.

    Returns
    -------
    onsets_s : numpy.ndarray
        Shape (n_blocks,).
    duration_s : float
        The blocks' common duration.
    true_index : numpy.ndarray
        Shape (n_blocks,).

    Raises
    ------
    EventsError
        The table lacks ``category_label``, its blocks differ in duration, or a category is not a
        candidate.
    """
    events = read_events(events_tsv)
    if not events or "category_label" not in events[0]:
        raise EventsError(f"{events_tsv}: needs onset, duration and category_label columns")
    durations = {float(e["duration"]) for e in events}
    if len(durations) != 1:
        raise EventsError(f"{events_tsv}: blocks of different durations {sorted(durations)}")
    missing = sorted({e["category_label"] for e in events} - set(bank.labels))
    if missing:
        raise EventsError(f"{events_tsv}: categories {missing[:5]} are not among the candidates")
    onsets = np.array([float(e["onset"]) for e in events])
    truth = np.array([bank.labels.index(e["category_label"]) for e in events])
    return onsets, durations.pop(), truth


def read_results(path: str | Path) -> tuple[np.ndarray, dict[tuple[str, str], np.ndarray]]:
    """Per-volume predictions from a recording (``.h5``) or a subscriber file (``.npz``).

    Returns
    -------
    seq : numpy.ndarray
        Volume indices, shape (n,).
    features : dict of (roi, layer) to numpy.ndarray
        Shape (n, n_units), NaN rows where a volume was not decoded.
    """
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return z["seq"], {tuple(k.split("/")[1:]): z[k] for k in z.files if k.startswith("features/")}
    rec = Recording.load(path)
    return rec.seq, rec.features


def evaluate_session(
    results: str | Path,
    session_dir: str | Path,
    bank: CandidateBank,
    hrf_shift_s: float,
    censored: np.ndarray | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """GOD's measures of a decoded series against its session's truth, per ROI and layer.

    Parameters
    ----------
    results : str or Path
        Recording or subscriber file of the series (see :func:`read_results`).
    session_dir : str or Path
        Holds ``events.tsv`` (``onset``, ``duration``, ``category_label``), ``session.json`` (TR)
        and, for the feature-prediction accuracy, ``stimulus_features.npz`` (``feat_<layer>``
        per block, the features of the images actually shown).
    bank : CandidateBank
        The candidate set for identification; every block's category must be in it.
    hrf_shift_s : float
        Hemodynamic delay.

    Returns
    -------
    dict
        ``{"identification": {roi: {layer: acc}}, "feature_correlation": {roi: {layer: r}}}``;
        identification chance is 0.5.
    """
    sdir = Path(session_dir)
    seq, feats = read_results(results)
    onsets, duration, truth = block_truth(sdir / "events.tsv", bank)
    tr = float(json.loads((sdir / "session.json").read_text())["tr_s"])
    true_feats = {}
    if (sdir / "stimulus_features.npz").exists():
        with np.load(sdir / "stimulus_features.npz", allow_pickle=False) as z:
            true_feats = {k.removeprefix("feat_"): z[k] for k in z.files}
    times = seq * tr
    if censored is not None:
        feats = {k: np.where(censored[:, None], np.nan, f) for k, f in feats.items()}
    ident = identification_table(feats, times, onsets, duration, hrf_shift_s, truth, bank)
    corr: dict[str, dict[str, float]] = {}
    for (roi, layer), f in feats.items():
        if layer in true_feats:
            avg, kept = block_average(f, times, onsets, duration, hrf_shift_s)
            if kept.size:
                corr.setdefault(roi, {})[layer] = mean_column_correlation(avg, true_feats[layer][kept])
    return {"identification": ident, "feature_correlation": corr}


def format_measure(table: dict[str, dict[str, float]], title: str) -> str:
    """An ROI x layer table with a mean column."""
    if not table:
        return f"{title}: none"
    layers = list(next(iter(table.values())))
    lines = [title, f"  {'ROI':<6}" + "".join(f"{ly:>8}" for ly in layers) + f"{'mean':>8}"]
    for roi, row in table.items():
        vals = [row.get(ly, float("nan")) for ly in layers]
        lines.append(f"  {roi:<6}" + "".join(f"{v:>8.3f}" for v in vals) + f"{np.nanmean(vals):>8.3f}")
    return "\n".join(lines)
