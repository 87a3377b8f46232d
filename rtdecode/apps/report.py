"""``rtdecode report``: one self-contained HTML page about a recorded session.

The page holds its plots as inline SVG (matplotlib, no pyplot state), so it can be mailed or
archived with the data and opened anywhere without a network. Sections: counts, motion and
framewise displacement, latency per stage, identification per ROI × layer and the rank of the
shown category over time (when the categories shown are known, from the decoder's block results
or from an events table), and the decoder's settings.
"""

from __future__ import annotations

import html
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from rtdecode.config import HRF_SHIFT_S
from rtdecode.errors import VolumeError
from rtdecode.io.nifti import read_events
from rtdecode.io.recording import Recording
from rtdecode.models.bank import CandidateBank
from rtdecode.numerics.stats import correlations
from rtdecode.offline.evaluate import block_truth, identification_table, training_labels, trial_time_course
from rtdecode.pipeline.latency import LatencyTracker
from rtdecode.volume import NOT_REACHED

_MOTION = ("tx", "ty", "tz", "rx", "ry", "rz")


def _svg(fig: Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    return text[text.index("<svg") :]  # drop the XML prolog and DOCTYPE: the SVG goes inline


def _table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
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
    return _svg(fig) + _table(["", ""], rows, "facts")


EXPORT = "acquired->file_complete"  # the scanner's reconstruction and export, before rtdecode


def _latency_table(summary: dict[str, dict[str, float]], keys: list[str], names: dict[str, str]) -> str:
    return _table(
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
    cols = 3
    fig = Figure(figsize=(9, 2.2 * -(-len(keys) // cols)))
    axes = fig.subplots(-(-len(keys) // cols), cols, squeeze=False).ravel()
    colours = {EXPORT: "tab:orange", "end_to_end": "k"}
    for ax, key in zip(axes, keys):
        values = np.array([d[key] for d in per_volume if key in d])
        ax.hist(values, bins=40, color=colours.get(key, "tab:blue"))
        ax.set_title("scanner → file complete" if key == EXPORT else key.replace("->", " → "), fontsize=9)
        ax.set_xlabel("ms", fontsize=8)
        ax.tick_params(labelsize=8)
    for ax in axes[len(keys) :]:
        ax.set_visible(False)
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
    return text + _svg(fig) + _latency_table(summary, [k for k in keys if k != EXPORT], names)


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


def identification_section(truth: Truth | None) -> str:
    """Accuracy table per ROI × layer and the rank of the shown category over time."""
    if truth is None:
        return (
            "<p>The categories shown are not known to this report: record a session with stimulus "
            "markers (block results), or pass <code>--events events.tsv</code>.</p>"
        )
    layers = list(next(iter(truth.accuracy.values())))

    def cell(v: float) -> str:
        shade = int(255 - 150 * max(0.0, min(1.0, (v - 0.5) / 0.5))) if np.isfinite(v) else 255
        return f'<span style="background:rgb({shade},255,{shade})">{v:.3f}</span>'

    rows = [
        [html.escape(roi)]
        + [cell(acc.get(lay, float("nan"))) for lay in layers]
        + [f"{np.nanmean(list(acc.values())):.3f}"]
        for roi, acc in truth.accuracy.items()
    ]
    table = _table(["ROI"] + layers + ["mean"], rows, "num")
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
        + _svg(fig)
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
    return f"<p>Each layer's peak (dotted; centre of its above-chance accuracy): {peaks}.</p>" + _svg(fig)


def counts_section(rec: Recording) -> str:
    """Volumes, skips, gaps and how the session ended."""
    ev = [e.get("event") for e in rec.events]
    gaps = [e for e in rec.events if e.get("event") == "gap"]
    end = next((e for e in reversed(rec.events) if e.get("event") == "end"), None)
    rows = [
        ["recording", html.escape(str(rec.path.name))],
        ["mode", html.escape(str(rec.meta.get("mode", "?")))],
        [
            "volumes recorded",
            f"{rec.seq.size} (index {int(rec.seq.min())}–{int(rec.seq.max())})" if rec.seq.size else "0",
        ],
        [
            "decoded / baseline",
            f"{int((rec.status == 'ok').sum())} / {int((rec.status == 'baseline').sum())}",
        ],
        ["censored", str(int(rec.censored.sum()))],
        ["skipped messages", str(ev.count("skipped"))],
        [
            "gaps (missing volumes)",
            f"{len(gaps)} ({sum(g['missing_to'] - g['missing_from'] + 1 for g in gaps)})",
        ],
        ["TR", f"{rec.tr_s:g} s" if rec.tr_s else "unknown"],
        ["end of series", "received" if end else "not received (the recording stopped early?)"],
    ]
    skipped = [html.escape(e.get("reason", "")) for e in rec.events if e.get("event") == "skipped"]
    text = _table(["", ""], rows, "facts")
    if skipped:
        text += (
            "<details><summary>skip reasons</summary><ul>"
            + "".join(f"<li>{r}</li>" for r in skipped)
            + "</ul></details>"
        )
    return text


_STYLE = """
body { font: 14px system-ui, sans-serif; max-width: 980px; margin: 1em auto; color: #1d2430; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccd; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; }
th, td { padding: 0.15em 0.7em; text-align: left; border-bottom: 1px solid #eef; }
table.num td { text-align: right; font-variant-numeric: tabular-nums; }
table.num td:first-child { text-align: left; }
pre { background: #f4f5f7; padding: 0.6em; overflow-x: auto; font-size: 12px; }
svg { max-width: 100%; height: auto; }
"""


def build_report(
    recording: str | Path,
    events_tsv: str | Path | None = None,
    candidates: str | Path | None = None,
    hrf_shift_s: float = HRF_SHIFT_S,
    extra: list[tuple[str, str]] = (),
) -> str:
    """The report as one HTML string.

    Parameters
    ----------
    recording : str or Path
        HDF5 recording (``rtdecode record`` or ``rtdecode offline``).
    events_tsv : str or Path, optional
        Events with ``onset``, ``duration``, ``category_label``: identification is then computed
        from the recorded predictions. Without it, the decoder's block results (stimulus
        markers) are used when the recording has them.
    candidates : str or Path, optional
        Candidate bank for ``events_tsv``; default the one named in the recorded settings.
    hrf_shift_s : float
        Hemodynamic delay for ``events_tsv`` blocks.
    extra : list of (str, str)
        Further sections (title, HTML) before the settings.
    """
    rec = Recording.load(recording)
    truth, course = None, None
    if events_tsv is not None:
        if candidates is None:
            s = rec.settings
            if not s.get("bundle"):
                raise VolumeError(f"{rec.path}: no settings recorded; name the candidates with --candidates")
            candidates = s.get("candidates") or Path(s["bundle"]) / "candidates.npz"
        if not Path(candidates).exists():
            raise VolumeError(f"candidate bank {str(candidates)!r} does not exist; name it with --candidates")
        bank = CandidateBank.load(candidates)
        session = Path(events_tsv).parent
        if (session / "session.json").exists():  # GOD: trained categories are not candidates
            bank = bank.without(training_labels(session))
        truth = truth_from_events(rec, events_tsv, bank, hrf_shift_s)
        if rec.tr_s and any(e.get("trial_type") == "imagery" for e in read_events(events_tsv)):
            lags = np.arange(-3.0, 24.0 + 1e-9, rec.tr_s)
            course = trial_time_course(rec.features, rec.tr_s, events_tsv, bank, lags)
    else:
        truth = truth_from_blocks(rec)
    settings = html.escape(json.dumps({"recording": rec.meta, "run": rec.settings}, indent=1))
    settings = f"<pre>{settings}</pre>" if rec.settings or rec.meta else "<p>No settings were recorded.</p>"
    sections = [
        ("Session", counts_section(rec)),
        ("Motion", motion_section(rec)),
        ("Latency", latency_section(rec)),
        ("Identification", identification_section(truth)),
        *([("Time course", time_course_section(course))] if course else []),
        *extra,
        ("Settings", settings),
    ]
    body = "".join(
        f'<section id="{title.lower().replace(" ", "-")}"><h2>{title}</h2>{content}</section>'
        for title, content in sections
    )
    title = f"rtdecode report: {html.escape(rec.path.name)}"
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">'
        f"<title>{title}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{title}</h1>{body}</body></html>\n"
    )


def write_report(
    recording: str | Path,
    out: str | Path | None = None,
    events_tsv: str | Path | None = None,
    candidates: str | Path | None = None,
    hrf_shift_s: float = HRF_SHIFT_S,
    reconstructions: str | Path | None = None,
    stimuli: str | Path | None = None,
) -> Path:
    """Write :func:`build_report` to ``out`` (default: beside the recording), with a gallery."""
    from rtdecode.apps.report_gallery import gallery_section

    extra = [("Reconstructions", gallery_section(reconstructions, stimuli))] if reconstructions else []
    out = Path(out) if out else Path(recording).with_suffix(".html")
    out.write_text(build_report(recording, events_tsv, candidates, hrf_shift_s, extra), encoding="utf-8")
    return out
