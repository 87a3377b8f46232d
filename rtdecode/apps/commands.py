"""What each ``rtdecode`` command does, given its parsed arguments (``rtdecode/cli.py`` parses them).

Each function imports what its command needs when it runs, so that ``rtdecode --help`` and the
light commands start fast and torch, numba or pylsl load only where they are used.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from rtdecode.config import is_loopback
from rtdecode.configfile import check_run_files, load_config
from rtdecode.errors import BindError, ConfigError, RecordingError


def simulate(args: argparse.Namespace) -> None:
    """``rtdecode simulate``: write a simulated session, optionally streaming it live."""
    from rtdecode.apps.demo import sim_params
    from rtdecode.apps.simulate import stream_session
    from rtdecode.sim.session import make_subject, simulate_session, write_session

    cfg = load_config(args.config)
    out = Path(args.out)
    if not (out / "bold.nii").exists() or args.overwrite:
        p = sim_params(cfg, kind=args.kind, seed=args.seed, subject_seed=args.subject_seed)
        write_session(out, p, simulate_session(p, make_subject(p)))
        print(f"wrote {args.kind} session to {out}")
    if args.stream:
        n = stream_session(out / "bold.nii", args.stream, args.speed, args.session, args.series, args.markers)
        print(f"streamed {n} volumes to {args.stream}")


def train(args: argparse.Namespace) -> None:
    """``rtdecode train``: fit decoders on a recorded training session."""
    from rtdecode.offline.train import train_session

    bundle = train_session(args.session, args.out, load_config(args.config), args.model)
    print(f"wrote decoder bundle ({len(bundle.roi_names)} ROIs x {len(bundle.layers)} layers) to {args.out}")


def import_lab(args: argparse.Namespace) -> None:
    """``rtdecode import-lab``: fold the Kamitani lab's decoders and features into a bundle."""
    from rtdecode.models.labimport import import_lab_decoders, import_lab_features

    masks = {}
    for item in args.roi:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--roi takes NAME=MASK.nii.gz, got {item!r}")
        masks[name] = path
    bundle = import_lab_decoders(args.models, args.subject, args.layers, masks, args.voxel_order)
    out = bundle.save(args.out)
    msg = f"imported {len(bundle.roi_names)} ROIs x {len(bundle.layers)} layers to {out}"
    if args.features:
        bank = import_lab_features(args.features, args.layers)
        bank.save(out / "candidates.npz")
        msg += f", with {len(bank.labels)} candidate categories"
    print(msg)


def evaluate(args: argparse.Namespace) -> None:
    """``rtdecode evaluate``: GOD's measures per ROI and layer for a recording or subscriber file."""
    import numpy as np

    from rtdecode.models.bank import CandidateBank
    from rtdecode.offline import evaluate as ev
    from rtdecode.offline.semantic import read_groups, session_groups

    session = Path(args.session)
    if args.candidates:
        bank = CandidateBank.load(args.candidates)
    else:
        bank = CandidateBank.from_features(session / "features.npz")
    if not args.with_training_categories:
        bank = bank.without(ev.training_labels(session))
    groups = read_groups(args.groups, bank) if args.groups else session_groups(session, bank)
    lags = None
    if args.time_course:
        tr = float(json.loads((session / "session.json").read_text())["tr_s"])
        lags = np.arange(-3.0, 24.0 + 1e-9, tr)
    out = ev.evaluate_session(
        args.results, session, bank, args.hrf_shift_s, None, args.trial_type, not args.per_block, groups, lags
    )
    n = len(bank.labels)
    title = f"pairwise identification accuracy ({n} candidates, chance 0.5)"
    print(ev.format_measure(out["identification"], title))
    title = "feature-prediction accuracy (r per unit, mean over units)"
    print(ev.format_measure(out["feature_correlation"], title))
    for roi, r in out.get("semantic", {}).items():
        print(
            f"semantic neighbours {roi}: top-1 {r['top1_rate']:.3f}, top-5 {r['top5_rate']:.3f} of the other "
            f"candidates in the true category's group (chance {r['chance']:.3f}, {r['n']} trials)"
        )
    if "time_course" in out:
        for roi, peaks in out["time_course"]["peak_s"].items():
            print(
                f"time course {roi}: peak of feature-prediction accuracy (s from onset) "
                + ", ".join(f"{layer} {t:g}" for layer, t in peaks.items())
            )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


def keygen(args: argparse.Namespace) -> None:
    """``rtdecode keygen``: CurveZMQ key pairs."""
    import zmq.auth

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.names:
        if (out / f"{name}.key_secret").exists():
            raise ConfigError(f"{out / (name + '.key_secret')} exists; not overwriting a key")
        public, secret = zmq.auth.create_certificates(out, name)
        os.chmod(secret, 0o600)
        print(f"{name}: public key {public}, secret key {secret}")


def run(args: argparse.Namespace) -> None:
    """``rtdecode run``: the real-time decoder."""
    # One BLAS thread: with two cores, a second spinning BLAS thread competes with the sender
    # and subscribers on the same machine and makes tail latency worse, not better.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    from rtdecode.apps.live import serve

    cfg = load_config(args.config).run
    if args.bundle:
        cfg.bundle = args.bundle
    where = args.config or "the default configuration"
    check_run_files(cfg, where)
    try:
        summary = serve(cfg, exit_after_series=args.exit_after_series)
    except (ConfigError, BindError) as err:  # found while setting up: name the file too
        raise type(err)(f"{where}: {err}") from err
    if args.summary:
        Path(args.summary).write_text(json.dumps(summary, indent=1))


def subscribe(args: argparse.Namespace) -> None:
    """``rtdecode subscribe``: print each volume's ranking, motion and latency."""
    from rtdecode.apps.subscribe import follow

    follow(args.address, args.roi, args.layer, args.save, args.ready_file, args.until_end, args.timeout)


def dashboard(args: argparse.Namespace) -> None:
    """``rtdecode dashboard``: serve the live page."""
    from rtdecode.apps.dashboard.server import serve_dashboard

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be from 0 to 65535, got {args.port}")
    if not is_loopback(f"tcp://{args.host}:0") and not args.allow_remote:
        raise ConfigError(
            f"--host {args.host}: the page would be served to the network without authentication; "
            "add --allow-remote to do so on a network you trust"
        )
    serve_dashboard(
        args.address, args.host, args.port, args.ready_file, args.history, args.reconstructions,
        args.history_from,
    )  # fmt: skip


def reconstruct(args: argparse.Namespace) -> None:
    """``rtdecode reconstruct``: an image per decoded block, published and saved."""
    from rtdecode.apps.reconstruct import features_method, ldm_method, run_reconstructor

    if not is_loopback(args.publish) and not args.allow_remote:
        raise ConfigError(f"--publish {args.publish}: beyond loopback needs --allow-remote")
    if args.method == "features":
        from rtdecode.models.inversion import InversionParams

        if not args.bank:
            raise ConfigError("--method features needs --bank (the folder of features.npz and features.json)")
        params = InversionParams(steps=args.steps, time_limit_s=args.time_limit_s, seed=args.seed)
        make = features_method(args.bank, args.roi, params, args.generator)
    else:
        if not args.ldm:
            raise ConfigError("--method ldm needs --ldm (a Stable Diffusion v1.x folder)")
        make = ldm_method(args.ldm, args.strength, args.ldm_steps, args.guidance, args.seed, args.device)
    n = run_reconstructor(
        args.address, make, args.method, args.publish, args.out, args.until_end, args.timeout,
        args.ready_file, args.seed,
    )  # fmt: skip
    print(f"reconstructed {n} blocks")


def report(args: argparse.Namespace) -> None:
    """``rtdecode report``: one HTML report of a recording."""
    from rtdecode.apps.report import write_report

    out = write_report(
        args.recording, args.out, args.events, args.candidates, args.hrf_shift_s, args.reconstructions,
        args.stimuli, args.bold,
    )  # fmt: skip
    print(f"wrote {out}")


def offline(args: argparse.Namespace) -> None:
    """``rtdecode offline``: the live session's step as a batch over a series."""
    from rtdecode.apps.batch import decode_series

    cfg = load_config(args.config).run
    if args.bundle:
        cfg.bundle = args.bundle
    check_run_files(cfg, args.config or "the default configuration")
    summary = decode_series(cfg, args.bold, args.out, args.record_input)
    print(f"{summary['processed']} volumes processed, {summary['skipped']} skipped; wrote {args.out}")


def record(args: argparse.Namespace) -> None:
    """``rtdecode record``: record everything a decoder publishes."""
    from rtdecode.apps.subscribe import record_live

    try:
        n = record_live(args.address, args.out, not args.forever, args.timeout, args.ready_file)
    except RecordingError as err:
        # Exit at once: HDF5 may crash while tearing down a file whose writes failed.
        print(f"rtdecode record: error: {err}", file=sys.stderr, flush=True)
        os._exit(2)
    print(f"recorded {n} volumes to {args.out}")


def bridge(args: argparse.Namespace) -> None:
    """``rtdecode bridge``: take a scanner's images (folder or DICOM push) and send each complete volume."""
    import contextlib
    import signal

    from rtdecode.scanner.clock import ScannerClock
    from rtdecode.transport.zmq import VolumeSender

    with contextlib.ExitStack() as stack:
        triggers = None
        if args.trigger:
            from rtdecode.transport.triggers import open_triggers

            triggers = open_triggers(args.trigger, args.trigger_char, args.trigger_baud)
            stack.callback(triggers.close)
        clock = ScannerClock(args.session, args.tr_s, args.scanner_clock_offset_s, triggers)
        tx = stack.enter_context(VolumeSender(args.to))
        if args.dicom_port is not None:
            from rtdecode.scanner.dicomnode import DicomNode

            calling = tuple(args.calling_ae)
            bridge = DicomNode(
                tx.send, clock, args.dicom_port, args.dicom_host, args.ae_title, calling, args.save_dir
            )
        else:
            from rtdecode.scanner.watch import FolderBridge

            bridge = FolderBridge(
                args.watch, tx.send, clock, args.poll, args.give_up_s, include_existing=args.include_existing
            )
        signal.signal(signal.SIGTERM, lambda *_: bridge.stop())
        ready = (lambda: Path(args.ready_file).write_text("ready\n")) if args.ready_file else None
        n = bridge.run(args.max_volumes, args.idle_exit, on_ready=ready)
        offset = "not known" if clock.offset_s is None else f"{clock.offset_s:+.3f} s ({clock.offset_from})"
        print(f"bridge: sent {n} volumes; scanner clock offset {offset}; {len(bridge.failed)} inputs failed")
        for what in bridge.failed:
            print(f"  incomplete or unreadable: {what}")
        if args.end_series:
            tx.send_end(args.session, bridge.dispatch.last_series, n)


def convert(args: argparse.Namespace) -> None:
    """``rtdecode convert``: an export folder as a 4-D NIfTI."""
    from rtdecode.scanner.assemble import read_folder, to_nifti

    vols = read_folder(args.folder)
    img = to_nifti(vols, args.out)
    print(f"wrote {img.shape} ({len(vols)} volumes) to {args.out}")


def replay(args: argparse.Namespace) -> None:
    """``rtdecode replay``: replay a series over ZeroMQ or LSL, or into a watched folder."""
    import nibabel as nib

    from rtdecode.apps import replay
    from rtdecode.io.nifti import iter_volumes, read_events
    from rtdecode.io.recording import input_volumes

    src = Path(args.source)
    markers = replay.events_to_markers(read_events(args.markers)) if args.markers else ()
    physio = None
    if args.physio:
        from rtdecode.io.physio import read_physio

        physio = read_physio(args.physio)
    if physio is not None and (args.to is None or src.is_dir()):
        raise ConfigError("--physio goes with a series sent --to a decoder")
    if (args.to is None) == (args.folder is None):
        raise ConfigError("replay needs exactly one of --to ADDRESS or --folder DIR")
    if src.is_dir():
        if args.folder is None:
            raise ConfigError("an export folder replays into a watched folder: use --folder")
        n = replay.replay_folder(src, args.folder, args.tr_s or 1.0, args.speed)
    elif src.suffix in (".h5", ".hdf5"):
        if args.to is None:
            raise ConfigError("a recording replays over ZeroMQ: use --to")
        n = replay.send_volumes(input_volumes(src), args.to, args.speed, markers=markers, physio=physio)
    elif args.folder is not None:
        n = replay.replay_nifti_to_folder(src, args.folder, args.speed)
    else:
        n_volumes = nib.load(str(src)).shape[-1]
        n = replay.send_volumes(
            iter_volumes(src, "replay", "run-01"), args.to, args.speed, n_volumes, markers, physio=physio
        )
    print(f"replayed {n} volumes")


def demo(args: argparse.Namespace) -> None:
    """``rtdecode demo``: everything on simulated data."""
    from rtdecode.apps.demo import run_demo

    run_demo(
        load_config(args.config), args.out, args.summary, args.transport, args.dashboard, args.imagery,
        args.reconstruct, args.reuse,
    )  # fmt: skip
