"""``rtdecode report``: one self-contained HTML page about a recorded session, for the PI afterwards.

The page holds its plots as inline SVG and its images as data URIs (matplotlib, no pyplot
state), so it can be mailed or archived with the data and opened anywhere without a network.
Order, as fMRIPrep's and MRIQC's reports: a summary box, warnings, provenance, then the session's
counts, images of the data, motion, latency, identification with a per-block table, and the
decoder's settings as a table.
"""

from __future__ import annotations

import datetime
import html
import json
import logging
from pathlib import Path

import numpy as np

from rtdecode import __version__
from rtdecode.apps.report_plots import (
    Truth,
    block_table,
    html_table,
    identification_section,
    latency_section,
    motion_section,
    time_course_section,
    truth_from_blocks,
    truth_from_events,
)
from rtdecode.config import HRF_SHIFT_S
from rtdecode.errors import VolumeError
from rtdecode.io.nifti import read_events
from rtdecode.io.recording import Recording
from rtdecode.models.bank import CandidateBank
from rtdecode.offline.evaluate import training_labels, trial_time_course
from rtdecode.pipeline.latency import LatencyTracker
from rtdecode.volume import NOT_REACHED

log = logging.getLogger(__name__)

# Share of censored volumes above which the session's motion is flagged.
HIGH_MOTION_SHARE = 0.1


def truncation_warning(rec: Recording) -> str | None:
    """What a truncated recording still gives and what it lost, in a sentence; None if whole."""
    if rec.truncated is None:
        return None
    have, stored = rec.truncated
    lost = "; ".join(rec.lost[:8]) + (f"; and {len(rec.lost) - 8} more" if len(rec.lost) > 8 else "")
    return (
        f"the recording is truncated: {have} of {stored} bytes ({100 * have / stored:.0f} %) survive, "
        f"and this report shows what they hold. Not readable: {lost or 'nothing'}."
    )


def session_facts(rec: Recording, truth: Truth | None) -> dict:
    """The figures of the summary box and the warnings, from the recording alone."""
    gaps = [e for e in rec.events if e.get("event") == "gap"]
    fd = rec.fd_mm[1:] if rec.fd_mm is not None and rec.fd_mm.size > 1 else np.zeros(0)
    tracker = LatencyTracker()
    e2e = np.array([d["end_to_end"] for s in rec.stamps if (s != NOT_REACHED).sum() > 1
                    for d in [tracker.add(s)] if "end_to_end" in d])  # fmt: skip
    best = None
    if truth is not None:
        roi = "VC" if "VC" in truth.accuracy else next(iter(truth.accuracy))
        best = (roi, float(np.nanmean(list(truth.accuracy[roi].values()))))
    return {
        "volumes": int(rec.seq.size),
        "decoded": int((rec.status == "ok").sum()),
        "censored": int(rec.censored.sum()),
        "mean_fd": float(fd.mean()) if fd.size else None,
        "max_fd": float(fd.max()) if fd.size else None,
        "misses": int((e2e > 1000 * rec.tr_s).sum()) if rec.tr_s and e2e.size else None,
        "e2e": (float(np.percentile(e2e, 50)), float(np.percentile(e2e, 99))) if e2e.size else None,
        "identification": best,
        "gaps": len(gaps),
        "missing": sum(g["missing_to"] - g["missing_from"] + 1 for g in gaps),
        "skipped": sum(e.get("event") == "skipped" for e in rec.events),
        "ended": any(e.get("event") == "end" for e in rec.events),
        "truncated": truncation_warning(rec),
    }


def summary_section(f: dict) -> str:
    """The summary box: the figures a PI looks at first."""
    n = max(f["volumes"], 1)
    cells = [
        ("volumes", f"{f['volumes']} ({f['decoded']} decoded)"),
        ("censored", f"{f['censored']} ({100 * f['censored'] / n:.1f} %)"),
        ("FD mean / max", "–" if f["mean_fd"] is None else f"{f['mean_fd']:.3f} / {f['max_fd']:.2f} mm"),
        ("deadline misses", "–" if f["misses"] is None else str(f["misses"])),
        ("end to end p50 / p99", "–" if f["e2e"] is None else f"{f['e2e'][0]:.1f} / {f['e2e'][1]:.1f} ms"),
        (
            "identification",
            "categories shown unknown" if f["identification"] is None
            else f"{f['identification'][1]:.3f} ({f['identification'][0]}, mean over layers; chance 0.5)",
        ),
        ("gaps / skipped", f"{f['gaps']} ({f['missing']} volumes) / {f['skipped']}"),
    ]  # fmt: skip
    return (
        '<div class="summary">'
        + "".join(f"<div><span>{html.escape(k)}</span><b>{html.escape(v)}</b></div>" for k, v in cells)
        + "</div>"
    )


def warnings_section(f: dict) -> str:
    """What needs a look: gaps, skips, high motion, deadline misses, an early end."""
    items = [f["truncated"]] if f["truncated"] else []
    if f["gaps"]:
        items.append(f"{f['gaps']} gaps: {f['missing']} volumes never arrived.")
    if f["skipped"]:
        items.append(f"{f['skipped']} messages skipped (reasons under Session).")
    if f["volumes"] and f["censored"] > HIGH_MOTION_SHARE * f["volumes"]:
        items.append(f"high motion: {f['censored']} of {f['volumes']} volumes censored.")
    if f["misses"]:
        items.append(f"{f['misses']} volumes published later than one TR after acquisition.")
    if not f["ended"]:
        items.append("the end of the series was not recorded: the recording may have stopped early.")
    if not items:
        return '<p class="ok">None: no gap, skip, deadline miss or high motion.</p>'
    return '<ul class="warnings">' + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def provenance_section(rec: Recording) -> str:
    """Where the data came from: date, session and series, versions, command, bundle and its checksum."""
    ids = next(((e.get("session"), e.get("series")) for e in rec.events if e.get("series")), (None, None))
    bundle = rec.settings.get("bundle") or rec.meta.get("bundle") or ""
    decoder_json = Path(bundle) / "decoder.json"
    checksum = "–"
    if bundle and decoder_json.exists():
        meta = json.loads(decoder_json.read_text())
        checksum = next((f"{k}: {v[:16]}…" for k, v in meta.items() if k.endswith("_sha256")), "–")
    rows = [
        ["report made", datetime.datetime.now().astimezone().isoformat(timespec="seconds")],
        ["recording", f"{rec.path.resolve()} ({rec.path.stat().st_size / 1e6:.1f} MB)"],
        ["recorded", str(rec.meta.get("started", "–"))],
        ["session / series", f"{ids[0] or '–'} / {ids[1] or '–'}"],
        ["mode", f"{rec.meta.get('mode', '?')} ({rec.meta.get('address') or rec.meta.get('bold') or ''})"],
        ["command", str(rec.meta.get("command", "–"))],
        ["rtdecode", f"{rec.meta.get('rtdecode_version', '?')} (recorded), {__version__} (this report)"],
        ["decoder bundle", (bundle or "–") + ("" if not bundle or decoder_json.exists() else " (not found)")],
        ["bundle checksum", checksum],
    ]
    return html_table(["", ""], [[html.escape(k), html.escape(v)] for k, v in rows], "facts")


def settings_section(rec: Recording) -> str:
    """The decoder's settings as a table of dotted keys."""
    rows: list[list[str]] = []

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            rows.append([f"<code>{html.escape(prefix)}</code>", html.escape(json.dumps(value))])

    walk("", {"run": rec.settings} if rec.settings else {})
    return html_table(["setting", "value"], rows) if rows else "<p>No settings were recorded.</p>"


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
    text = html_table(["", ""], rows, "facts")
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
svg { max-width: 100%; height: auto; } img.data { max-width: 100%; }
.summary { display: grid; grid-template-columns: repeat(4, 1fr); gap: 0.5em; }
.summary div { background: #f4f5f7; border-radius: 5px; padding: 0.4em 0.6em; }
.summary span { display: block; color: #667; font-size: 0.85em; } .summary b { font-size: 1.1em; }
ul.warnings li { color: #b3261e; } .ok { color: #2e7d32; } tr.hit td { background: #eaf6ec; }
"""


def build_report(
    recording: str | Path,
    events_tsv: str | Path | None = None,
    candidates: str | Path | None = None,
    hrf_shift_s: float = HRF_SHIFT_S,
    extra: list[tuple[str, str]] = (),
    bold: str | Path | None = None,
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
    bold : str or Path, optional
        The series as 4-D NIfTI, for the data images when the recording holds no input volumes.
    """
    from rtdecode.apps.report_data import data_section, quality_section

    rec = Recording.load(recording)
    if warning := truncation_warning(rec):
        log.warning("%s: %s", rec.path, warning)
    truth, course, bank, why = None, None, None, None
    if events_tsv is not None and not rec.features and rec.truncated:
        why = "No predicted features survive in this truncated recording (see Warnings)."
    elif events_tsv is not None:
        if candidates is None:
            bundle = rec.settings.get("bundle") or rec.meta.get("bundle")
            if not bundle:
                raise VolumeError(f"{rec.path}: no settings recorded; name the candidates with --candidates")
            candidates = rec.settings.get("candidates") or Path(bundle) / "candidates.npz"
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
    facts = session_facts(rec, truth)
    identification = identification_section(truth, why) + block_table(rec, events_tsv, bank, hrf_shift_s)
    sections = [
        ("Summary", summary_section(facts)),
        ("Warnings", warnings_section(facts)),
        ("Provenance", provenance_section(rec)),
        ("Session", counts_section(rec)),
        ("Data", data_section(rec, bold)),
        ("Motion", motion_section(rec)),
        ("Quality", quality_section(rec)),
        ("Latency", latency_section(rec)),
        ("Identification", identification),
        *([("Time course", time_course_section(course))] if course else []),
        *extra,
        ("Settings", settings_section(rec)),
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
    bold: str | Path | None = None,
) -> Path:
    """Write :func:`build_report` to ``out`` (default: beside the recording), with a gallery."""
    from rtdecode.apps.report_gallery import gallery_section

    extra = [("Reconstructions", gallery_section(reconstructions, stimuli))] if reconstructions else []
    out = Path(out) if out else Path(recording).with_suffix(".html")
    html_text = build_report(recording, events_tsv, candidates, hrf_shift_s, extra, bold)
    out.write_text(html_text, encoding="utf-8")
    return out
