"""The demo end to end, as a user runs it: one command, separate processes, a summary."""

import json
import subprocess
import sys

import pytest


@pytest.mark.parametrize("transport", ["zmq", "lsl"])
def test_demo_decodes_unseen_categories_and_reports_latency(tmp_path, transport):
    summary = tmp_path / "summary.json"
    out = str(tmp_path / "out")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rtdecode",
            "demo",
            "--out",
            out,
            "--summary",
            str(summary),
            "--transport",
            transport,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads(summary.read_text())
    assert s["identification_accuracy"]["mean"] >= 0.8, s["identification_accuracy"]
    assert set(s["identification_accuracy"]["per_layer"]) == {f"cnn{i}" for i in range(1, 9)}
    v = s["volumes"]
    assert v["sent"] == v["processed"] == v["received_by_subscriber"] > 0 and v["skipped"] == 0
    e2e = s["latency_ms"]["end_to_end"]
    assert 0 < e2e["p50"] <= e2e["p95"] <= e2e["p99"] <= e2e["max"]
    assert "end_to_end" in proc.stdout and "pairwise identification accuracy" in proc.stdout
    if transport == "lsl":
        # The decoder's own block results from the LSL markers agree with the offline evaluation.
        lb = s["live_blocks"]
        assert lb["labels_match_events"] and lb["n_blocks"] == lb["n_events"] == 50
        assert abs(lb["pairwise_identification"] - s["identification_accuracy"]["mean"]) < 0.02
        assert "acquired->received is the LSL hop" in proc.stdout
        assert s["latency_ms"]["acquired->received"]["p50"] > 0
