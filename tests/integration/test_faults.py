"""Faults during a session, with the decoder, senders and subscribers as real processes.

A killed and restarted decoder, a restarted sender, a scanner pause, slow and crashed
subscribers: each test checks that every volume ends with exactly one result or an announced gap
or skip, and that the results equal an offline run over the volumes the decoder received.
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import collect, free_address, is_end, small_config, wait_for_file

from rtdecode.apps.setup import build_pipeline
from rtdecode.io.nifti import iter_volumes
from rtdecode.transport.zmq import Subscriber

SENDER = """
import sys, time
from rtdecode.io.nifti import iter_volumes
from rtdecode.transport.zmq import VolumeSender
bold, address, first, last, gap_s, end, tr = sys.argv[1:8]
vols = list(iter_volumes(bold, session="s", series="run-1"))
with VolumeSender(address) as tx:
    for vol in vols[int(first):int(last)]:
        vol.tr_s = float(tr) if float(tr) > 0 else vol.tr_s
        tx.send(vol)
        time.sleep(float(gap_s))
    if end == "end":
        tx.send_end("s", "run-1", len(vols))
"""


def _send(bold, address, first, last, gap_s=0.05, end=True, tr=0.0):
    """A sender process for volumes [first, last) of ``bold``."""
    args = [str(bold), address, str(first), str(last), str(gap_s), "end" if end else "-", str(tr)]
    return subprocess.Popen([sys.executable, "-c", SENDER, *args])


def _start_decoder(run_decoder, cfg, tmp_path):
    with open(tmp_path / "decoder.log", "a") as log:  # the child keeps its own descriptor
        return run_decoder(cfg, "--exit-after-series", stderr=log)


@pytest.fixture
def run_cfg(experiment, tmp_path):
    cfg = small_config()
    cfg.run.bundle = str(experiment / "decoder")
    cfg.run.input.address, cfg.run.output.address = free_address(), free_address()
    return cfg


def _offline_features(run_cfg, bold, seqs):
    """VC cnn8 features of an offline run over the volumes with these indices only."""
    pipe = build_pipeline(run_cfg)
    vols = [v for v in iter_volumes(bold, session="s", series="run-1") if v.seq in seqs]
    roi, sl = pipe.decoder.roi_names.index("VC"), pipe.decoder.layer_slices["cnn8"]
    return {r.volume.seq: r.predictions[roi, sl] for r in pipe.process_series(vols) if r.status == "ok"}


def test_a_killed_decoder_resumes_from_its_checkpoint_and_reports_the_gap(
    run_cfg, experiment, tmp_path, run_decoder
):
    run_cfg.run.checkpoint = str(tmp_path / "checkpoint")
    bold = experiment / "test" / "bold.nii"
    n = len(list(iter_volumes(bold)))
    first = _start_decoder(run_decoder, run_cfg, tmp_path)
    with Subscriber(run_cfg.run.output.address) as sub:
        collect(sub, lambda m: m.topic == "status", 60)
        sender = _send(bold, run_cfg.run.input.address, 0, n, gap_s=0.1)
        before = collect(sub, lambda m: m.topic == "ranking" and m.header["seq"] >= 25)
        # Stopped, volumes pile up in its socket buffers, then it dies with them: a real gap.
        first.send_signal(signal.SIGSTOP)
        time.sleep(1.0)
        first.kill()
        first.wait(10)
        second = _start_decoder(run_decoder, run_cfg, tmp_path)
        after = collect(sub, is_end)
        assert sender.wait(60) == 0
        assert second.wait(30) == 0, (tmp_path / "decoder.log").read_text()
    msgs = before + after
    seqs = [m.header["seq"] for m in msgs if m.topic == "ranking"]
    assert len(seqs) == len(set(seqs)), "a volume was published twice"
    gaps = [m.header for m in after if m.header.get("event") == "gap"]
    assert len(gaps) == 1 and gaps[0]["after_restart"], gaps
    missing = set(range(gaps[0]["missing_from"], gaps[0]["missing_to"] + 1))
    last_before = max(m.header["seq"] for m in before if m.topic == "ranking")
    # The state is saved just after a volume's results go out: killed in between, that volume is
    # reported missing although it was published (over-reported, never silently lost).
    assert gaps[0]["missing_from"] in (last_before, last_before + 1)
    assert missing and set(seqs) | missing == set(range(n)) and set(seqs) & missing <= {last_before}
    # The restarted decoder carried on with the first one's reference, baseline and drift filter:
    # its results are those of one uninterrupted offline run over the volumes it received.
    offline = _offline_features(run_cfg.run, bold, set(range(n)) - missing)
    live = {m.header["seq"]: m.arrays["features"] for m in after if m.topic == "features.VC.cnn8"}
    assert live and len(live) == len([s for s in seqs if s > max(missing)])
    for seq, f in live.items():
        np.testing.assert_allclose(f, offline[seq], rtol=1e-4, atol=1e-4)


def test_a_restarted_sender_continues_the_series(run_cfg, experiment, tmp_path, run_decoder):
    bold = experiment / "test" / "bold.nii"
    n = len(list(iter_volumes(bold)))
    dec = _start_decoder(run_decoder, run_cfg, tmp_path)
    with Subscriber(run_cfg.run.output.address) as sub:
        collect(sub, lambda m: m.topic == "status", 60)
        assert _send(bold, run_cfg.run.input.address, 0, 30, gap_s=0.01, end=False).wait(60) == 0
        assert _send(bold, run_cfg.run.input.address, 30, n, gap_s=0.01).wait(60) == 0
        msgs = collect(sub, is_end)
    assert dec.wait(30) == 0
    assert [m.header["seq"] for m in msgs if m.topic == "ranking"] == list(range(n))
    assert not [m for m in msgs if m.header.get("event") in ("gap", "skipped")]


def test_a_scanner_pause_is_announced_and_decoding_goes_on(run_cfg, experiment, tmp_path, run_decoder):
    bold = experiment / "test" / "bold.nii"
    dec = _start_decoder(run_decoder, run_cfg, tmp_path)
    with Subscriber(run_cfg.run.output.address) as sub:
        collect(sub, lambda m: m.topic == "status", 60)
        # TR 0.1 s: a pause of 10 TR is 1 s; the sender stops for 2.5 s after volume 11.
        assert _send(bold, run_cfg.run.input.address, 0, 12, gap_s=0.1, end=False, tr=0.1).wait(60) == 0
        time.sleep(2.5)
        assert _send(bold, run_cfg.run.input.address, 12, 24, gap_s=0.1, tr=0.1).wait(60) == 0
        msgs = collect(sub, is_end)
    assert dec.wait(30) == 0
    pauses = [m.header for m in msgs if m.header.get("event") == "paused"]
    assert len(pauses) == 1 and pauses[0]["last_seq"] == 11 and pauses[0]["silent_s"] >= 1.0
    resumed = [m.header for m in msgs if m.header.get("event") == "pause-ended"]
    assert len(resumed) == 1 and resumed[0]["seq"] == 12 and resumed[0]["paused_s"] >= 2.0
    assert [m.header["seq"] for m in msgs if m.topic == "ranking"] == list(range(24))


LAZY = """
import sys, time
from rtdecode.transport.zmq import Subscriber
with Subscriber(sys.argv[1]) as sub:
    sub.recv(60)
    print("subscribed", flush=True)
    time.sleep(600)  # never reads again
"""


def test_slow_and_crashed_subscribers_do_not_hold_up_the_decoder(run_cfg, experiment, tmp_path, run_decoder):
    bold = experiment / "test" / "bold.nii"
    n = len(list(iter_volumes(bold)))
    dec = _start_decoder(run_decoder, run_cfg, tmp_path)
    lazy = [
        subprocess.Popen(
            [sys.executable, "-c", LAZY, run_cfg.run.output.address], stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    try:
        for p in lazy:
            assert p.stdout.readline().strip() == "subscribed"
        with Subscriber(run_cfg.run.output.address) as sub:
            collect(sub, lambda m: m.topic == "status", 60)
            sender = _send(bold, run_cfg.run.input.address, 0, n, gap_s=0.0)
            collect(sub, lambda m: m.topic == "ranking" and m.header["seq"] >= n // 3)
            os.kill(lazy[1].pid, signal.SIGKILL)  # a subscriber that crashes mid-session
            msgs = collect(sub, is_end)
            assert sender.wait(60) == 0
        assert dec.wait(30) == 0
    finally:
        for p in lazy:
            p.kill()
            p.wait()
            p.stdout.close()
    end = msgs[-1].header
    assert (end["processed"], end["skipped"]) == (n, 0)
    # The published stream goes on for the reader that keeps up, with every volume in order.
    seqs = [m.header["seq"] for m in msgs if m.topic == "ranking"]
    assert seqs == list(range(seqs[0], n))


BAD_SENDER = """
import json, sys, time
import numpy as np
from rtdecode import wire
from rtdecode.io.nifti import iter_volumes
from rtdecode.transport.zmq import VolumeSender
bold, address = sys.argv[1:3]
vols = list(iter_volumes(bold, session="s", series="run-1"))[:30]
def variant(v, data=None, affine=None, seq=None):
    data = v.data if data is None else data
    affine = v.affine if affine is None else affine
    return type(v)(data, affine, v.seq if seq is None else seq, v.tr_s, v.acq_time_s, v.session, v.series)
frames = wire.encode_volume(vols[0])
header = json.loads(bytes(frames[1]))
spec = header["arrays"][0]
bad = {  # before volume k: what is sent (a list of frames, or a Volume)
    9: [b"volume"],
    10: [*frames, b"extra"],
    11: [b"volume", b"{not json"],
    12: [b"volume", json.dumps({**header, "version": 9}).encode(), frames[2]],
    13: [b"volume", frames[1], bytes(frames[2])[:-2]],
    14: [b"volume", json.dumps({**header, "arrays": [{**spec, "dtype": "object"}]}).encode(), frames[2]],
    15: variant(vols[15], data=np.zeros((10, 10, 10), np.int16)),
    16: variant(vols[16], affine=vols[16].affine + np.diag([0, 0, 0.5, 0])),
    17: variant(vols[17], data=np.where(vols[17].data > 0, np.nan, 0).astype(np.float32)),
    18: variant(vols[18], data=np.full(vols[18].data.shape, np.inf, np.float32)),
    19: variant(vols[19], data=np.zeros_like(vols[19].data)),
    20: variant(vols[20], data=vols[20].data.astype(np.complex64)),
}
with VolumeSender(address) as tx:
    for v in vols:
        if v.seq == 23:
            continue  # never sent: a gap
        if v.seq == 5:
            tx.send(vols[6])  # 6 before 5 (as a reconnect can do): put back in order, no gap
        if v.seq == 25:
            tx.send(vols[26])  # 26 before 25, and 25 later than run.reorder_ms: refused
            time.sleep(0.5)
        item = bad.get(v.seq)
        if isinstance(item, list):
            tx.send_frames(item)
        elif item is not None:
            tx.send(item)
        if v.seq not in (6, 26):
            tx.send(v)
        if v.seq in (12, 21):
            tx.send(v)  # a repeat
        if v.seq == 27:  # over run.input.max_message_mb (2 MB): libzmq drops the connection
            time.sleep(2.0)  # at scanner pace the queue is empty; queued volumes could be reordered
            big = np.ones((128, 128, 36), np.float32)
            tx.send(variant(v, data=big, seq=28))
            time.sleep(1.0)  # the sender reconnects by itself
    restart = list(iter_volumes(bold, session="s", series="run-2"))[:10]  # the scanner restarts
    for v in restart:
        tx.send(v)
    tx.send_end("s", "run-2", len(restart))
"""


def test_bad_input_catalogue_every_volume_ends_in_one_record(run_cfg, experiment, tmp_path, run_decoder):
    run_cfg.run.input.max_message_mb = 2.0  # the complex64 volume (1.2 MB) passes, 2.4 MB does not
    bold = experiment / "test" / "bold.nii"
    dec = _start_decoder(run_decoder, run_cfg, tmp_path)
    # Only what is checked, all of it kept: the messages wait here while the sender runs.
    with Subscriber(run_cfg.run.output.address, ("status", "ranking"), queue=0) as sub:
        collect(sub, lambda m: m.topic == "status", 60)
        sender = subprocess.run(
            [sys.executable, "-c", BAD_SENDER, str(bold), run_cfg.run.input.address], timeout=120
        )
        assert sender.returncode == 0
        msgs = collect(sub, is_end)
    assert dec.wait(30) == 0, "the decoder must survive all of it"
    skipped = [m.header["reason"] for m in msgs if m.header.get("event") == "skipped"]
    expected = [
        "at least 2 frames",
        "lists 1 arrays but the message has 2",
        "not valid JSON",
        "unsupported protocol version 9",
        "repeats or precedes volume 12",
        "needs 294912",
        "unsupported dtype 'object'",
        "shape (10, 10, 10) differs",
        "affine differs from the series'",
        "non-finite values",
        "non-finite values",
        "every voxel is zero",
        "voxel type complex64 is not supported",
        "repeats or precedes volume 21",
        "volume 25 repeats or precedes volume 26",
    ]
    assert len(skipped) == len(expected), "\n".join(skipped)
    for reason, text in zip(skipped, expected):
        assert text in reason, (text, reason)
    assert len([m for m in msgs if m.header.get("event") == "sender-disconnected"]) >= 1
    gaps = [
        (m.header["series"], m.header["missing_from"], m.header["missing_to"])
        for m in msgs
        if m.header.get("event") == "gap"
    ]
    assert gaps == [("run-1", 23, 23), ("run-1", 25, 25)]
    rankings = [(m.header["series"], m.header["seq"]) for m in msgs if m.topic == "ranking"]
    # Exactly one result per valid volume: run-1 without the unsent 23 and the late 25, then run-2.
    assert rankings == [("run-1", s) for s in range(30) if s not in (23, 25)] + [
        ("run-2", s) for s in range(10)
    ]
    run2 = [m.header["status"] for m in msgs if m.topic == "ranking" and m.header["series"] == "run-2"]
    assert (
        run2 == ["baseline"] * run_cfg.run.preprocess.baseline_volumes + ["ok"] * 2
    )  # preprocessing restarted
    assert msgs[-1].header["skipped"] == len(expected)


def _file_size_limit(limit_bytes):
    def apply():  # in the child: writes beyond the limit fail with EFBIG, as on a full disk
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return apply


def test_a_full_disk_stops_the_recorder_with_a_report_and_not_the_decoder(
    run_cfg, experiment, tmp_path, run_decoder
):
    run_cfg.run.publish_input = True  # the recorder stores every input volume: it fills up fast
    bold = experiment / "test" / "bold.nii"
    n = len(list(iter_volumes(bold)))
    dec = _start_decoder(run_decoder, run_cfg, tmp_path)
    ready = tmp_path / "recorder.ready"
    recorder = subprocess.Popen(
        [sys.executable, "-m", "rtdecode", "record", "--address", run_cfg.run.output.address,
         "--out", str(tmp_path / "rec.h5"), "--ready-file", str(ready)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_file_size_limit(2_000_000),
    )  # fmt: skip
    try:
        with Subscriber(run_cfg.run.output.address) as sub:
            collect(sub, lambda m: m.topic == "status", 60)
            wait_for_file(ready, proc=recorder)
            sender = _send(bold, run_cfg.run.input.address, 0, n, gap_s=0.02)
            msgs = collect(sub, is_end)
            assert sender.wait(60) == 0
        assert dec.wait(30) == 0
        try:
            out, err = recorder.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            recorder.kill()
            out, err = recorder.communicate()
            raise AssertionError(f"recorder hung: {err[-3000:]}") from None
    finally:
        if recorder.poll() is None:
            recorder.kill()
            recorder.communicate()
    assert recorder.returncode == 2
    assert "rtdecode record: error: cannot write" in err and "File too large" in err, err
    assert "recording stopped at volume" in err
    assert [m.header["seq"] for m in msgs if m.topic == "ranking"] == list(range(n))
