"""`rtdecode report`: one self-contained HTML page from a recording; progress bars on long work."""

import html
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import yaml
from helpers import small_config

from rtdecode.apps.report import Recording, build_report, truth_from_events
from rtdecode.config import to_dict
from rtdecode.errors import RecordingError
from rtdecode.io.nifti import read_events
from rtdecode.models.bank import CandidateBank

RTDECODE = [sys.executable, "-m", "rtdecode"]


@pytest.fixture(scope="module")
def offline_run(experiment, tmp_path_factory):
    """`rtdecode offline` over the test session, with progress bars forced on; (recording, stderr)."""
    tmp = tmp_path_factory.mktemp("report")
    cfg = small_config()
    cfg.run.bundle = str(experiment / "decoder")
    cfg_path = tmp / "run.yaml"
    cfg_path.write_text(yaml.safe_dump({"run": to_dict(cfg)["run"]}))
    out = tmp / "offline.h5"
    proc = subprocess.run(
        [*RTDECODE, "offline", "-c", str(cfg_path), "--bold", str(experiment / "test" / "bold.nii"), "--out",
         str(out)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "RTDECODE_PROGRESS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out, proc.stderr


def test_offline_runs_show_a_progress_bar_when_asked(offline_run):
    recording, stderr = offline_run
    with h5py.File(recording) as f:
        n = f["volumes/seq"].shape[0]
    assert "decoding offline" in stderr and f"{n}/{n}" in stderr
    # Without a terminal and without RTDECODE_PROGRESS the bars stay out of logs.
    proc = subprocess.run(
        [*RTDECODE, "report", str(recording), "-o", os.devnull], capture_output=True, text=True
    )
    assert proc.returncode == 0 and proc.stderr == ""


def test_report_from_the_cli_holds_every_section_and_the_settings(experiment, offline_run, tmp_path):
    recording, _ = offline_run
    out = tmp_path / "session.html"
    proc = subprocess.run(
        [*RTDECODE, "report", str(recording), "-o", str(out), "--events",
         str(experiment / "test" / "events.tsv")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    page = out.read_text()
    sections = ("summary", "warnings", "provenance", "session", "data", "motion", "quality", "latency")
    for section in (*sections, "identification", "settings"):
        assert f'<section id="{section}">' in page
    # Self-contained: nothing is loaded from elsewhere. The data: the bundle's reference image only
    # (the recording holds no volumes and no --bold was given), which the page says.
    assert page.count("<svg") == 5 and "src=" not in page and 'href="http' not in page
    # Quality: the last volume's tSNR per ROI as recorded, in visual-hierarchy order.
    rec = Recording.load(recording)
    tsnr = dict(zip(rec.qa_rois, rec.qa["tsnr"][-1]))
    assert (
        "tSNR at the end (median over ROI)</td><td>"
        + ", ".join(f"{r} {tsnr[r]:.1f}" for r in ("V1", "LOC", "LVC", "HVC", "VC"))
        in page
    )
    assert "No time series" in page and "Per block: shown against the top 5" in page
    assert str(recording.resolve()) in page  # provenance: where the data is
    assert "rank of shown category" in page and "threshold 0.5 mm" in page
    assert html.escape(json.dumps(str(experiment / "decoder"))) in page  # the bundle, among the settings


def test_per_volume_rank_of_the_shown_category_matches_a_plain_numpy_computation(experiment, offline_run):
    recording, _ = offline_run
    rec = Recording.load(recording)
    bank = CandidateBank.load(experiment / "decoder" / "candidates.npz")
    events = experiment / "test" / "events.tsv"
    truth = truth_from_events(rec, events, bank, 6.0)
    ((name, ranks),) = truth.ranks.items()
    assert name.startswith("VC")
    # Independently: Pearson r by numpy.corrcoef for every candidate, per volume, mean over layers.
    rows = read_events(events)
    onsets = np.array([float(e["onset"]) for e in rows])
    duration = float(rows[0]["duration"])
    expected, times = [], rec.seq * rec.tr_s
    layers = [lay for roi, lay in rec.features if roi == "VC"]
    for i, t in enumerate(times):
        inside = np.flatnonzero((t >= onsets + 6.0) & (t < onsets + duration + 6.0))
        if not inside.size or rec.censored[i] or not np.isfinite(rec.features[("VC", layers[0])][i, 0]):
            continue
        true = bank.labels.index(rows[inside[0]]["category_label"])
        score = 0.0
        for lay in layers:
            pred = rec.features[("VC", lay)][i].astype(float)
            score = score + np.array([np.corrcoef(pred, c)[0, 1] for c in bank.features[lay]])
        expected.append(1 + int((score > score[true] + 1e-9).sum()))
    assert len(expected) == ranks.size > 30
    assert np.mean(np.abs(np.array(expected) - ranks) <= 1) == 1.0  # float32 ties aside
    assert np.median(ranks) < len(bank.labels) / 4  # the shown category ranks high
    vc = truth.accuracy["VC"]
    assert 0.7 < np.mean(list(vc.values())) <= 1.0


def test_a_file_that_is_not_a_recording_gets_a_clear_error(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("not HDF5")
    with pytest.raises(RecordingError, match="not an HDF5 file"):
        build_report(text)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(RecordingError, match="not an rtdecode recording"):
        build_report(tmp_path / "other.h5")
    proc = subprocess.run([*RTDECODE, "report", str(tmp_path / "missing.h5")], capture_output=True, text=True)
    assert proc.returncode == 2 and "missing.h5: no such recording" in proc.stderr


def test_a_recording_cut_at_half_gives_a_partial_report_with_a_warning(experiment, offline_run, tmp_path):
    recording, _ = offline_run
    cut, out = tmp_path / "cut.h5", tmp_path / "cut.html"
    data = recording.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    proc = subprocess.run(
        [*RTDECODE, "report", str(cut), "-o", str(out), "--events", str(experiment / "test" / "events.tsv")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    warning = f"the recording is truncated: {len(data) // 2} of {len(data)} bytes (50 %) survive"
    assert warning in proc.stderr
    page = out.read_text()
    warnings = page[page.index('id="warnings"') : page.index('id="provenance"')]
    assert warning in warnings and "Not readable: " in warnings
    part, whole = Recording.load(cut), Recording.load(recording)
    summary = page[page.index('id="summary"') : page.index('id="warnings"')]
    assert f"<b>{part.seq.size} (" in summary and part.seq.size > 0
    assert len(part.features) < len(whole.features) or part.seq.size < whole.seq.size
