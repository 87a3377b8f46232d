"""Block-level evaluation of decoded features against the truth (GOD's measures and conventions).

As the Kamitani lab evaluates (bdpy): the candidates are the test categories and unseen ones, not
the training categories; a category's blocks or trials are averaged before identification; cue
rows of an imagery run are not trials. When the top candidates miss,
:func:`rtdecode.offline.semantic.superclass_rates` says whether they are at least semantically close.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rtdecode.errors import EventsError
from rtdecode.io.nifti import read_events
from rtdecode.io.recording import Recording
from rtdecode.models.bank import CandidateBank
from rtdecode.numerics.stats import correlations, mean_column_correlation
from rtdecode.offline.semantic import superclass_rates
from rtdecode.offline.timecourse import peak_times, time_course
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


def per_category(averages: np.ndarray, true_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average the block predictions of each category (GOD: one prediction per test category).

    Returns
    -------
    averages : numpy.ndarray
        Shape (n_categories, n_units), in order of ``categories``.
    categories : numpy.ndarray
    """
    categories = np.unique(true_index)
    return np.stack([averages[true_index == c].mean(0) for c in categories]), categories


def identification_table(
    features: dict[tuple[str, str], np.ndarray],
    times_s: np.ndarray,
    onsets_s: np.ndarray,
    duration_s: float,
    hrf_shift_s: float,
    true_index: np.ndarray,
    bank: CandidateBank,
    by_category: bool = False,
) -> dict[str, dict[str, float]]:
    """Mean pairwise identification accuracy per ROI and layer over blocks (or categories).

    Returns
    -------
    dict
        ``{roi: {layer: accuracy}}``; chance is 0.5.
    """
    out: dict[str, dict[str, float]] = {}
    for (roi, layer), f in features.items():
        avg, kept = block_average(f, times_s, onsets_s, duration_s, hrf_shift_s)
        acc = float("nan")
        if kept.size:
            truth = np.asarray(true_index)[kept]
            if by_category:
                avg, truth = per_category(avg, truth)
            acc = pairwise_identification(correlations(avg, bank.features[layer]), truth).mean()
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
    total, kept = roi_block_scores(features, times_s, onsets_s, duration_s, hrf_shift_s, bank)
    idx, val = top_k(total, k)
    return idx, val, kept


def roi_block_scores(
    features: dict[str, np.ndarray],
    times_s: np.ndarray,
    onsets_s: np.ndarray,
    duration_s: float,
    hrf_shift_s: float,
    bank: CandidateBank,
) -> tuple[np.ndarray, np.ndarray]:
    """One ROI's block scores (:func:`block_scores`) averaged over its layers.

    Parameters
    ----------
    features : dict of str to numpy.ndarray
        Per layer, shape (n_volumes, n_units).

    Returns
    -------
    scores : numpy.ndarray
        Shape (n_kept, n_candidates).
    kept : numpy.ndarray
    """
    total, kept = None, None
    for layer, f in features.items():
        s, kept = block_scores(f, times_s, onsets_s, duration_s, hrf_shift_s, bank.features[layer])
        total = s if total is None else total + s
    return total / len(features), kept


def block_truth(
    events_tsv: str | Path, bank: CandidateBank, trial_type: str | None = None
) -> tuple[np.ndarray, float, np.ndarray]:
    """The blocks of an events table and the index of each block's category among ``bank``'s.

    Rows with ``trial_type`` ``cue`` are not blocks; with ``trial_type`` given, only its rows are.

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
    events = [
        e
        for e in read_events(events_tsv)
        if e.get("trial_type") != "cue" and (trial_type is None or e.get("trial_type") == trial_type)
    ]
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


def training_labels(session_dir: str | Path) -> set[str]:
    """The labels of the subject's training categories, as a simulated session records them.

    ``session.json`` lists them by index into the session's bank (``features.npz``); empty when
    either is missing (a real session: name the candidates with ``--candidates``).
    """
    sdir = Path(session_dir)
    if not (sdir / "session.json").exists() or not (sdir / "features.npz").exists():
        return set()
    with np.load(sdir / "features.npz", allow_pickle=False) as z:
        labels = [str(v) for v in z["labels"]]
    meta = json.loads((sdir / "session.json").read_text())
    return {labels[i] for i in meta.get("train_categories", []) if 0 <= i < len(labels)}


def trial_time_course(
    features: dict[tuple[str, str], np.ndarray],
    tr_s: float,
    events_tsv: str | Path,
    bank: CandidateBank,
    lags_s: np.ndarray,
) -> dict:
    """:func:`~rtdecode.offline.timecourse.time_course` from each trial's first row (its cue).

    Returns
    -------
    dict
        ``lags_s``, ``rois`` (the time course per ROI and layer) and ``peak_s`` per ROI and layer.
    """
    first: dict[str, dict[str, str]] = {}
    for e in read_events(events_tsv):
        first.setdefault(e.get("block", e["onset"]), e)  # a trial's rows share its block number
    starts = [e for e in first.values() if e.get("category_label") in bank.labels]
    onsets = np.array([float(e["onset"]) for e in starts])
    truth = np.array([bank.labels.index(e["category_label"]) for e in starts])
    lags = np.asarray(lags_s, dtype=float)
    course = time_course(features, tr_s, onsets, truth, bank, lags)
    peaks = {r: peak_times(c, lags) for r, c in course.items()}
    return {"lags_s": lags.tolist(), "rois": course, "peak_s": peaks}


def evaluate_session(
    results: str | Path,
    session_dir: str | Path,
    bank: CandidateBank,
    hrf_shift_s: float,
    censored: np.ndarray | None = None,
    trial_type: str | None = None,
    by_category: bool = True,
    groups: np.ndarray | None = None,
    lags_s: np.ndarray | None = None,
) -> dict:
    """GOD's measures of a decoded series against its session's truth, per ROI and layer.

    Parameters
    ----------
    results : str or Path
        Recording or subscriber file of the series (see :func:`read_results`).
    session_dir : str or Path
        Holds ``events.tsv`` (``onset``, ``duration``, ``category_label``, ``trial_type``),
        ``session.json`` (TR) and, for the feature-prediction accuracy,
        ``stimulus_features.npz`` (``feat_<layer>`` per block or trial).
    bank : CandidateBank
        The candidate set for identification; every block's category must be in it.
    hrf_shift_s : float
        Hemodynamic delay.
    censored : numpy.ndarray, optional
        Volumes left out of the averages.
    trial_type : str, optional
        Only these rows of the events (default every row but cues).
    by_category : bool
        Average a category's blocks before identification (GOD's convention).
    groups : numpy.ndarray, optional
        Each candidate's group: adds ``semantic``, per ROI, from the correlation averaged over layers.
    lags_s : numpy.ndarray, optional
        Adds ``time_course`` (:func:`rtdecode.offline.timecourse.time_course`) from each trial's
        first row (its cue, for imagery) and each layer's peak.

    Returns
    -------
    dict
        ``identification`` and ``feature_correlation`` ``{roi: {layer: value}}`` (identification
        chance 0.5), and ``semantic``, ``time_course`` as asked.
    """
    sdir = Path(session_dir)
    seq, feats = read_results(results)
    onsets, duration, truth = block_truth(sdir / "events.tsv", bank, trial_type)
    tr = float(json.loads((sdir / "session.json").read_text())["tr_s"])
    true_feats = {}
    if (sdir / "stimulus_features.npz").exists():
        with np.load(sdir / "stimulus_features.npz", allow_pickle=False) as z:
            true_feats = {k.removeprefix("feat_"): z[k] for k in z.files}
    times = seq * tr
    if censored is not None:
        feats = {k: np.where(censored[:, None], np.nan, f) for k, f in feats.items()}
    ident = identification_table(feats, times, onsets, duration, hrf_shift_s, truth, bank, by_category)
    corr: dict[str, dict[str, float]] = {}
    for (roi, layer), f in feats.items():
        if layer in true_feats and len(true_feats[layer]) == len(onsets):
            avg, kept = block_average(f, times, onsets, duration, hrf_shift_s)
            if kept.size:
                corr.setdefault(roi, {})[layer] = mean_column_correlation(avg, true_feats[layer][kept])
    out: dict = {"identification": ident, "feature_correlation": corr, "n_candidates": len(bank.labels)}
    if groups is not None:
        out["semantic"] = {}
        for roi in sorted({r for r, _ in feats}):
            layers = {layer: f for (r, layer), f in feats.items() if r == roi}
            scores, kept = roi_block_scores(layers, times, onsets, duration, hrf_shift_s, bank)
            if kept.size:
                out["semantic"][roi] = superclass_rates(scores, truth[kept], groups)
    if lags_s is not None:
        out["time_course"] = trial_time_course(feats, tr, sdir / "events.tsv", bank, lags_s)
    return out


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
