"""The demo end to end, as a user runs it: one command, separate processes, a summary."""

import json
import subprocess
import sys


def test_demo_decodes_unseen_categories_and_reports_latency(tmp_path):
    summary = tmp_path / "summary.json"
    proc = subprocess.run(
        [sys.executable, "-m", "rtdecode", "demo", "--out", str(tmp_path / "out"), "--summary", str(summary)],
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
