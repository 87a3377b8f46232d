"""The decoder as a real process: volumes over real ZeroMQ sockets from another process."""

import subprocess
import sys
import time

import numpy as np
import pytest
import zmq as zmq
from helpers import collect, free_address, small_config

from rtdecode import wire
from rtdecode.apps.setup import build_pipeline
from rtdecode.io.nifti import iter_volumes
from rtdecode.transport.zmq import Subscriber, VolumeSender
from rtdecode.volume import NOT_REACHED, Stage, stamps_from_dict


@pytest.fixture
def decoder(experiment, run_decoder):
    cfg = small_config()
    cfg.run.bundle = str(experiment / "decoder")
    cfg.run.input.address, cfg.run.output.address = free_address(), free_address()
    proc = run_decoder(cfg, "--exit-after-series", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with Subscriber(cfg.run.output.address) as sub:
        collect(sub, lambda m: m.topic == "status", 60)  # the subscription is live
        yield cfg.run, sub, proc


def test_one_ranking_per_volume_in_order_from_a_sender_process(decoder, experiment):
    run_cfg, sub, proc = decoder
    sender = subprocess.run(
        [
            sys.executable,
            "-m",
            "rtdecode",
            "simulate",
            "--out",
            str(experiment / "test"),
            "--stream",
            run_cfg.input.address,
            "--speed",
            "100",
            "--series",
            "live",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert sender.returncode == 0, sender.stderr
    msgs = collect(sub)
    n = len(list(iter_volumes(experiment / "test" / "bold.nii")))
    rankings = [m for m in msgs if m.topic == "ranking"]
    assert [m.header["seq"] for m in rankings] == list(range(n))
    ok = [m for m in rankings if m.header["status"] == "ok"]
    assert len(ok) == n - run_cfg.preprocess.baseline_volumes
    assert ok[0].arrays["indices"].shape == (len(ok[0].header["rois"]), 8, run_cfg.top_k)
    latency = [m for m in msgs if m.topic == "latency"]
    assert len(latency) == n and all(m.header["ms"]["end_to_end"] > 0 for m in latency)
    end = msgs[-1].header
    assert (end["processed"], end["skipped"], end["n_sent"]) == (n, 0, n)
    assert proc.wait(30) == 0
    assert "end_to_end" in proc.stdout.read()

    # Streaming equals offline: the same volumes through the offline driver give the same features.
    pipe = build_pipeline(run_cfg)
    offline = {r.volume.seq: r for r in pipe.process_series(iter_volumes(experiment / "test" / "bold.nii"))}
    roi_i = pipe.decoder.roi_names.index("VC")
    sl = pipe.decoder.layer_slices["cnn8"]
    live = {m.header["seq"]: m.arrays["features"] for m in msgs if m.topic == "features.VC.cnn8"}
    assert len(live) == len(ok)
    for seq, f in live.items():
        np.testing.assert_allclose(f, offline[seq].predictions[roi_i, sl], rtol=1e-5, atol=1e-5)


def test_broken_messages_do_not_stop_the_decoder(decoder, experiment):
    run_cfg, sub, proc = decoder
    vols = list(iter_volumes(experiment / "test" / "bold.nii"))[:12]
    bad = [
        [b"volume", b"{not json"],
        [b"volume"],
        wire.encode("volume", {"kind": "volume"}, {"data": np.zeros((2, 2, 2), np.float32)}),
        [b"volume", b'{"protocol": "rtdecode", "version": 7, "arrays": []}'],
    ]
    with VolumeSender(run_cfg.input.address) as tx:
        for i, vol in enumerate(vols):
            if i == 9:
                tx.send(vol)  # a repeated volume
            if i == 10:
                wrong = np.zeros((10, 10, 10), np.int16)
                tx.send(type(vol)(wrong, vol.affine, 99, vol.tr_s, vol.acq_time_s, vol.session, vol.series))
            if i == 11:
                nan = vol.data.astype(np.float32)
                nan[0, 0, 0] = np.nan  # outside the brain: still refused, the pose must not be poisoned
                tx.send(
                    type(vol)(nan, vol.affine, vol.seq, vol.tr_s, vol.acq_time_s, vol.session, vol.series)
                )
            if i < len(bad):
                tx.send_frames(bad[i])
            tx.send(vol)
        tx.send_end(vols[0].session, vols[0].series, len(vols))
    msgs = collect(sub)
    skipped = [m.header["reason"] for m in msgs if m.header.get("event") == "skipped"]
    assert len(skipped) == len(bad) + 3, skipped
    assert any("not valid JSON" in r for r in skipped)
    assert any("version 7" in r for r in skipped)
    assert any("repeats or precedes" in r for r in skipped)
    assert any("shape (10, 10, 10)" in r for r in skipped)
    assert any("non-finite" in r for r in skipped)
    seqs = [m.header["seq"] for m in msgs if m.topic == "ranking"]
    assert seqs == list(range(12))  # every good volume still produced its ranking
    assert msgs[-1].header["processed"] == 12


def test_a_sender_that_exits_right_after_sending_delivers_every_volume_intact():
    # Regression: zero-copy frames still queued when the sender process exited were freed under
    # libzmq's I/O thread (volumes lost, tails overwritten, segfault at exit). A slow receiver
    # (receive queue of one) forces the sender to hold most volumes when it closes.
    from rtdecode.transport.zmq import Receiver

    n = 300
    address = free_address()
    code = (
        "import numpy as np\n"
        "from rtdecode.transport.zmq import VolumeSender\n"
        "from rtdecode.volume import Volume\n"
        f"with VolumeSender({address!r}) as tx:\n"
        f"    for k in range({n}):\n"
        "        tx.send(Volume(np.full((64, 64, 36), k, np.int16), np.eye(4), k, 2.0, 0.0, 's', 'r'))\n"
        f"    tx.send_end('s', 'r', {n})\n"
        "    print('queued', flush=True)\n"
    )
    with (
        Receiver(address) as rx,
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as sender,
    ):
        rx.socket.setsockopt(zmq.RCVHWM, 1)
        assert sender.stdout.readline().strip() == "queued"
        time.sleep(0.5)
        seqs, intact = [], []
        while (msg := rx.recv(30.0)).topic == wire.VOLUME_TOPIC:
            vol = wire.decode_volume(msg)
            seqs.append(vol.seq)
            intact.append(bool((vol.data == vol.seq).all()))
        assert msg.header["n_sent"] == n
        assert sender.wait(30) == 0
    assert seqs == list(range(n))
    assert all(intact)


def test_a_backlog_is_ranked_in_batches_with_the_rankings_of_volumes_taken_one_by_one(
    experiment, run_decoder
):
    # Every volume sent at once: they queue while the decoder sets up its reference, and are taken
    # up to run.batch_volumes at a time, ranked in one pass over the bank.
    cfg = small_config()
    cfg.run.bundle = str(experiment / "decoder")
    cfg.run.batch_volumes = 5
    cfg.run.input.address, cfg.run.output.address = free_address(), free_address()
    vols = list(iter_volumes(experiment / "test" / "bold.nii"))
    proc = run_decoder(cfg, "--exit-after-series")
    with Subscriber(cfg.run.output.address) as sub:
        collect(sub, lambda m: m.topic == "status", 60)
        with VolumeSender(cfg.run.input.address) as tx:
            for vol in vols:
                tx.send(vol)
            tx.send_end(vols[0].session, vols[0].series, len(vols))
        msgs = collect(sub)
    assert proc.wait(30) == 0
    rankings = {m.header["seq"]: m for m in msgs if m.topic == "ranking"}
    assert sorted(rankings) == list(range(len(vols)))
    stamps = [stamps_from_dict(m.header["stamps"]) for m in msgs if m.topic == "latency"]
    assert len(stamps) == len(vols)
    # Volume i+1 decoded before volume i was ranked: the two were ranked together.
    together = [
        s[Stage.DECODED] != NOT_REACHED and t[Stage.DECODED] < s[Stage.IDENTIFIED]
        for s, t in zip(stamps, stamps[1:])
    ]
    runs = "".join("1" if x else "0" for x in together).split("0")
    assert max(len(r) for r in runs) + 1 == cfg.run.batch_volumes  # batches formed, none beyond the limit

    pipe = build_pipeline(cfg.run)
    for res in pipe.process_series(iter_volumes(experiment / "test" / "bold.nii")):
        live = rankings[res.volume.seq]
        assert live.header["status"] == res.status
        if res.status == "ok":
            np.testing.assert_array_equal(live.arrays["indices"], res.top_indices)
            np.testing.assert_allclose(live.arrays["scores"], res.top_scores, atol=1e-6)
