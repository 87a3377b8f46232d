"""Recording layout, and the golden test: live over ZeroMQ equals `rtdecode offline`."""

import json
import shutil
import subprocess
import sys

import h5py
import nibabel as nib
import numpy as np
import pytest
from helpers import free_address, small_config, small_params, wait_for_file

from rtdecode.config import NUISANCE_REGRESSORS
from rtdecode.io.confounds import CONFOUND_COLUMNS
from rtdecode.io.nifti import iter_volumes
from rtdecode.io.recorder import Recorder
from rtdecode.models.bank import CandidateBank
from rtdecode.offline.evaluate import evaluate_session
from rtdecode.sim.physio import simulate_recording, write_physio
from rtdecode.sim.session import simulate_session, write_session
from rtdecode.sim.subject import make_subject, slice_times
from rtdecode.volume import Stage
from rtdecode.wire import messages as m


def test_recorder_layout_and_confounds(tmp_path):
    path = tmp_path / "rec.h5"
    with Recorder(path, meta={"x": 1}) as rec:
        for seq in range(3):
            base = {"seq": seq, "session": "s", "series": "r", "status": "ok", "acq_time_s": 1e9, "tr_s": 2.0}
            rec.publish(
                m.Motion(
                    **base,
                    params=[seq, 0, 0, 0, 0, 90.0 * seq],
                    fd_mm=1.0 * seq,
                    censored=seq == 2,
                    fd_threshold_mm=1.5,
                    iterations=3,
                )
            )
            rec.publish(m.Features(**base, roi="VC", layer="cnn1", features=np.full(4, seq, np.float32)))
            rec.publish(
                m.Ranking(
                    **base,
                    censored=seq == 2,
                    rois=["VC"],
                    layers=["cnn1"],
                    labels=[[["a", "b"]]],
                    indices=np.array([[[seq, 9]]], np.int32),
                    scores=np.ones((1, 1, 2), np.float32),
                )
            )
            rec.publish(m.Latency(**base, stamps={"received": 10 + seq, "published": 20}, ms={}))
        rec.publish(m.Status(event="end", processed=3))
    with h5py.File(path) as f:
        assert f.attrs["format"] == "rtdecode-recording" and f.attrs["version"] == 1
        np.testing.assert_array_equal(f["volumes/seq"][:], [0, 1, 2])
        np.testing.assert_array_equal(f["features/VC/cnn1"][:, 0], [0, 1, 2])
        np.testing.assert_array_equal(f["ranking/indices"][:, 0, 0, 0], [0, 1, 2])
        np.testing.assert_array_equal(f["volumes/censored"][:], [False, False, True])
        assert list(f["ranking"].attrs["rois"]) == ["VC"]
        assert f["volumes/stamps"][1, Stage.RECEIVED] == 11
        assert b"end" in f["status/events"][0]
    rows = [line.split("\t") for line in rec.confounds_path.read_text().splitlines()]
    assert tuple(rows[0]) == CONFOUND_COLUMNS
    assert rows[1][-1] == "n/a" and float(rows[3][-1]) == 2.0
    assert float(rows[2][5]) == np.float64(np.pi / 2).round(6)  # rotations in radians, as fMRIPrep


def test_rows_written_in_runs_equal_rows_written_one_volume_at_a_time(tmp_path):
    # A backlog's messages interleave volumes, a baseline volume has no features or ranking, and
    # a volume can come before an earlier one: written once at the end (offline) or at each
    # volume's end (live), every dataset holds the same rows. The sender reuses each features
    # array as soon as it is published: what was published is what is written.
    rng = np.random.default_rng(0)
    order = [0, 1, 3, 2, 4, 5, 6]
    msgs, published = [], {}

    def base(seq):
        return {
            "seq": seq,
            "session": "s",
            "series": "r",
            "status": "ok",
            "acq_time_s": 1e9 + seq,
            "tr_s": 2.0,
        }

    for seq in order:
        msgs.append(m.Motion(**base(seq), params=list(rng.normal(size=6)), fd_mm=0.1 * seq, censored=False,
                             fd_threshold_mm=0.5, iterations=2))  # fmt: skip
        if seq != 4:  # 4 is a baseline volume: not decoded
            msgs.append(
                m.Features(
                    **base(seq), roi="VC", layer="cnn1", features=rng.normal(size=3).astype(np.float32)
                )
            )
        msgs.append(m.Status(event="heartbeat"))
    for seq in order:  # the backlog's rankings and latencies after all its volumes' features
        ranked = {"indices": np.array([[[seq, 1]]], np.int32), "scores": np.ones((1, 1, 2), np.float32)}
        if seq == 4:
            ranked = {"indices": None, "scores": None}
        msgs.append(
            m.Ranking(
                **base(seq), censored=False, rois=["VC"], layers=["cnn1"], labels=[[["a", "b"]]], **ranked
            )
        )
        msgs.append(
            m.Latency(**base(seq), stamps={"received": seq}, ms={}, acquired_from="trigger" * (seq % 2))
        )
    files = {}
    for flush_s in (0.0, np.inf):
        files[flush_s] = tmp_path / f"rec-{flush_s}.h5"
        with Recorder(files[flush_s], flush_s=flush_s) as rec:
            for msg in msgs:
                if isinstance(msg, m.Features):
                    published[msg.seq] = msg.features.copy()
                rec.publish(msg)
                if isinstance(msg, m.Features):
                    msg.features[:] = np.nan  # reused at once
                    msg.features = published[msg.seq].copy()  # for the next recorder
    datasets = {}
    for flush_s, path in files.items():
        with h5py.File(path) as f:
            found = {}
            f.visititems(
                lambda k, v, found=found: found.update({k: v[()]}) if isinstance(v, h5py.Dataset) else None
            )
            datasets[flush_s] = found
            assert f["motion/params"].attrs["fd_threshold_mm"] == 0.5
    assert datasets[0.0].keys() == datasets[np.inf].keys() and len(datasets[0.0]) > 10
    for name, rows in datasets[0.0].items():
        np.testing.assert_array_equal(rows, datasets[np.inf][name], err_msg=name)
    np.testing.assert_array_equal(datasets[0.0]["volumes/seq"], order)
    for row, seq in enumerate(order):
        if seq != 4:
            np.testing.assert_array_equal(datasets[np.inf]["features/VC/cnn1"][row], published[seq])
    assert np.isnan(datasets[0.0]["features/VC/cnn1"][order.index(4)]).all()


def _compare_with_offline(live_path, off_path, n):
    with h5py.File(live_path) as live, h5py.File(off_path) as off:
        np.testing.assert_array_equal(live["volumes/seq"][:], np.arange(n))
        np.testing.assert_array_equal(off["volumes/seq"][:], np.arange(n))
        np.testing.assert_array_equal(live["volumes/status"][:], off["volumes/status"][:])
        names = []
        live["features"].visit(
            lambda k: names.append(k) if isinstance(live["features"][k], h5py.Dataset) else None
        )
        assert len(names) == 5 * 8
        for name in names:
            np.testing.assert_allclose(
                live["features"][name][:], off["features"][name][:], rtol=1e-5, atol=1e-5, equal_nan=True
            )
        np.testing.assert_array_equal(live["ranking/indices"][:], off["ranking/indices"][:])
        np.testing.assert_allclose(live["motion/params"][:], off["motion/params"][:], atol=1e-9)
        np.testing.assert_array_equal(live["input/data"][:], off["input/data"][:])


def _start_decoder_and_recorder(
    experiment, tmp_path, run_decoder, transport="zmq", denoise=False, slice_timing=False
):
    cfg = small_config()
    cfg.run.bundle = str(experiment / "decoder")
    cfg.run.preprocess.slice_timing = slice_timing
    if denoise:  # every denoising step on: streamed and offline must still agree
        cfg.run.preprocess.despike.enabled = True
        cfg.run.preprocess.nuisance.regressors = list(NUISANCE_REGRESSORS)
    cfg.run.publish_input = True
    cfg.run.transport = transport
    cfg.run.input.address, cfg.run.output.address = free_address(), free_address()
    cfg_path = tmp_path / "run.yaml"
    exe = [sys.executable, "-m", "rtdecode"]
    decoder = run_decoder(cfg, "--exit-after-series", stderr=subprocess.PIPE, text=True)
    ready = tmp_path / "recorder.ready"
    recorder = subprocess.Popen(
        [
            *exe,
            "record",
            "--address",
            cfg.run.output.address,
            "--out",
            str(tmp_path / "live.h5"),
            "--ready-file",
            str(ready),
            "--timeout",
            "120",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_file(ready, proc=recorder)
    return cfg, cfg_path, decoder, recorder


def _finish(procs, cfg_path, bold, tmp_path):
    """Wait for the live processes, then run `rtdecode offline` on the same series."""
    try:
        for p in procs:
            assert p.wait(120) == 0, p.stderr.read()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            p.stderr.close()
    cmd = [
        sys.executable,
        "-m",
        "rtdecode",
        "offline",
        "-c",
        str(cfg_path),
        "--bold",
        str(bold),
        "--out",
        str(tmp_path / "offline.h5"),
        "--record-input",
    ]
    offline = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert offline.returncode == 0, offline.stderr


def test_golden_live_zeromq_equals_offline(experiment, tmp_path, run_decoder):
    """With slice-timing correction: the series carries its slice times (a BIDS sidecar, as
    dcm2niix writes one) over the wire live, and from the sidecar offline."""
    bold = tmp_path / "bold.nii"
    shutil.copy(experiment / "test" / "bold.nii", bold)
    img = nib.load(bold)
    tr = float(img.header.get_zooms()[3])
    times = slice_times("interleaved", img.shape[2], tr).tolist()
    (tmp_path / "bold.json").write_text(json.dumps({"SliceTiming": times, "RepetitionTime": tr}))
    cfg, cfg_path, decoder, recorder = _start_decoder_and_recorder(
        experiment, tmp_path, run_decoder, slice_timing=True
    )
    exe = [sys.executable, "-m", "rtdecode"]
    sender = subprocess.run(
        [*exe, "replay", str(bold), "--to", cfg.run.input.address, "--speed", "100"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert sender.returncode == 0, sender.stderr
    _finish([recorder, decoder], cfg_path, bold, tmp_path)
    n = len(list(iter_volumes(bold)))
    _compare_with_offline(tmp_path / "live.h5", tmp_path / "offline.h5", n)
    with h5py.File(tmp_path / "live.h5") as live:
        np.testing.assert_array_equal(live["input/data"][0], next(iter_volumes(bold)).data)
    confounds = (tmp_path / "live_desc-confounds_timeseries.tsv").read_text().splitlines()
    assert len(confounds) == n + 1
    # GOD's measures of the live recording (the CLI) and of the offline run agree; the ROI x layer
    # table shows the hierarchy.
    cmd = [sys.executable, "-m", "rtdecode", "evaluate", str(tmp_path / "live.h5"), "--session"]
    cmd += [str(experiment / "test"), "--json", str(tmp_path / "eval.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "pairwise identification accuracy" in proc.stdout
    live = json.loads((tmp_path / "eval.json").read_text())
    bank = CandidateBank.from_features(experiment / "test" / "features.npz")
    off = evaluate_session(tmp_path / "offline.h5", experiment / "test", bank, 6.0)
    for measure in ("identification", "feature_correlation"):
        for roi, row in off[measure].items():
            for layer, v in row.items():
                assert abs(live[measure][roi][layer] - v) < 0.01
    ident = off["identification"]
    layers = list(ident["V1"])
    best = {roi: int(np.argmax([ident[roi][ly] for ly in layers])) for roi in ("V1", "LOC")}
    assert best["V1"] < best["LOC"]
    assert np.mean(list(ident["VC"].values())) > 0.8
    assert np.mean(list(off["feature_correlation"]["VC"].values())) > 0.2


def test_golden_live_lsl_equals_offline(experiment, tmp_path, run_decoder):
    """The same series over an LSL stream of type fMRI decodes exactly as offline, with every
    denoising step on: despiking and every nuisance regressor, the physiological ones from a
    cardiac and respiratory recording streamed live over LSL (type physio) and read offline from
    the BIDS file beside the series (live without its samples would differ from offline)."""
    cfg, cfg_path, decoder, recorder = _start_decoder_and_recorder(
        experiment, tmp_path, run_decoder, "lsl", denoise=True
    )
    bold = tmp_path / "bold.nii"
    shutil.copy(experiment / "test" / "bold.nii", bold)
    img = nib.load(bold)
    duration = img.shape[3] * float(img.header.get_zooms()[3]) + 5
    write_physio(tmp_path / "physio.tsv.gz", simulate_recording(duration, np.random.default_rng(5)))
    sender = subprocess.run(
        [
            *[sys.executable, "-m", "rtdecode", "replay", str(bold), "--to", "lsl", "--speed", "50"],
            *["--physio", str(tmp_path / "physio.tsv.gz")],
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert sender.returncode == 0, sender.stderr
    _finish([recorder, decoder], cfg_path, bold, tmp_path)
    _compare_with_offline(tmp_path / "live.h5", tmp_path / "offline.h5", len(list(iter_volumes(bold))))
    with h5py.File(tmp_path / "live.h5") as live:
        stamps = live["volumes/stamps"][:]
    # Acquisition stamps came over LSL (its clock, time-corrected): every hop is positive.
    assert (stamps[:, Stage.RECEIVED] > stamps[:, Stage.ACQUIRED]).all()


def test_golden_multi_echo_live_equals_offline(experiment, tmp_path, run_decoder):
    """A multi-echo series (three echoes of the experiment's subject, BIDS echo files) sent live
    over ZeroMQ, echoes along the fourth axis with their times in the header, decodes as offline."""
    p = small_params("test", 3, echo_times_ms=(14.0, 30.0, 46.0))
    write_session(tmp_path / "me", p, simulate_session(p, make_subject(small_params("train", 1))))
    bold = tmp_path / "me" / "echo-1_bold.nii"
    cfg, cfg_path, decoder, recorder = _start_decoder_and_recorder(experiment, tmp_path, run_decoder)
    sender = subprocess.run(
        [
            sys.executable,
            "-m",
            "rtdecode",
            "replay",
            str(bold),
            "--to",
            cfg.run.input.address,
            "--speed",
            "100",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert sender.returncode == 0, sender.stderr
    _finish([recorder, decoder], cfg_path, bold, tmp_path)
    _compare_with_offline(tmp_path / "live.h5", tmp_path / "offline.h5", nib.load(bold).shape[3])
    with h5py.File(tmp_path / "live.h5") as live:
        assert live["input/data"].shape[1:] == (*p.shape, 3)
        assert (live["ranking/indices"][:] >= 0).any()


def test_golden_folder_path_equals_offline(experiment, tmp_path, run_decoder):
    """Scanner files written into a watched folder at TR pace -> bridge -> decoder -> recorder."""
    cfg, cfg_path, decoder, recorder = _start_decoder_and_recorder(experiment, tmp_path, run_decoder)
    bold = experiment / "test" / "bold.nii"
    exe = [sys.executable, "-m", "rtdecode"]
    watched = tmp_path / "export"
    watched.mkdir()
    bridge = subprocess.Popen(
        [
            *exe,
            "bridge",
            "--watch",
            str(watched),
            "--to",
            cfg.run.input.address,
            "--tr-s",
            "3",
            "--idle-exit",
            "3",
            "--end-series",
            "--ready-file",
            str(tmp_path / "bridge.ready"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_file(tmp_path / "bridge.ready", proc=bridge)
    replay = subprocess.run(
        [*exe, "replay", str(bold), "--folder", str(watched), "--speed", "30"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert replay.returncode == 0, replay.stderr
    _finish([bridge, recorder, decoder], cfg_path, bold, tmp_path)
    n = len(list(iter_volumes(bold)))
    _compare_with_offline(tmp_path / "live.h5", tmp_path / "offline.h5", n)  # one output per volume


@pytest.fixture(scope="module")
def recorded_input(experiment, tmp_path_factory):
    """`rtdecode offline`'s recording of the test series with its input volumes."""
    from rtdecode.apps.batch import decode_series

    cfg = small_config().run
    cfg.bundle = str(experiment / "decoder")
    path = tmp_path_factory.mktemp("recorded") / "rec.h5"
    decode_series(cfg, experiment / "test" / "bold.nii", path, record_input=True)
    return path


def test_replay_of_a_recording_sends_its_input_volumes(experiment, recorded_input, tmp_path):
    from rtdecode import wire
    from rtdecode.io.recording import input_volumes
    from rtdecode.transport.zmq import Receiver

    bold = experiment / "test" / "bold.nii"
    originals = list(iter_volumes(bold))
    replayed = list(input_volumes(recorded_input))
    assert len(replayed) == len(originals)
    np.testing.assert_array_equal(replayed[5].data, originals[5].data)
    address = free_address()
    with Receiver(address) as rx:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "rtdecode",
                "replay",
                str(recorded_input),
                "--to",
                address,
                "--speed",
                "inf",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        topics = [rx.recv(10).topic for _ in range(len(originals) + 1)]
    assert topics == [wire.VOLUME_TOPIC] * len(originals) + [wire.END_TOPIC]


def test_a_truncated_recording_gives_what_survives_and_nothing_else(recorded_input, tmp_path):
    # Cut anywhere, a recording either says it is unreadable or gives exactly the leading rows
    # of the whole one: nothing read from the missing tail (zeros to HDF5) is taken for data.
    from rtdecode.errors import RecordingError
    from rtdecode.io.recording import Recording, input_volumes

    whole, data = Recording.load(recorded_input), recorded_input.read_bytes()
    volumes = [v.data for v in input_volumes(recorded_input)]
    cut = tmp_path / "cut.h5"
    survived = {}
    for share in (0.01, 0.05, 0.2, 0.5, 0.8, 0.99):
        cut.write_bytes(data[: int(len(data) * share)])
        try:
            part = Recording.load(cut)
        except RecordingError as err:
            assert "truncated" in str(err) or "no volume it can read" in str(err)
            continue
        n = part.seq.size
        assert part.truncated == (int(len(data) * share), len(data)) and part.lost
        for name in ("seq", "censored", "stamps", "motion", "fd_mm"):
            got = getattr(part, name)
            if got is not None and len(got):
                np.testing.assert_array_equal(got, getattr(whole, name)[:n])
        for key, features in part.features.items():
            np.testing.assert_array_equal(features, whole.features[key][:n])
        read = [v.data for v in input_volumes(cut)]
        assert all(np.array_equal(a, b) for a, b in zip(read, volumes))
        survived[share] = len(read)
    # The input volumes lie in the file in time order: about half of them survive half the file.
    assert survived[0.5] >= 0.4 * len(volumes) and survived[0.99] >= len(volumes) - 2
    assert survived[0.2] < survived[0.5] < survived[0.8]
