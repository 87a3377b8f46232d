"""LSL in and out, stimulus markers and block decoding, with real outlets and inlets in separate processes."""

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import collect, free_address, small_config

from rtdecode.config import FeedbackConfig
from rtdecode.errors import ProtocolError, ReceiveTimeout
from rtdecode.io.nifti import read_events
from rtdecode.models.bank import CandidateBank
from rtdecode.pipeline.blocks import ScanClock
from rtdecode.transport.lsl import VolumeInlet, pylsl
from rtdecode.transport.zmq import Subscriber
from rtdecode.volume import SeriesEnd
from rtdecode.wire.markers import parse_marker

TOOLS = Path(__file__).parents[2] / "tools"
OUTPUT_TYPES = [
    "rtdecode.features",
    "rtdecode.ranking",
    "rtdecode.motion",
    "rtdecode.latency",
    "rtdecode.feedback",
    "rtdecode.blocks",
    "rtdecode.status",
]


def test_markers_parse_in_both_spellings_and_bad_ones_are_named():
    m = parse_marker('{"event": "start", "label": "c0001_s02", "condition": "imagery"}', 5)
    assert (m.event, m.label, m.condition, m.time_ns) == ("start", "c0001_s02", "imagery", 5)
    assert parse_marker("start:c0001_s02", 7).label == "c0001_s02"
    assert parse_marker("end", 9).event == "end"
    with pytest.raises(ProtocolError, match="not valid JSON"):
        parse_marker('{"event": "start"', 0)
    with pytest.raises(ProtocolError, match="event must be one of"):
        parse_marker("pause:x", 0)
    with pytest.raises(ProtocolError, match="must be an object"):
        parse_marker("[1]", 0)


def test_scan_clock_places_times_on_the_scan_time_line_at_any_replay_speed():
    clock = ScanClock()
    tr, speed, t0 = 2.0, 10.0, 5_000_000_000
    for k in range(6):
        clock.add(k, t0 + int(k * tr / speed * 1e9), tr)
    # 0.5 s of clock time after volume 5 is 5 s of scan time at 10x.
    assert clock.scan_time(t0 + int((5 * tr / speed + 0.5) * 1e9)) == pytest.approx(5 * tr + 5.0)
    assert clock.scan_time(t0) == pytest.approx(0.0)


def test_a_volume_stream_without_a_usable_description_is_refused_by_name():
    info = pylsl.StreamInfo("broken-scanner", "fMRI", 8, 1.0, "float32", "broken-1")
    outlet = pylsl.StreamOutlet(info)
    inlet = VolumeInlet("broken-scanner")
    try:
        with pytest.raises(ProtocolError, match="broken-scanner.*unusable description"):
            for _ in range(40):
                try:
                    inlet.recv_volume(0.5)
                except ReceiveTimeout:
                    continue
        # Refused once, then ignored: the decoder keeps waiting for a good stream.
        with pytest.raises(ReceiveTimeout):
            inlet.recv_volume(0.5)
    finally:
        inlet.close()
        del outlet


_MNE_CLIENT = textwrap.dedent(
    """
    import json, sys, time
    from mne_lsl.lsl import StreamInlet, resolve_streams
    types = json.loads(sys.argv[1])
    found = {}
    for t in types:
        n = int(sys.argv[2]) if t.endswith("features") else 1
        infos = resolve_streams(timeout=10.0, stype=t, minimum=n)
        found[t] = []
        for info in infos:
            inlet = StreamInlet(info)
            inlet.open_stream(timeout=10.0)
            full = inlet.get_sinfo(timeout=10.0)
            found[t].append({"name": full.name, "n_channels": full.n_channels,
                             "labels": full.get_channel_names(), "units": full.get_channel_units()})
            if t == "rtdecode.feedback":
                fb = inlet
    print("ready", flush=True)
    samples = []
    deadline = time.monotonic() + 120
    while len(samples) < 20 and time.monotonic() < deadline:
        data, ts = fb.pull_chunk(timeout=1.0)
        samples += [list(map(float, row)) for row in data]
    print(json.dumps({"streams": found, "feedback": samples}), flush=True)
    """
)


def test_lsl_session_with_markers_blocks_feedback_and_outputs_for_any_lsl_client(
    experiment, tmp_path, run_decoder
):
    """Scanner (LSL) + stimulus software (LSL markers) -> decoder -> ZeroMQ, LSL, pylsl, mne-lsl."""
    bank = CandidateBank.load(experiment / "decoder" / "candidates.npz")
    events = read_events(experiment / "test" / "events.tsv")
    target = events[0]["category_label"]
    cfg = small_config()
    cfg.run.bundle = str(experiment / "decoder")
    cfg.run.transport = "lsl"
    cfg.run.output.address = free_address()
    cfg.run.lsl.outputs = True
    cfg.run.blocks.enabled = True
    cfg.run.feedback = [
        FeedbackConfig(name="act", kind="psc", roi="VC"),
        FeedbackConfig(name="content", kind="correlation", roi="VC", layer="cnn8", target=target),
        FeedbackConfig(name="decnef", kind="classifier", roi="HVC", normalise="zscore", smoothing_volumes=2),
    ]
    exe = [sys.executable, "-m", "rtdecode"]
    decoder = run_decoder(cfg, "--exit-after-series", stderr=subprocess.PIPE, text=True)
    procs = [decoder]
    try:
        with Subscriber(cfg.run.output.address) as sub:
            sub.recv(60.0)  # the decoder is up (a status message)
            # An independent client in this process: pylsl finds every output stream by type.
            for t in OUTPUT_TYPES:
                infos = pylsl.resolve_byprop(
                    "type", t, len(cfg.train.rois) if t.endswith("features") else 1, 20.0
                )
                assert infos, f"no LSL stream of type {t}"
                assert all(i.name().startswith("rtdecode-") for i in infos)
            motion = pylsl.StreamInlet(pylsl.resolve_byprop("type", "rtdecode.motion", 1, 10.0)[0])
            desc = motion.info(10.0).desc().child("channels").child("channel")
            assert (desc.child_value("label"), desc.child_value("unit")) == ("trans_x", "mm")
            # A second binding in its own process (mne-lsl, its own liblsl) and the example client.
            mne = subprocess.Popen(
                [sys.executable, "-c", _MNE_CLIENT, json.dumps(OUTPUT_TYPES), str(len(cfg.train.rois))],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            client = subprocess.Popen(
                [
                    sys.executable,
                    str(TOOLS / "feedback_client.py"),
                    "--score",
                    "decnef",
                    "--n",
                    "30",
                    "--json",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            procs += [mne, client]
            assert mne.stdout.readline().strip() == "ready", mne.stderr.read()
            assert "connected" in client.stderr.readline()
            sender = subprocess.Popen(
                [
                    *exe,
                    "simulate",
                    "--out",
                    str(experiment / "test"),
                    "--stream",
                    "lsl",
                    "--markers",
                    "--speed",
                    "30",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            procs.append(sender)
            msgs = [
                (m.header, {k: v.copy() for k, v in m.arrays.items()}) for m in collect(sub, timeout_s=180)
            ]
        assert sender.wait(60) == 0, sender.stderr.read()
        assert decoder.wait(60) == 0, decoder.stderr.read()
        mne_out, mne_err = mne.communicate(timeout=120)
        client_out, _ = client.communicate(timeout=60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()

    feats, fb, blocks, running = {}, {}, [], []
    for h, a in msgs:
        if h["kind"] == "features":
            feats[(h["roi"], h["layer"], h["seq"])] = a["features"]
        elif h["kind"] == "feedback":
            fb[h["seq"]] = h["scores"]
        elif h["kind"] == "block":
            (running if h.get("running") else blocks).append((h, a))
    end = msgs[-1][0]
    assert end["processed"] == 92 and end["skipped"] == 0

    # One block result per block, in order, with the stimulus software's label.
    assert [h["label"] for h, _ in blocks] == [e["category_label"] for e in events]
    layers, rois = blocks[0][0]["layers"], blocks[0][0]["rois"]
    pairwise = []
    for (h, a), e in zip(blocks, events):
        start = float(e["onset"]) + 6.0
        window = [s for s in range(92) if start <= s * 3.0 < start + float(e["duration"])]
        assert set(h["seqs"]) <= set(window) and len(h["seqs"]) >= len(window) - 1
        # The block's prediction is the mean of its volumes' predictions (linear decoders).
        vc = rois.index("VC")
        mean_vc = np.concatenate(
            [np.mean([feats[("VC", ly, s)] for s in h["seqs"]], axis=0) for ly in layers]
        )
        np.testing.assert_allclose(a["predictions"][vc], mean_vc, rtol=1e-5, atol=1e-6)
        pairwise.append(1 - (np.array(h["label_rank"][vc]) - 1) / (len(bank.labels) - 1))
    assert np.mean(pairwise) > 0.75  # categories never trained on, identified from their blocks
    # While a block ran, each of its volumes published the ranking of its volumes so far (until
    # its end marker arrives, the block may seem to go on for a volume).
    for h, _ in blocks:
        so_far = [r["seqs"] for r, _ in running if r["block"] == h["block"]]
        assert len(so_far) >= len(h["seqs"]) - 1
        assert [len(s) for s in so_far] == list(range(1, len(so_far) + 1))
        assert all(s[: len(h["seqs"])] == h["seqs"][: len(s)] for s in so_far), (h["seqs"], so_far)
        mine = [r for r, _ in running if r["block"] == h["block"]]
        assert all(r["label"] == h["label"] and len(r["label_rank"]) == len(rois) for r in mine)

    # Feedback: every decoded volume has its scores; the content score is the correlation.
    target_feats = bank.features["cnn8"][bank.labels.index(target)]
    for seq in range(20, 92, 10):
        r = np.corrcoef(feats[("VC", "cnn8", seq)], target_feats)[0, 1]
        assert fb[seq]["content"]["raw"] == pytest.approx(r, abs=1e-5)
        assert fb[seq]["act"]["raw"] is not None and 0 <= fb[seq]["decnef"]["raw"] <= 1

    # mne-lsl saw every stream with the documented channels and units, and the feedback flowing.
    seen = json.loads(mne_out.strip().splitlines()[-1])
    streams = seen["streams"]
    assert sorted(s["name"] for s in streams["rtdecode.features"]) == sorted(
        f"rtdecode-features-{r}" for r in rois
    )
    vc_stream = next(s for s in streams["rtdecode.features"] if s["name"] == "rtdecode-features-VC")
    assert vc_stream["n_channels"] == 8 * 50 and vc_stream["labels"][:2] == ["cnn1/0", "cnn1/1"]
    assert streams["rtdecode.motion"][0]["labels"][-2:] == ["framewise_displacement", "censored"]
    assert streams["rtdecode.motion"][0]["units"] == ["mm"] * 3 + ["deg"] * 3 + ["mm", "bool"]
    assert streams["rtdecode.feedback"][0]["labels"] == [
        "act",
        "act.raw",
        "content",
        "content.raw",
        "decnef",
        "decnef.raw",
    ]
    assert streams["rtdecode.latency"][0]["labels"][-1] == "published"
    assert len(seen["feedback"]) >= 20
    decnef_raw = [row[5] for row in seen["feedback"]]
    assert all(0 <= v <= 1 for v in decnef_raw if not np.isnan(v))

    lines = [json.loads(x) for x in client_out.splitlines() if x.strip()]
    assert len(lines) == 30 and all("decnef" in x["scores"] for x in lines)


def test_a_volume_stream_in_matlab_order_is_read_into_the_same_volume():
    """A third-party sender (MATLAB) streams volumes flattened in F order and says so."""
    from rtdecode.transport.lsl import describe_stream, monotonic_ns_to_lsl

    shape = (5, 4, 3)
    info = pylsl.StreamInfo("matlab-scanner", "fMRI", 60, 0.5, "float32", "matlab-1")
    start = monotonic_ns_to_lsl(time.monotonic_ns())
    describe_stream(
        info,
        {"shape": list(shape), "order": "F", "affine": np.eye(4).tolist(), "tr_s": 2.0, "series_start": start}
        | {"n_volumes": 2, "session": "s", "series": "r"},
    )
    outlet = pylsl.StreamOutlet(info)
    inlet = VolumeInlet("matlab-scanner")
    vols = [np.arange(60, dtype=np.float32).reshape(shape) * (k + 1) for k in range(2)]
    try:
        with pytest.raises(ReceiveTimeout):
            inlet.recv_volume(3.0)  # connects; nothing sent yet
        for k, v in enumerate(vols):
            outlet.push_chunk(v.ravel(order="F").reshape(1, -1), start + k * 2.0)
        got = [inlet.recv_volume(5.0) for _ in range(3)]
    finally:
        inlet.close()
        del outlet
    assert [g.seq for g in got[:2]] == [0, 1] and isinstance(got[2], SeriesEnd)
    for g, v in zip(got, vols):
        np.testing.assert_array_equal(g.data, v)
        assert g.data.flags.c_contiguous
