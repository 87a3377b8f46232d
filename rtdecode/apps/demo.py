"""The demo: simulate, train, decode a test session live in separate processes, and report."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

from rtdecode import __version__
from rtdecode.apps.demo_summary import live_block_summary, print_summary
from rtdecode.apps.report import write_report
from rtdecode.apps.simulate import stream_session
from rtdecode.config import Config, FeedbackConfig, to_dict
from rtdecode.errors import ConfigError
from rtdecode.io.nifti import read_events
from rtdecode.models.bank import CandidateBank
from rtdecode.models.bundle import Decoder, load_bundle
from rtdecode.offline.evaluate import block_top_k, identification_table, training_labels
from rtdecode.offline.train import train_session
from rtdecode.sim.session import simulate_session, write_session
from rtdecode.sim.subject import SimParams, Subject, make_subject

MADE_WITH = "made-with.json"  # in a demo folder: the settings its sessions and decoders were made with


def free_tcp_address() -> str:
    """A loopback TCP address whose port was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def sim_params(cfg: Config, **overrides: object) -> SimParams:
    """SimParams from the config's ``simulate`` section plus overrides, checking the keys."""
    fields = {f.name for f in dataclasses.fields(SimParams)}
    unknown = set(cfg.simulate) - fields
    if unknown:
        raise ConfigError(f"simulate: unknown key(s) {sorted(unknown)}; allowed: {sorted(fields)}")
    values = {**cfg.simulate, **overrides}
    if "shape" in values:
        values["shape"] = tuple(values["shape"])
    for key in ("tuned_change_pct", "weak_change_pct", "test_labels"):
        if key in values:
            values[key] = tuple(values[key])
    return SimParams(**values)


def _wait(proc: subprocess.Popen, timeout_s: float, name: str) -> int:
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired as err:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise TimeoutError(f"{name} did not finish within {timeout_s} s") from err


def _made_with(cfg: Config, p_train: SimParams, p_test: SimParams) -> dict:
    # What a demo folder's sessions and decoders depend on, as plain JSON values.
    config = {k: v for k, v in to_dict(cfg).items() if k != "demo"}  # the demo's pace changes nothing
    made = {"rtdecode": __version__, "sessions": [dataclasses.asdict(p) for p in (p_train, p_test)]}
    return json.loads(json.dumps(made | {"config": config}, default=str))


def _read_made_with(out: Path) -> dict | None:
    try:
        return json.loads((out / MADE_WITH).read_text())
    except (OSError, ValueError):
        return None


def _simulate_and_train(
    cfg: Config, out: Path, p_train: SimParams, p_test: SimParams, timings: dict, step: Callable[[str], None]
) -> tuple[Subject, Decoder]:
    # The demo's training and test sessions in out/train and out/test, decoders in out/decoder;
    # the simulated subject and the bundle.
    step(
        f"simulating the training session ({p_train.n_train_categories} categories x "
        f"{p_train.train_blocks_per_category} blocks of {p_train.block_volumes * p_train.tr_s:g} s)"
    )
    t = time.monotonic()
    sim_train = simulate_session(p_train)
    write_session(out / "train", p_train, sim_train)
    step(f"simulating the test session ({p_test.n_test_categories} categories never trained on)")
    write_session(out / "test", p_test, simulate_session(p_test, sim_train["subject"]))
    timings["simulate_s"] = time.monotonic() - t
    subject = sim_train["subject"]
    del sim_train

    step("training decoders (motion correction, causal preprocessing, per-unit voxel selection, ridge)")
    t = time.monotonic()
    bundle = train_session(out / "train", out / "decoder", cfg)
    timings["train_s"] = time.monotonic() - t
    step(f"trained {len(bundle.roi_names)} ROIs x {len(bundle.layers)} layers in {timings['train_s']:.1f} s")
    return subject, bundle


def run_demo(
    cfg: Config,
    out_dir: str | Path,
    summary_path: str | Path | None = None,
    transport: str = "zmq",
    dashboard_port: int | None = None,
    imagery: bool = False,
    reconstruct: bool = False,
    reuse: bool = False,
) -> dict:
    """Run the whole demo and return its summary (also written to ``summary_path``).

    With ``transport="lsl"`` the simulated scanner streams over LSL, the simulated stimulus
    software sends block markers over LSL, and the decoder publishes on LSL too and decodes each
    marked block live. With ``dashboard_port``, the dashboard is served on that port while the
    session streams (after a 10 s pause to open it) and until Ctrl-C once the demo is done, over
    LSL with stimulus markers and a feedback score, so that every panel has data. With
    ``imagery``, an imagery run of the test categories is decoded and scored too
    (:mod:`rtdecode.apps.demo_imagery`). With ``reconstruct``, the subject sees real photographs,
    blocks are decoded live from LSL markers, and ``rtdecode reconstruct`` turns each into an image
    (:mod:`rtdecode.apps.demo_photos`); the report shows them beside the photographs. With
    ``reuse``, sessions and decoders in ``out_dir`` made by this version with the same settings
    (``made-with.json``) are used again.
    """
    if transport not in ("zmq", "lsl"):
        raise ConfigError(f"demo transport must be zmq or lsl, got {transport!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    if threading.current_thread() is threading.main_thread():  # SIGTERM as Ctrl-C: children stop too
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    timings = {}

    def step(msg: str) -> None:
        print(f"[{time.monotonic() - t_start:6.1f} s] {msg}", flush=True)

    overrides: dict = {}
    if reconstruct:
        from rtdecode.apps.demo_photos import prepare_photo_demo

        step("EfficientNet-lite0 features of scikit-image's photographs and of crops of other ones")
        cfg, overrides = prepare_photo_demo(cfg, out)
        transport = "lsl"  # the blocks to reconstruct are decoded live from stimulus markers
    if dashboard_port is not None:
        transport = "lsl"  # every panel of the page has something to show: blocks need markers
    p_train = sim_params(cfg, kind="train", seed=1, **overrides)
    p_test = sim_params(cfg, kind="test", seed=2, **overrides)
    made_with = _made_with(cfg, p_train, p_test)
    if reuse and _read_made_with(out) == made_with:
        step(f"reusing the simulated sessions and trained decoders in {out} (made with the same settings)")
        subject = make_subject(p_train) if imagery else None
        bundle = load_bundle(out / "decoder")
    else:
        if reuse:
            step(f"nothing in {out} was made with these settings: simulating and training")
        (out / MADE_WITH).unlink(missing_ok=True)  # written again once sessions and decoders agree
        subject, bundle = _simulate_and_train(cfg, out, p_train, p_test, timings, step)
        (out / MADE_WITH).write_text(json.dumps(made_with, indent=1))

    # The photo demo's decoder ranks the test photographs (GOD: not the training categories).
    candidates = str(out / "bank" / "test-candidates.npz") if reconstruct else ""
    run_cfg = dataclasses.replace(
        cfg.run, bundle=str(out / "decoder"), candidates=candidates, transport=transport
    )
    if transport == "lsl":
        run_cfg.lsl = dataclasses.replace(run_cfg.lsl, outputs=True)
        run_cfg.blocks = dataclasses.replace(run_cfg.blocks, enabled=True, hrf_shift_s=cfg.train.hrf_shift_s)
    if dashboard_port is not None and not run_cfg.feedback:  # ... and a feedback score
        roi = "VC" if "VC" in bundle.roi_names else bundle.roi_names[-1]
        target = read_events(out / "test" / "events.tsv")[0]["category_label"]
        run_cfg.feedback = [FeedbackConfig(name="content", roi=roi, layer=bundle.layers[-1], target=target)]
    run_cfg.input = dataclasses.replace(run_cfg.input, address=free_tcp_address(), bind=True)
    run_cfg.output = dataclasses.replace(run_cfg.output, address=free_tcp_address(), bind=True)
    if dashboard_port is not None:  # a dashboard restarted during the demo gets the session so far
        run_cfg.history = dataclasses.replace(run_cfg.history, address=free_tcp_address(), bind=True)
    cfg_path = out / "run.yaml"
    cfg_path.write_text(yaml.safe_dump({"run": to_dict(Config(run=run_cfg))["run"]}))
    ready, results = out / "subscriber.ready", out / "results.npz"
    rec_ready, recording = out / "recorder.ready", out / "recording.h5"
    for path in (ready, results, rec_ready, recording):
        path.unlink(missing_ok=True)
    exe = [sys.executable, "-m", "rtdecode"]
    step("starting the decoder, a subscriber and a recorder as separate processes")
    decoder = subprocess.Popen([*exe, "run", "-c", str(cfg_path), "--exit-after-series"])
    subscriber = subprocess.Popen(
        [
            *exe,
            "subscribe",
            "--address",
            run_cfg.output.address,
            "--save",
            str(results),
            "--ready-file",
            str(ready),
            "--until-end",
            "--timeout",
            str(cfg.demo.timeout_s),
            *(["--layer", "fc"] if reconstruct else []),  # EfficientNet's logits
        ]
    )
    recorder = subprocess.Popen(
        [
            *exe,
            "record",
            "--address",
            run_cfg.output.address,
            "--out",
            str(recording),
            "--ready-file",
            str(rec_ready),
            "--timeout",
            str(cfg.demo.timeout_s),
        ]
    )
    procs = [decoder, subscriber, recorder]
    dash_ready, recon_ready = out / "dashboard.ready", out / "reconstructor.ready"
    waiting = [ready, rec_ready]
    recon_pub = free_tcp_address()
    for path in (dash_ready, recon_ready):
        path.unlink(missing_ok=True)
    if reconstruct:
        from rtdecode.apps.demo_photos import reconstructor_command

        waiting.append(recon_ready)
        steps = cfg.demo.reconstruct_steps
        cmd = reconstructor_command(exe, run_cfg.output.address, recon_pub, out, recon_ready, 600, steps)
        procs.append(subprocess.Popen(cmd))
    if dashboard_port is not None:
        procs.append(
            subprocess.Popen(
                [
                    *exe,
                    "dashboard",
                    "--address",
                    run_cfg.output.address,
                    "--port",
                    str(dashboard_port),
                    "--ready-file",
                    str(dash_ready),
                    "--history-from",
                    run_cfg.history.address,
                    *(["--reconstructions", recon_pub] if reconstruct else []),
                ]
            )  # fmt: skip
        )
        waiting.append(dash_ready)
    try:
        deadline = time.monotonic() + 60
        while not all(path.exists() for path in waiting):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError("a demo process did not come up (see its messages above)")
            time.sleep(0.05)
        if dashboard_port is not None:
            step(f"open the dashboard: {dash_ready.read_text().strip()} (streaming starts in 10 s)")
            time.sleep(10)
        via = "LSL, with stimulus markers," if transport == "lsl" else "ZeroMQ"
        step(f"streaming the test session over {via} at {cfg.demo.speed:g}x real time")
        t = time.monotonic()
        n_sent = stream_session(
            out / "test" / "bold.nii",
            "lsl" if transport == "lsl" else run_cfg.input.address,
            cfg.demo.speed,
            "demo",
            "test",
            markers=transport == "lsl",
        )
        _wait(subscriber, cfg.demo.timeout_s, "subscriber")
        _wait(recorder, 30, "recorder")
        _wait(decoder, 30, "decoder")
        timings["stream_s"] = time.monotonic() - t
        if reconstruct:
            step("waiting for the last reconstructions (one image per block, in block order)")
            _wait(procs[3], 1200, "reconstructor")
            timings["reconstruct_s"] = time.monotonic() - t
        step("writing the session report")
        report = write_report(
            recording,
            out / "report.html",
            out / "test" / "events.tsv",
            out / "decoder" / "candidates.npz",
            cfg.train.hrf_shift_s,
            reconstructions=out / "reconstructions" if reconstruct else None,
            stimuli=out / "stimuli" if reconstruct else None,
            bold=out / "test" / "bold.nii",
        )
        summary = evaluate_demo(out, results, p_test, cfg, n_sent)
        if reconstruct:
            from rtdecode.apps.demo_photos import score_reconstructions

            summary["reconstruction"] = score_reconstructions(out)
        if imagery:
            from rtdecode.apps.demo_imagery import run_imagery

            step("simulating an imagery run of the test categories and decoding it with the same pipeline")
            t = time.monotonic()
            summary["imagery"] = run_imagery(cfg, run_cfg, out, p_test, subject, recording)
            timings["imagery_s"] = time.monotonic() - t
        summary["transport"] = transport
        summary["recording"], summary["report"] = str(recording), str(report)
        summary["timings_s"] = {**timings, "total_s": time.monotonic() - t_start}
        print_summary(summary)
        if summary_path is not None:
            Path(summary_path).write_text(json.dumps(summary, indent=1))
        if dashboard_port is not None:
            print(f"\nthe dashboard stays up at {dash_ready.read_text().strip()} until Ctrl-C", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                procs[-1].wait()
    finally:
        for proc in procs:  # all exited unless something failed; the dashboard until Ctrl-C
            if proc.poll() is None:
                proc.terminate()
    return summary


def evaluate_demo(out: Path, results: Path, p: SimParams, cfg: Config, n_sent: int) -> dict:
    """Score the subscriber's recording of the test session against the simulator's truth."""
    with np.load(results, allow_pickle=False) as z:
        seqs = z["seq"]
        end = json.loads(str(z["end"]))
        feats = {tuple(k.split("/")[1:]): z[k] for k in z.files if k.startswith("features/")}
        status = z["status"]
        censored = z["censored"]
        live = json.loads(str(z["blocks"]))
    if cfg.train.scrub_censored:  # as in training: flagged volumes stay out of the block averages
        for f in feats.values():
            f[censored] = np.nan
    full = CandidateBank.load(out / "decoder" / "candidates.npz")
    # GOD's convention: the test categories against the other test and unseen ones, not the trained.
    bank = full.without(training_labels(out / "test"))
    events = read_events(out / "test" / "events.tsv")
    onsets = np.array([float(e["onset"]) for e in events])
    duration = float(events[0]["duration"])
    times = seqs * p.tr_s
    shift = cfg.train.hrf_shift_s
    truth = np.array([bank.labels.index(e["category_label"]) for e in events])
    table = identification_table(feats, times, onsets, duration, shift, truth, bank)
    roi = "VC" if "VC" in table else sorted(table)[0]
    per_layer = table[roi]
    vc = {layer: f for (r, layer), f in feats.items() if r == roi}
    idx, val, kept = block_top_k(vc, times, onsets, duration, shift, bank, 5)
    blocks = [
        {
            "block": int(b),
            "truth": bank.labels[truth[b]],
            "top5": [bank.labels[i] for i in row],
            "scores": [round(float(s), 3) for s in srow],
            "truth_in_top5": bool(truth[b] in row),
        }
        for b, row, srow in zip(kept, idx, val)
    ]
    lat = end.get("latency_ms", {}) if end else {}
    live_blocks = live_block_summary(live, roi, events, len(full.labels))
    return {
        "live_blocks": live_blocks,
        "identification_accuracy": {
            "roi": roi,
            "mean": float(np.mean(list(per_layer.values()))),
            "per_layer": per_layer,
            "per_roi": table,
            "chance": 0.5,
            "n_blocks": int(kept.size),
            "n_candidates": len(bank.labels),
        },
        "top5_hit_rate": float(np.mean([b["truth_in_top5"] for b in blocks])) if blocks else 0.0,
        "blocks": blocks,
        "volumes": {
            "sent": int(n_sent),
            "processed": int(end.get("processed", 0)) if end else 0,
            "skipped": int(end.get("skipped", 0)) if end else 0,
            "dropped": int(end.get("dropped", 0)) if end else 0,
            "received_by_subscriber": int(seqs.size),
            "decoded": int((status == "ok").sum()),
            "censored": int(censored.sum()),
        },
        "latency_ms": lat,
        "simulation": {
            "shape": list(p.shape),
            "voxel_size_mm": p.voxel_size_mm,
            "tr_s": p.tr_s,
            "tsnr": p.tsnr,
            "tuned_fraction": p.tuned_fraction,
            "tuned_change_pct": list(p.tuned_change_pct),
            "weak_change_pct": list(p.weak_change_pct),
            "max_translation_mm": p.max_translation_mm,
            "max_rotation_deg": p.max_rotation_deg,
            "n_train_categories": p.n_train_categories,
            "n_test_categories": p.n_test_categories,
            "n_units_per_layer": p.n_units,
        },
    }
