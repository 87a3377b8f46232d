"""The demo end to end, as a user runs it: one command, separate processes, a summary and a report."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import ARTIFACTS, open_page, page_errors

from rtdecode.apps.report import Recording, truth_from_blocks
from rtdecode.io.nifti import read_events
from rtdecode.numerics.intdot import selected

_DEMO_OUT: dict[str, Path] = {}  # each transport's demo folder, once it has run


@pytest.fixture(scope="module", params=["zmq", "lsl"])
def demo(request, tmp_path_factory):
    """Run ``rtdecode demo`` once per transport (with the imagery run over ZeroMQ); its process
    result, summary and output folder. The LSL run starts from a copy of the ZeroMQ run's sessions
    and decoders (``--reuse``), which the ZeroMQ run made from scratch."""
    transport, tmp = request.param, tmp_path_factory.mktemp(f"demo-{request.param}")
    summary, cfg, out = tmp / "summary.json", tmp / "demo.yaml", tmp / "out"
    cfg.write_text(yaml.safe_dump({"demo": {"speed": 40.0}}))  # the built-in settings, streamed 2x faster
    reused = transport == "lsl" and "zmq" in _DEMO_OUT
    if reused:
        for name in ("train", "test", "decoder"):
            shutil.copytree(_DEMO_OUT["zmq"] / name, out / name)
        shutil.copy(_DEMO_OUT["zmq"] / "made-with.json", out)
    proc = subprocess.run(
        [sys.executable, "-m", "rtdecode", "demo", "-c", str(cfg), "--out", str(out), "--summary",
         str(summary), "--transport", transport, "--reuse", *(["--imagery"] if transport == "zmq" else [])],
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("reusing the simulated sessions and trained decoders" in proc.stdout) == reused, proc.stdout
    _DEMO_OUT[transport] = out
    return transport, proc, json.loads(summary.read_text())


def test_demo_decodes_unseen_categories_and_reports_latency(demo):
    transport, proc, s = demo
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


def test_the_demo_identifies_imagined_categories_below_seen_ones(demo):
    transport, proc, s = demo
    if transport != "zmq":
        pytest.skip("the imagery run is part of the ZeroMQ demo")
    im = s["imagery"]
    ia = im["identification_accuracy"]
    assert set(ia["per_layer"]) == {f"cnn{i}" for i in range(1, 9)} and im["n_trials"] == 50
    for roi in ("HVC", "VC"):  # imagined categories are identified from the top layers' features
        assert all(ia["per_roi"][roi][layer] > 0.55 for layer in ("cnn6", "cnn7")), ia["per_roi"][roi]
    assert 0.55 < ia["mean"] < s["identification_accuracy"]["mean"]
    tc = im["time_course"]
    assert set(tc["peak_s"]) == set(tc["simulated_peak_s"]) == set(ia["per_layer"])
    assert tc["within_one_tr"], (tc["peak_s"], tc["simulated_peak_s"])
    sem = im["semantic"]
    assert sem["top5_superclass_rate"] > sem["chance"] and sem["perception"]["top5_rate"] > sem["chance"]
    assert "imagery: 50 trials" in proc.stdout
    assert 'id="time-course"' in Path(im["report"]).read_text()


def test_the_demo_report_opens_in_chromium_and_agrees_with_the_summary(demo, browser):
    transport, _, s = demo
    rec = Recording.load(s["recording"])
    assert rec.seq.size == s["volumes"]["processed"] and rec.settings["n_candidates"] > 1
    assert rec.settings["int8_kernel"] == selected().isa  # what the ranking ran on, in the record
    open_page(browser, Path(s["report"]).resolve().as_uri())
    assert page_errors(browser) == []
    ids = [e.get_attribute("id") for e in browser.find_elements("css selector", "section")]
    first = ["summary", "warnings", "provenance", "session", "data"]
    assert ids == [*first, "motion", "quality", "latency", "identification", "settings"]
    # The summary box first: the volumes and the identification the summary printed.
    box = browser.find_element("id", "summary").text
    assert f"{s['volumes']['processed']} (" in box and "identification" in box
    # Data images from the series: mean EPI with ROI outlines, carpet plot under FD, tSNR map.
    data = browser.find_elements("css selector", "#data svg")
    assert len(data) == 3 and all(p.size["height"] > 100 for p in data)
    assert "Median tSNR" in browser.find_element("id", "data").text
    plots = browser.find_elements(
        "css selector", "#motion svg, #quality svg, #latency svg, #identification svg"
    )
    assert len(plots) == 4 and all(p.size["height"] > 100 for p in plots)  # motion, DVARS, latency, rank
    quality = browser.find_element("id", "quality").text
    assert "tSNR at the end (median over ROI)" in quality and "frames by FD (FIRMM)" in quality
    # The per-block table: every block of the test session, shown against the top 5.
    blocks = browser.find_elements("css selector", "#identification table:last-of-type tbody tr")
    assert len(blocks) == 50 and blocks[0].find_elements("css selector", "td")[1].text
    # The report's VC identification (from the recording and the events) is the summary's (from the
    # subscriber's file): two recordings of the same stream, read by different code.
    rows = {
        r.find_element("css selector", "td").text: r.find_elements("css selector", "td")[-1].text
        for r in browser.find_elements("css selector", "#identification tbody tr")
    }
    assert rows["VC"] == f"{s['identification_accuracy']['mean']:.3f}"
    if transport == "lsl":
        # Without the events, from the decoder's own block results: the same accuracy within 0.02.
        truth = truth_from_blocks(rec)
        vc = truth.accuracy["VC"]
        assert abs(sum(vc.values()) / len(vc) - s["identification_accuracy"]["mean"]) < 0.02
        assert truth.ranks and all(r.size == 50 for r in truth.ranks.values())
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.set_window_size(1100, 4200)
    assert browser.save_screenshot(str(ARTIFACTS / f"report-{transport}.png"))
    browser.set_window_size(1800, 1100)


def test_the_demo_reconstructs_each_block_of_photographs(tmp_path):
    """``demo --reconstruct`` on a coarse brain, few steps: each block becomes an image in the report."""
    pytest.importorskip("efficientnet_lite_pytorch", reason="reconstruction needs the torch extra")
    cfg = tmp_path / "demo.yaml"
    small = {
        "simulate": {"shape": [32, 32, 18], "voxel_size_mm": 6.0},
        "demo": {"reconstruct_steps": 8, "reconstruct_crops": 10},
    }
    cfg.write_text(yaml.safe_dump(small))
    summary, out = tmp_path / "summary.json", tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "rtdecode", "demo", "--reconstruct", "-c", str(cfg), "--out", str(out),
         "--summary", str(summary)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rc = json.loads(summary.read_text())["reconstruction"]
    assert rc["n_blocks"] == rc["n_photographs"] == 8 and rc["iterations_p50"] == 8
    assert 0 <= rc["pixel_identification"] <= 1 and rc["seconds"]["max"] > 0
    made = [json.loads(line) for line in (out / "reconstructions" / "index.jsonl").read_text().splitlines()]
    shown = [e["category_label"] for e in read_events(out / "test" / "events.tsv")]
    assert [r["label"] for r in made] == shown and [r["block"] for r in made] == list(range(8))
    page = (out / "report.html").read_text()
    assert '<section id="reconstructions">' in page and page.count('class="pair"') == 8
    gallery = page.split('<section id="reconstructions">')[1].split("</section>")[0]
    assert gallery.count("data:image/png;base64,") == 16  # each photograph beside its reconstruction
    assert "reconstructions (feature inversion of VC" in proc.stdout


def test_sigterm_to_the_demo_with_a_dashboard_stops_every_child(tmp_path):
    """`demo --dashboard`: SIGTERM (as a service manager sends) stops the decoder, subscriber,
    recorder and dashboard as Ctrl-C does, and frees the dashboard's port."""
    import signal
    import socket
    import time
    import urllib.parse

    cfg = tmp_path / "demo.yaml"
    cfg.write_text(yaml.safe_dump({"simulate": {"shape": [32, 32, 18], "voxel_size_mm": 6.0}}))
    demo = subprocess.Popen(
        [sys.executable, "-m", "rtdecode", "demo", "-c", str(cfg), "--out", str(tmp_path / "out"),
         "--dashboard", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        url = None
        for line in demo.stdout:  # the dashboard is up, streaming starts 10 s later
            if "open the dashboard: " in line:
                url = line.split("open the dashboard: ")[1].split()[0]
                break
        assert url, "the demo never served its dashboard"
        children = [int(p) for p in Path(f"/proc/{demo.pid}/task/{demo.pid}/children").read_text().split()]
        assert len(children) == 4  # decoder, subscriber, recorder, dashboard
        demo.send_signal(signal.SIGTERM)
        demo.stdout.read()
        assert demo.wait(30) != 0  # interrupted, not a normal end
        deadline = time.monotonic() + 20
        while any(Path(f"/proc/{pid}").exists() for pid in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(Path(f"/proc/{pid}").exists() for pid in children), "a child outlived the demo"
        host = urllib.parse.urlsplit(url)
        with socket.socket() as s:  # the port is free: nothing listens on it any more
            assert s.connect_ex((host.hostname, host.port)) != 0
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        demo.stdout.close()


def test_with_physiological_noise_denoising_raises_the_demos_accuracy(tmp_path):
    """The demo's subject with cardiac and respiratory noise (``simulate.physio_pct``), its
    recording streamed over LSL with the volumes: RETROICOR + RVT, trained and applied live, raise
    the pairwise identification of unseen categories above the same demo without them."""
    accuracy = {}
    for name, nuisance in (("off", []), ("on", ["retroicor", "rvt"])):
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(
            yaml.safe_dump(
                {
                    "simulate": {"shape": [32, 32, 18], "voxel_size_mm": 6.0, "physio_pct": 4.0},
                    "demo": {"speed": 80.0},
                    "run": {"preprocess": {"nuisance": {"regressors": nuisance}}},
                }
            )
        )
        summary = tmp_path / f"{name}.json"
        proc = subprocess.run(
            [*[sys.executable, "-m", "rtdecode", "demo", "-c", str(cfg)],
             *["--out", str(tmp_path / "out"), "--summary", str(summary), "--reuse"]],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        # The second run's regressors change its training: the first run's decoders are not reused.
        assert "was made with these settings: simulating and training" in proc.stdout, proc.stdout
        if nuisance:  # the decoder took the recording from the start
            assert "no receiver has connected to the PhysioOutlet" not in proc.stderr, proc.stderr[-3000:]
        accuracy[name] = json.loads(summary.read_text())["identification_accuracy"]["mean"]
    assert accuracy["on"] > accuracy["off"] + 0.02, accuracy


def test_a_demo_folder_is_reused_only_with_the_same_sessions_and_settings(tmp_path):
    """``demo --reuse`` keeps a folder's sessions and decoders only if they were made with these
    settings: other denoising regressors retrain, another streaming pace does not."""
    from rtdecode.apps.demo import MADE_WITH, _made_with, _read_made_with, sim_params
    from rtdecode.configfile import config_from_data

    def made_with(data):
        cfg = config_from_data(data, "test")
        return _made_with(cfg, sim_params(cfg, kind="train", seed=1), sim_params(cfg, kind="test", seed=2))

    base = {"simulate": {"physio_pct": 4.0}}
    (tmp_path / MADE_WITH).write_text(json.dumps(made_with(base)))
    kept = _read_made_with(tmp_path)
    assert kept == made_with(base) == made_with({**base, "demo": {"speed": 80.0}})
    assert kept != made_with({**base, "run": {"preprocess": {"nuisance": {"regressors": ["retroicor"]}}}})
    assert kept != made_with({"simulate": {"physio_pct": 2.0}})
    (tmp_path / MADE_WITH).write_text("{not json")
    assert _read_made_with(tmp_path) is None
