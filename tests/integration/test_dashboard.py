"""The live dashboard: its view of the message stream, and the page in a real headless Chromium."""

import base64
import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from helpers import ARTIFACTS, collect, free_address, open_page, page_errors, small_config

from rtdecode import wire
from rtdecode.apps.dashboard.view import SessionView
from rtdecode.config import FeedbackConfig
from rtdecode.io.nifti import read_events
from rtdecode.transport.zmq import Subscriber
from rtdecode.wire import messages as m


def _msg(topic, header, arrays=None):
    return wire.parse(wire.decode(wire.encode(topic, header, arrays)))


def _volume(seq, status="ok", e2e=20.0, fd=0.1, tr_s=2.0, score=0.25):
    base = {
        "session": "s",
        "series": "r",
        "seq": seq,
        "acq_time_s": 1e9 + seq,
        "tr_s": tr_s,
        "status": status,
    }
    msgs = [
        _msg("motion", {**base, "kind": "motion", "params": [0.1] * 6, "fd_mm": fd, "censored": fd > 0.5,
                        "fd_threshold_mm": 0.5, "iterations": 3}),
    ]  # fmt: skip
    if status == "ok":
        labels = [[["a", "b"]]]
        arrays = {
            "indices": np.array([[[3, 1]]], np.int32),
            "scores": np.array([[[0.5, score]]], np.float32),
        }
        msgs.append(_msg("ranking", {**base, "kind": "ranking", "censored": False, "rois": ["VC"],
                                     "layers": ["cnn8"], "labels": labels}, arrays))  # fmt: skip
    else:
        msgs.append(_msg("ranking", {**base, "kind": "ranking", "censored": False}))
    msgs.append(_msg("feedback", {**base, "kind": "feedback", "scores": {"nf": {"value": 1.5, "raw": 0.2}}}))
    msgs.append(_msg("latency", {**base, "kind": "latency", "stamps": {}, "ms": {"end_to_end": e2e}}))
    return msgs


def test_view_folds_a_volume_into_one_update_at_its_last_message():
    view = SessionView()
    updates = [view.add(m) for m in _volume(0, status="baseline") + _volume(1, e2e=2500.0, fd=0.7)]
    assert updates[:3] == [None] * 3 and updates[4:7] == [None] * 3
    first, second = updates[3], updates[7]
    assert first["seq"] == 0 and first["status"] == "baseline" and "top" not in first
    assert second["top"]["labels"] == [[["a", "b"]]] and second["top"]["scores"] == [[[0.5, 0.25]]]
    assert second["deadline_miss"] and second["tr_ms"] == 2000.0 and second["censored"]
    assert second["feedback"] == {"nf": 1.5} and second["fd_threshold_mm"] == 0.5
    c = second["counts"]
    counted = ("volumes", "decoded", "baseline", "censored", "deadline_misses", "last_seq")
    assert [c[k] for k in counted] == [2, 1, 1, 1, 1, 1]


def test_view_counts_skips_and_gaps_and_keeps_nan_out_of_the_json():
    view = SessionView(history=3)
    view.add(_msg("status", {"kind": "status", "event": "skipped", "reason": "malformed message: x"}))
    gap = view.add(
        _msg("status", {"kind": "status", "event": "gap", "session": "s", "series": "r",
                        "missing_from": 4, "missing_to": 6, "after_restart": False})
    )  # fmt: skip
    assert gap["counts"]["skipped"] == 1 and gap["counts"]["gaps"] == 1 and gap["counts"]["missing"] == 3
    assert view.add(_msg("status", {"kind": "status", "event": "heartbeat", "processed": 0}))["event"] == (
        "heartbeat"
    )
    for seq in range(5):
        *_, update = (view.add(m) for m in _volume(seq, score=float("nan")))
    assert update["top"]["scores"] == [[[0.5, None]]]
    snap = view.snapshot()
    json.dumps(snap, allow_nan=False)
    assert [v["seq"] for v in snap["volumes"]] == [2, 3, 4]  # history 3
    assert snap["last_event"]["event"] == "gap"  # heartbeats do not hide the last real event
    with pytest.raises(ValueError, match="history must be >= 1"):
        SessionView(history=0)


def _text(driver, element_id):
    return driver.find_element("id", element_id).text


def _wait(predicate, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError(what)


def test_dashboard_follows_a_live_session_in_chromium(experiment, tmp_path, browser, run_decoder):
    """Decoder, simulated scanner and stimulus markers, dashboard: the page shows what is published."""
    events = read_events(experiment / "test" / "events.tsv")
    cfg = small_config()
    cfg.run.bundle = str(experiment / "decoder")
    cfg.run.input.address, cfg.run.output.address = free_address(), free_address()
    cfg.run.blocks.enabled = True
    target = events[0]["category_label"]
    cfg.run.feedback = [
        FeedbackConfig(name="content", kind="correlation", roi="VC", layer="cnn8", target=target)
    ]
    ready = tmp_path / "dashboard.ready"
    exe = [sys.executable, "-m", "rtdecode"]
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("decoder", "dashboard", "sender")}
    procs = {
        "decoder": run_decoder(cfg, "--exit-after-series", stdout=logs["decoder"], stderr=subprocess.STDOUT),
        "dashboard": subprocess.Popen([*exe, "dashboard", "--address", cfg.run.output.address, "--port", "0",
                                       "--ready-file", str(ready)], stdout=logs["dashboard"],
                                      stderr=subprocess.STDOUT),
    }  # fmt: skip
    received, listening = [], threading.Event()

    def listen():
        with Subscriber(cfg.run.output.address) as sub:
            sub.recv(60.0)  # a heartbeat: subscribed
            listening.set()
            received.extend(
                (m.header, {k: v.copy() for k, v in m.arrays.items()}) for m in collect(sub, timeout_s=240)
            )

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    try:
        _wait(ready.exists, 60, "the dashboard did not start")
        open_page(browser, ready.read_text().strip())
        _wait(lambda: _text(browser, "connection") == "live", 30, "the page did not connect")
        # The dashboard's own subscription is live once the decoder's heartbeats reach the page.
        _wait(lambda: "idle" in _text(browser, "decoder"), 60, "no heartbeat reached the page")
        _wait(listening.is_set, 60, "the test's subscriber did not connect")
        procs["sender"] = subprocess.Popen(
            [*exe, "simulate", "--out", str(experiment / "test"), "--stream", cfg.run.input.address,
             "--markers", "--speed", "20"], stdout=logs["sender"], stderr=subprocess.STDOUT,
        )  # fmt: skip
        samples, live_shot = [], False
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        while listener.is_alive():
            samples.append((int(_text(browser, "n-volumes")), _text(browser, "last-seq")))
            if not live_shot and samples[-1][0] >= 60:  # mid-session, live: the README's picture
                live_shot = browser.save_screenshot(str(ARTIFACTS / "dashboard-live.png"))
            time.sleep(0.5)
        assert procs["sender"].wait(60) == 0 and procs["decoder"].wait(60) == 0
        _wait(
            lambda: _text(browser, "event") in ("end", "stopped"),
            30,
            "the page did not show the end of the series",
        )
        time.sleep(0.5)  # the last redraw

        headers = [h for h, _ in received]
        latency = [h for h in headers if h["kind"] == "latency"]
        rankings = [(h, a) for h, a in received if h["kind"] == "ranking"]
        motion = [h for h in headers if h["kind"] == "motion"]
        blocks = [(h, a) for h, a in received if h["kind"] == "block" and not h.get("running")]
        feedback = [h for h in headers if h["kind"] == "feedback"]
        # The counter followed the stream while it ran, never went back, and ended on the totals.
        counts = [n for n, _ in samples]
        assert counts == sorted(counts) and len(set(counts)) >= 5, samples
        assert 0 < counts[len(counts) // 2] < len(latency)
        assert _text(browser, "n-volumes") == str(len(latency))
        assert _text(browser, "last-seq") == str(latency[-1]["seq"])
        assert _text(browser, "n-decoded") == str(sum(h["status"] == "ok" for h, _ in rankings))
        assert _text(browser, "n-baseline") == str(sum(h["status"] == "baseline" for h, _ in rankings))
        assert _text(browser, "n-censored") == str(sum(h["censored"] for h in motion))
        assert _text(browser, "n-skipped") == "0" and _text(browser, "n-gaps") == "0 (0)"
        misses = sum(h["ms"]["end_to_end"] > 1000 * h["tr_s"] for h in latency)
        assert _text(browser, "n-misses") == str(misses)
        assert _text(browser, "fd-last") == f"{motion[-1]['fd_mm']:.3f}"
        assert _text(browser, "fd-threshold") == f"{cfg.run.motion.fd_threshold_mm:.2f}"
        assert _text(browser, "e2e-last") == f"{latency[-1]['ms']['end_to_end']:.1f}"
        screen_lag = float(_text(browser, "screen-lag-median"))  # acquisition -> on this page
        assert screen_lag > float(np.median([h["ms"]["end_to_end"] for h in latency[-150:]])) * 0.5
        print(f"acquisition -> page, median of the last 150 volumes: {screen_lag} ms")
        assert _text(browser, "deadline") == f"{1000 * latency[-1]['tr_s']:.0f}"
        # Top candidates of the last volume, for the ROI and layer chosen on the page.
        last, arrays = rankings[-1]
        for roi in ("VC", "V1"):
            browser.find_element("css selector", f"#roi option[value='{roi}']").click()
            time.sleep(0.3)
            r, lay = last["rois"].index(roi), last["layers"].index("cnn8")
            rows = [tr.text.split() for tr in browser.find_elements("css selector", "#topk tbody tr")]
            expected = [
                [str(i + 1), label, f"{score:.3f}"]
                for i, (label, score) in enumerate(zip(last["labels"][r][lay], arrays["scores"][r, lay]))
            ]
            assert rows == expected, roi
        # Blocks from the stimulus markers, and the feedback score.
        assert len(blocks) == len(events) and _text(browser, "n-blocks") == str(len(blocks))
        assert _text(browser, "block-label").startswith(f"{blocks[-1][0]['block']}: {blocks[-1][0]['label']}")
        shown = browser.find_element("css selector", ".feedback-value[data-name='content']").text
        assert shown == f"content {feedback[-1]['scores']['content']['value']:.2f}"
        assert page_errors(browser) == []
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "dashboard.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        # A page opened after the session starts from the dashboard's history.
        browser.refresh()
        _wait(
            lambda: _text(browser, "n-volumes") == str(len(latency)), 30, "a reloaded page lost the history"
        )
        assert _text(browser, "n-blocks") == str(len(blocks)) and page_errors(browser) == []
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
                p.wait(10)
        for f in logs.values():
            f.close()
    assert procs["dashboard"].returncode == 0, (tmp_path / "dashboard.log").read_text()


def test_dashboard_serves_its_page_and_refuses_other_origins(tmp_path):
    """Without a decoder: page and assets from the package, the snapshot, a foreign origin refused."""
    import urllib.error
    import urllib.request

    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rtdecode", "dashboard", "--address", free_address(), "--port", "0",
         "--ready-file", str(ready)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait(ready.exists, 60, "the dashboard did not start")
        url = ready.read_text().strip()
        assert url.startswith("http://127.0.0.1:")  # loopback unless --host says otherwise
        with urllib.request.urlopen(url) as r:
            assert r.headers["Content-Type"].startswith("text/html") and b'src="dashboard.js"' in r.read()
        with urllib.request.urlopen(url + "dashboard.js") as r:
            assert r.headers["Content-Type"].startswith("text/javascript") and b"new WebSocket" in r.read()
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(url + "secrets.txt")
        ws_url = url.replace("http://", "ws://") + "ws"
        with connect(ws_url, origin=url.rstrip("/")) as ws:
            snap = json.loads(ws.recv(10))
        assert snap["type"] == "snapshot" and snap["counts"]["volumes"] == 0 and snap["volumes"] == []
        with pytest.raises(InvalidStatus, match="403"):
            connect(ws_url, origin="http://evil.example")
        # A second dashboard on the same port says so and exits.
        port = url.rsplit(":", 1)[1].strip("/")
        taken = subprocess.run(
            [sys.executable, "-m", "rtdecode", "dashboard", "--address", free_address(), "--port", port],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert taken.returncode == 2 and f"cannot serve the dashboard on 127.0.0.1:{port}" in taken.stderr
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_dashboard_shows_the_reconstructors_images(tmp_path):
    """Reconstructions from rtdecode reconstruct's own address reach the page, live and in the snapshot."""
    from websockets.sync.client import connect

    from rtdecode.transport.zmq import Publisher

    ready, recon_addr = tmp_path / "ready", free_address()
    png = np.frombuffer(b"\x89PNG\r\n\x1a\n" + bytes(range(40)), dtype=np.uint8)
    proc = subprocess.Popen(
        [sys.executable, "-m", "rtdecode", "dashboard", "--address", free_address(), "--port", "0",
         "--ready-file", str(ready), "--reconstructions", recon_addr],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait(ready.exists, 60, "the dashboard did not start")
        url = ready.read_text().strip()
        ws_url = url.replace("http://", "ws://") + "ws"
        with Publisher(recon_addr) as pub, connect(ws_url) as ws:
            assert json.loads(ws.recv(10))["reconstructions"] == []
            msg = m.Reconstruction(session="s", series="r", block=4, label="coffee", seqs=[12, 13, 14],
                                      method="features", roi="VC", iterations=150, seconds=12.5, lag_s=14.0,
                                      loss=0.31, seed=0, png=png)  # fmt: skip
            update = None
            deadline = time.monotonic() + 30
            while update is None and time.monotonic() < deadline:  # until the subscription is live
                pub.publish(msg)
                try:
                    update = json.loads(ws.recv(0.5))
                except TimeoutError:
                    pass
        assert update["type"] == "reconstruction" and update["block"] == 4 and update["label"] == "coffee"
        assert base64.b64decode(update["png"]) == png.tobytes() and update["seconds"] == 12.5
        with connect(ws_url) as ws:  # a page opened later gets it in its snapshot
            snap = json.loads(ws.recv(10))
        assert snap["reconstructions"][-1]["png"] == update["png"]
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_killed_decoder_and_restarted_dashboard_show_correctly(experiment, tmp_path, browser, run_decoder):
    """Mid-session: a restarted dashboard takes the session so far from the decoder's history and
    shows every volume; a decoder SIGKILLed while decoding is seen silent within two heartbeats;
    restarted, it is live again; a history that cannot be had is said on the page."""
    cfg = small_config()
    cfg.run.bundle = str(experiment / "decoder")
    addresses = [free_address() for _ in range(3)]
    cfg.run.input.address, cfg.run.output.address, cfg.run.history.address = addresses
    cfg.run.heartbeat_s = 0.5
    dashboards = []

    def dashboard(*args):
        ready = tmp_path / f"dashboard-{len(dashboards)}.ready"
        dashboards.append(subprocess.Popen(
            [sys.executable, "-m", "rtdecode", "dashboard", "--address", cfg.run.output.address,
             "--port", "0", "--ready-file", str(ready), *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))  # fmt: skip
        _wait(ready.exists, 60, "the dashboard did not start")
        open_page(browser, ready.read_text().strip())
        _wait(lambda: _text(browser, "connection") == "live", 60, "no heartbeat reached the page")

    sender = None
    try:
        decoder = run_decoder(cfg)
        dashboard()
        sender = subprocess.Popen(
            [sys.executable, "-m", "rtdecode", "simulate", "--out", str(experiment / "test"), "--stream",
             cfg.run.input.address, "--speed", "5"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait(lambda: int(_text(browser, "n-volumes")) >= 10, 60, "no volume reached the page")
        dashboards[-1].terminate()  # the console restarts its dashboard mid-session
        dashboard("--history-from", cfg.run.history.address)
        _wait(lambda: int(_text(browser, "n-volumes")) >= 25, 60, "the restarted dashboard did not follow")
        # Every volume so far is counted (the history's and the live ones, none twice), and
        # the page does not say it started late.
        assert int(_text(browser, "n-volumes")) == int(_text(browser, "last-seq")) + 1
        assert _text(browser, "history-note") == ""
        note = browser.find_element("id", "history-note").get_attribute("title")
        assert "came from the decoder's history" in note
        assert _text(browser, "decoder") == "decoder: decoding"
        decoder.kill()  # while decoding
        killed = time.monotonic()
        _wait(lambda: _text(browser, "connection").startswith("decoder silent"), 30, "a dead decoder: live")
        noticed = time.monotonic() - killed
        # Two heartbeat periods of silence, plus the page's 0.25 s check and the relay.
        assert noticed < 2 * cfg.run.heartbeat_s + 1.5, noticed
        assert _text(browser, "decoder") == "decoder: not heard"
        assert "bad" in browser.find_element("id", "connection").get_attribute("class")
        sender.kill()
        run_decoder(cfg)  # restarted on the same addresses
        _wait(lambda: _text(browser, "connection") == "live", 60, "a restarted decoder did not look live")
        assert page_errors(browser) == []
        # A history endpoint that does not answer: the page says so instead of looking complete.
        dashboards[-1].terminate()
        dashboard("--history-from", free_address())
        _wait(lambda: _text(browser, "history-note").startswith("no history from the decoder"), 30,
              "a missing history was not shown")  # fmt: skip
    finally:
        for proc in [*dashboards, *([sender] if sender else [])]:
            proc.terminate()
            proc.wait(10)


def test_history_endpoint_keeps_what_a_dashboard_shows_and_refuses_a_bad_answer():
    import zmq

    from rtdecode.errors import ProtocolError, ReceiveTimeout
    from rtdecode.transport.zmq import HistoryServer, fetch_history

    kinds = ("motion", "ranking", "feedback", "latency", "status")
    with HistoryServer(free_address(), kinds, keep=10) as history:
        published = [msg for seq in range(4) for msg in _volume(seq)]
        for msg in published:
            history.publish(msg)
            history.publish(_msg("status", {"kind": "status", "event": "heartbeat", "processed": 0}))
        features = {"roi": "VC", "layer": "cnn8", "kind": "features", "session": "s", "series": "r", "seq": 3,
                    "acq_time_s": 1e9, "tr_s": 2.0, "status": "ok"}  # fmt: skip
        history.publish(_msg("features.VC.cnn8", features, {"features": np.ones(3, np.float32)}))
        got = fetch_history(history.last_endpoint)
        again = fetch_history(history.last_endpoint)  # asked again: the same answer
        assert [g.header() for g in again] == [g.header() for g in got]
    # The last ten of the kinds asked for, heartbeats and per-unit features aside, arrays intact.
    assert [(g.kind, g.seq) for g in got] == [(p.kind, p.seq) for p in published[-10:]]
    rankings = [(g, p) for g, p in zip(got, published[-10:]) if g.kind == "ranking"]
    assert rankings and all(np.array_equal(g.scores, p.scores) for g, p in rankings)
    with pytest.raises(ReceiveTimeout, match="no history from"):
        fetch_history(free_address(), timeout_s=0.3)
    ctx = zmq.Context()
    rep = ctx.socket(zmq.REP)
    rep.bind("tcp://127.0.0.1:*")
    address = rep.getsockopt_string(zmq.LAST_ENDPOINT)
    try:
        for answer in ([b"2", b"1", b"ranking"], [b"1", b"3", b"motion", b"{}"], [b"0", b"extra"]):
            server = threading.Thread(target=lambda a=answer: (rep.recv(), rep.send_multipart(a)))
            server.start()
            with pytest.raises(ProtocolError):
                fetch_history(address)
            server.join()
    finally:
        rep.close(0)
        ctx.term()
