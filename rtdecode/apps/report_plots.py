"""The report's figures and tables: motion, latency, identification (from blocks or events), time course.

Each ``*_section`` returns HTML with its plots as inline SVG (matplotlib, no pyplot state).
"""

from __future__ import annotations

import html
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from rtdecode.errors import VolumeError
from rtdecode.io.recording import Recording
from rtdecode.models.bank import CandidateBank
from rtdecode.numerics.stats import correlations
from rtdecode.offline.evaluate import block_top_k, block_truth, identification_table
from rtdecode.pipeline.latency import LatencyTracker
from rtdecode.volume import NOT_REACHED

_MOTION = ("tx", "ty", "tz", "rx", "ry", "rz")
# ROIs in the order of the visual hierarchy (others follow, alphabetically).
ROI_ORDER = ("V1", "V2", "V3", "V4", "LOC", "FFA", "PPA", "LVC", "HVC", "VC")


def roi_order(rois) -> list[str]:
    """ROI names from V1 up to VC, then any others alphabetically."""
    return sorted(rois, key=lambda r: (ROI_ORDER.index(r) if r in ROI_ORDER else len(ROI_ORDER), r))


def svg(fig: Figure) -> str:
    """A figure as inline SVG."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    return text[text.index("<svg") :]  # drop the XML prolog and DOCTYPE: the SVG goes inline


def html_table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    """An HTML table; header cells are escaped here, body cells must be already."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def motion_section(rec: Recording) -> str:
    """Six motion parameters and FD over time, with the censoring threshold."""
    if rec.motion is None or rec.fd_mm is None:
        return "<p>No motion was recorded (motion correction off).</p>"
    n = min(len(rec.seq), len(rec.motion))
    t, m, fd = rec.times_s[:n], rec.motion[:n], rec.fd_mm[:n]
    threshold = rec.fd_threshold_mm
    fig = Figure(figsize=(9, 6.2))
    ax1, ax2, ax3 = fig.subplots(3, 1, sharex=True)
    for i in range(3):
        ax1.plot(t, m[:, i], lw=1, label=_MOTION[i])
        ax2.plot(t, m[:, 3 + i], lw=1, label=_MOTION[3 + i])
    ax1.set_ylabel("translation (mm)")
    ax2.set_ylabel("rotation (°)")
    ax3.plot(t, fd, lw=1, color="k", label="FD")
    cens = rec.censored[:n]
    if cens.any():
        ax3.plot(t[cens], fd[cens], "o", color="tab:red", ms=3, label="censored")
    if threshold:
        ax3.axhline(threshold, color="tab:red", ls="--", lw=1, label=f"threshold {threshold:g} mm")
    ax3.set_ylabel("FD (mm)")
    ax3.set_xlabel("scan time (s)" if rec.tr_s else "volume")
    for ax in (ax1, ax2, ax3):
        ax.legend(loc="upper left", fontsize=8, ncol=4)
        ax.grid(alpha=0.3)
    rows = [
        ["max |translation|", f"{np.nanmax(np.abs(m[:, :3])):.2f} mm"],
        ["max |rotation|", f"{np.nanmax(np.abs(m[:, 3:])):.2f}°"],
        ["mean FD", f"{np.nanmean(fd[1:]) if n > 1 else 0.0:.3f} mm"],
        [
            "volumes censored",
            f"{int(cens.sum())} of {n}" + (f" (FD > {threshold:g} mm)" if threshold else ""),
        ],
    ]
    return svg(fig) + html_table(["", ""], rows, "facts")


EXPORT = "acquired->file_complete"  # the scanner's reconstruction and export, before rtdecode


def _latency_table(summary: dict[str, dict[str, float]], keys: list[str], names: dict[str, str]) -> str:
    return html_table(
        ["interval (ms)", "p50", "p95", "p99", "max", "n"],
        [
            [html.escape(names.get(k, k.replace("->", " → ")))]
            + [f"{summary[k][q]:.2f}" for q in ("p50", "p95", "p99", "max")]
            + [str(int(summary[k]["n"]))]
            for k in keys
        ],
        "num",
    )


def latency_section(rec: Recording) -> str:
    """The scanner's export delay, then rtdecode's stages: histograms, percentiles, deadline misses."""
    tracker = LatencyTracker()
    rows = [k for k, s in enumerate(rec.stamps) if (s != NOT_REACHED).sum() > 1]
    if not rows:
        return "<p>No latency stamps were recorded.</p>"
    per_volume = [tracker.add(rec.stamps[k]) for k in rows]
    summary = tracker.summary()
    keys = list(summary)
    fig = Figure(figsize=(9, 0.45 * len(keys) + 1.0))
    ax = fig.subplots()
    values = [np.array([d[k] for d in per_volume if k in d]) for k in keys]
    parts = ax.boxplot(
        values, orientation="horizontal", whis=(5, 95), showfliers=False, patch_artist=True, widths=0.6
    )
    colours = {EXPORT: "tab:orange", "end_to_end": "0.35"}
    for box, key in zip(parts["boxes"], keys):
        box.set_facecolor(colours.get(key, "tab:blue"))
        box.set_alpha(0.6)
    for i, v in enumerate(values, start=1):  # the worst volume of each stage, as a tick
        if v.size:
            ax.plot(v.max(), i, "|", color="tab:red", ms=8)
    names = ["scanner → file complete" if k == EXPORT else k.replace("->", " → ") for k in keys]
    ax.set_yticks(range(1, len(keys) + 1), names, fontsize=8)
    ax.set_xscale("log")
    ax.invert_yaxis()
    if rec.tr_s:
        ax.axvline(1000 * rec.tr_s, color="0.5", ls="--", lw=1, label=f"deadline (TR {rec.tr_s:g} s)")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xlabel("ms per volume (log scale); box: quartiles, whiskers: 5th–95th percentile, red: max")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    names = {"rtdecode": "rtdecode (file complete → published)", "end_to_end": "end to end (whole loop)"}
    text = ""
    if EXPORT in summary:
        sources = sorted({str(rec.acquired_from[k]) for k in rows} - {""})
        text += (
            "<h3>Before rtdecode: scanner → file complete</h3><p>The scanner's reconstruction and "
            f"export, from the acquisition ({html.escape(', '.join(sources) or 'unknown source')}) to the "
            "moment the bridge had the whole file or last slice. An estimated clock offset takes the "
            "fastest of the first volumes as instant transfer: those delays are lower bounds.</p>"
            + _latency_table(summary, [EXPORT], {EXPORT: "scanner → file complete"})
            + "<h3>rtdecode's own stages</h3>"
        )
    if rec.tr_s and "end_to_end" in summary:
        e2e = np.array([d["end_to_end"] for d in per_volume if "end_to_end" in d])
        miss = int((e2e > 1000 * rec.tr_s).sum())
        text += (
            f"<p>Deadline (TR {rec.tr_s:g} s): {miss} of {e2e.size} volumes published later than "
            "one TR after acquisition.</p>"
        )
    return text + svg(fig) + _latency_table(summary, [k for k in keys if k != EXPORT], names)


@dataclass
class Truth:
    """Which category was shown when, and how the decoder ranked it."""

    source: str
    accuracy: dict[str, dict[str, float]]  # roi -> layer -> pairwise identification accuracy
    rank_times: np.ndarray  # scan time of each rank point
    ranks: dict[str, np.ndarray]  # series name -> rank of the shown category at rank_times
    n_candidates: int


def truth_from_blocks(rec: Recording) -> Truth | None:
    """The decoder's own block results (stimulus markers): label ranks per ROI × layer."""
    n = int(rec.settings.get("n_candidates", 0))
    blocks = [b for b in rec.blocks if b.get("label_rank") is not None]
    if not blocks or n < 2:
        return None
    rois, layers = blocks[0]["rois"], blocks[0]["layers"]
    ranks = np.array([b["label_rank"] for b in blocks], dtype=float)  # (blocks, rois, layers)
    acc = 1 - (ranks - 1) / (n - 1)
    accuracy = {
        r: {lay: float(acc[:, i, j].mean()) for j, lay in enumerate(layers)} for i, r in enumerate(rois)
    }
    roi = "VC" if "VC" in rois else rois[-1]
    i = rois.index(roi)
    return Truth(
        source=f"the decoder's block results ({len(blocks)} blocks marked by stimulus markers)",
        accuracy=accuracy,
        rank_times=np.array([b["onset_s"] for b in blocks], dtype=float),
        ranks={f"{roi}/{lay}": ranks[:, i, j] for j, lay in enumerate(layers)},
        n_candidates=n,
    )


def truth_from_events(
    rec: Recording, events_tsv: str | Path, bank: CandidateBank, hrf_shift_s: float
) -> Truth:
    """Identification from the recorded predictions and an events table, against ``bank``.

    Block accuracy per ROI × layer as GOD computes it, and for one ROI the rank of the shown
    category per volume (correlation averaged over layers) inside each block's shifted window.
    """
    if not rec.features:
        raise VolumeError(f"{rec.path}: no predicted features recorded")
    onsets, duration, truth = block_truth(events_tsv, bank)
    feats = {k: np.where(rec.censored[: len(f), None], np.nan, f) for k, f in rec.features.items()}
    times = rec.times_s
    accuracy = identification_table(feats, times, onsets, duration, hrf_shift_s, truth, bank)
    rois = sorted({r for r, _ in feats})
    roi = "VC" if "VC" in rois else rois[-1]
    layers = [lay for r, lay in feats if r == roi]
    block_of = np.full(times.size, -1)
    for b, onset in enumerate(onsets):
        block_of[(times >= onset + hrf_shift_s) & (times < onset + duration + hrf_shift_s)] = b
    valid = (block_of >= 0) & np.isfinite(feats[(roi, layers[0])][:, 0])
    scores = sum(correlations(feats[(roi, lay)][valid], bank.features[lay]) for lay in layers) / len(layers)
    true_scores = scores[np.arange(scores.shape[0]), truth[block_of[valid]]]
    ranks = 1 + (scores > true_scores[:, None]).sum(axis=1)
    return Truth(
        source=f"{events_tsv} ({len(onsets)} blocks) against {len(bank.labels)} candidates",
        accuracy=accuracy,
        rank_times=times[valid],
        ranks={f"{roi}, mean over layers (per volume)": ranks.astype(float)},
        n_candidates=len(bank.labels),
    )


def identification_section(truth: Truth | None, why: str | None = None) -> str:
    """Accuracy table per ROI × layer and the rank of the shown category over time.

    Without ``truth``, ``why`` says what is missing (default: the categories shown).
    """
    if truth is None:
        return (
            f"<p>{why}</p>"
            if why
            else (
                "<p>The categories shown are not known to this report: record a session with stimulus "
                "markers (block results), or pass <code>--events events.tsv</code>.</p>"
            )
        )
    layers = list(next(iter(truth.accuracy.values())))

    def cell(v: float) -> str:
        shade = int(255 - 150 * max(0.0, min(1.0, (v - 0.5) / 0.5))) if np.isfinite(v) else 255
        return f'<span style="background:rgb({shade},255,{shade})">{v:.3f}</span>'

    rows = [
        [html.escape(roi)]
        + [cell(acc.get(lay, float("nan"))) for lay in layers]
        + [f"{np.nanmean(list(acc.values())):.3f}"]
        for roi, acc in ((r, truth.accuracy[r]) for r in roi_order(truth.accuracy))
    ]
    table = html_table(["ROI"] + layers + ["mean"], rows, "num")
    fig = Figure(figsize=(9, 3.2))
    ax = fig.subplots()
    for name, r in truth.ranks.items():
        style = "o-" if len(truth.ranks) > 1 else "."
        ax.plot(truth.rank_times, r, style, ms=3, lw=0.8, label=name)
    ax.set_yscale("log")
    ax.invert_yaxis()
    ax.axhline((truth.n_candidates + 1) / 2, color="grey", ls="--", lw=1, label="chance (median rank)")
    ax.set_ylabel(f"rank of shown category (of {truth.n_candidates})")
    ax.set_xlabel("scan time (s)")
    ax.legend(fontsize=7, ncol=3, loc="lower right")
    ax.grid(alpha=0.3)
    return (
        f"<p>Labels from {html.escape(truth.source)}. Pairwise identification accuracy (chance 0.5):</p>"
        + table
        + svg(fig)
    )


def time_course_section(course: dict, roi: str = "VC") -> str:
    """Identification per TR from each trial's cue, one line per layer, peaks marked (imagery)."""
    lags, layers = np.asarray(course["lags_s"]), course["rois"][roi]
    fig = Figure(figsize=(9, 3.2))
    ax = fig.subplots()
    for layer, v in layers.items():
        line = ax.plot(lags, v["identification"], "o-", ms=3, lw=1, label=layer)[0]
        ax.axvline(course["peak_s"][roi][layer], color=line.get_color(), lw=0.6, ls=":")
    ax.axhline(0.5, color="grey", ls="--", lw=1, label="chance")
    ax.set_xlabel("time from the trial's cue (s)")
    ax.set_ylabel(f"pairwise identification ({roi})")
    ax.legend(fontsize=7, ncol=5, loc="upper left")
    ax.grid(alpha=0.3)
    peaks = ", ".join(f"{ly} {t:.1f} s" for ly, t in course["peak_s"][roi].items())
    return f"<p>Each layer's peak (dotted; centre of its above-chance accuracy): {peaks}.</p>" + svg(fig)


def block_table(
    rec: Recording, events_tsv: str | Path | None, bank: CandidateBank | None, hrf_shift_s: float, k: int = 5
) -> str:
    """Each block: the category shown against the top ``k``.

    For VC (or the highest ROI): the top layer of the decoder's block results, or, with an events
    table, the correlation averaged over layers.
    """
    rows = []
    if events_tsv is not None and bank is not None and rec.features:
        onsets, duration, truth = block_truth(events_tsv, bank)
        rois = roi_order({r for r, _ in rec.features})
        roi = "VC" if "VC" in rois else rois[-1]
        feats = {ly: np.where(rec.censored[: len(f), None], np.nan, f) for (r, ly), f in rec.features.items()
                 if r == roi}  # fmt: skip
        idx, _, kept = block_top_k(feats, rec.times_s, onsets, duration, hrf_shift_s, bank, k)
        how = f"{roi}, correlation averaged over layers, against {len(bank.labels)} candidates"
        for b, row in zip(kept, idx):
            shown = bank.labels[truth[b]]
            rows.append((int(b), shown, [bank.labels[i] for i in row], None))
    else:
        blocks = [b for b in rec.blocks if b.get("labels")]
        if not blocks:
            return ""
        rois = blocks[0]["rois"]
        roi = "VC" if "VC" in rois else roi_order(rois)[-1]
        i, layer = rois.index(roi), blocks[0]["layers"][-1]
        how = f"{roi}/{layer}, the decoder's block results"
        for b in blocks:
            rank = b["label_rank"][i][-1] if b.get("label_rank") is not None else None
            rows.append((b["block"], b.get("label") or "", b["labels"][i][-1][:k], rank))
    body = "".join(
        f'<tr class="{"hit" if shown in top else ""}"><td>{b}</td><td>{html.escape(shown)}</td>'
        f"<td>{', '.join(html.escape(t) for t in top)}</td><td>{'–' if rank is None else rank}</td></tr>"
        for b, shown, top, rank in rows
    )
    hits = sum(shown in top for _, shown, top, _ in rows)
    return (
        f"<h3>Per block: shown against the top {k}</h3><p>{html.escape(how)}; the shown category is in "
        f"the top {k} in {hits} of {len(rows)} blocks (highlighted).</p>"
        f"<table><thead><tr><th>block</th><th>shown</th><th>top {k}</th><th>rank of shown</th></tr>"
        f"</thead><tbody>{body}</tbody></table>"
    )
