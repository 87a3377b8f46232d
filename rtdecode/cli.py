"""Command line: argument parsing only; every subcommand calls into the modules."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from rtdecode.config import HRF_SHIFT_S, check_run_files, load_config
from rtdecode.errors import ConfigError, RecordingError, RtDecodeError


def _simulate(args: argparse.Namespace) -> None:
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


def _train(args: argparse.Namespace) -> None:
    from rtdecode.offline.train import train_session

    bundle = train_session(args.session, args.out, load_config(args.config), args.model)
    print(f"wrote decoder bundle ({len(bundle.roi_names)} ROIs x {len(bundle.layers)} layers) to {args.out}")


def _import_lab(args: argparse.Namespace) -> None:
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


def _evaluate(args: argparse.Namespace) -> None:
    from rtdecode.models.bank import CandidateBank
    from rtdecode.offline.evaluate import evaluate_session, format_measure

    if args.candidates:
        bank = CandidateBank.load(args.candidates)
    else:
        bank = CandidateBank.from_features(Path(args.session) / "features.npz")
    out = evaluate_session(args.results, args.session, bank, args.hrf_shift_s)
    out["n_candidates"] = len(bank.labels)
    print(
        format_measure(
            out["identification"],
            f"pairwise identification accuracy ({len(bank.labels)} candidates, chance 0.5)",
        )
    )
    print(
        format_measure(
            out["feature_correlation"], "feature-prediction accuracy (Pearson r per unit, mean over units)"
        )
    )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


def _keygen(args: argparse.Namespace) -> None:
    import zmq.auth

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.names:
        if (out / f"{name}.key_secret").exists():
            raise ConfigError(f"{out / (name + '.key_secret')} exists; not overwriting a key")
        public, secret = zmq.auth.create_certificates(out, name)
        os.chmod(secret, 0o600)
        print(f"{name}: public key {public}, secret key {secret}")


def _run(args: argparse.Namespace) -> None:
    # One BLAS thread: with two cores, a second spinning BLAS thread competes with the sender
    # and subscribers on the same machine and makes tail latency worse, not better.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    from rtdecode.apps.live import serve

    cfg = load_config(args.config).run
    if args.bundle:
        cfg.bundle = args.bundle
    check_run_files(cfg, args.config or "the default configuration")
    summary = serve(cfg, exit_after_series=args.exit_after_series)
    if args.summary:
        Path(args.summary).write_text(json.dumps(summary, indent=1))


def _subscribe(args: argparse.Namespace) -> None:
    from rtdecode.apps.subscribe import follow

    follow(args.address, args.roi, args.layer, args.save, args.ready_file, args.until_end, args.timeout)


def _dashboard(args: argparse.Namespace) -> None:
    from rtdecode.apps.dashboard.server import serve_dashboard

    serve_dashboard(args.address, args.host, args.port, args.ready_file, args.history)


def _report(args: argparse.Namespace) -> None:
    from rtdecode.apps.report import write_report

    out = write_report(args.recording, args.out, args.events, args.candidates, args.hrf_shift_s)
    print(f"wrote {out}")


def _offline(args: argparse.Namespace) -> None:
    from rtdecode.apps.batch import decode_series

    cfg = load_config(args.config).run
    if args.bundle:
        cfg.bundle = args.bundle
    check_run_files(cfg, args.config or "the default configuration")
    summary = decode_series(cfg, args.bold, args.out, args.record_input)
    print(f"{summary['processed']} volumes processed, {summary['skipped']} skipped; wrote {args.out}")


def _record(args: argparse.Namespace) -> None:
    from rtdecode.apps.subscribe import record_live

    try:
        n = record_live(args.address, args.out, not args.forever, args.timeout, args.ready_file)
    except RecordingError as err:
        # Exit at once: HDF5 may crash while tearing down a file whose writes failed.
        print(f"rtdecode record: error: {err}", file=sys.stderr, flush=True)
        os._exit(2)
    print(f"recorded {n} volumes to {args.out}")


def _bridge(args: argparse.Namespace) -> None:
    import signal

    from rtdecode.scanner.watch import FolderBridge
    from rtdecode.transport.zmq import VolumeSender

    with VolumeSender(args.to) as tx:
        bridge = FolderBridge(
            args.watch,
            tx.send,
            args.session,
            args.poll,
            args.tr_s,
            args.give_up_s,
            include_existing=args.include_existing,
        )
        signal.signal(signal.SIGTERM, lambda *_: bridge.stop())
        ready = (lambda: Path(args.ready_file).write_text("ready\n")) if args.ready_file else None
        n = bridge.run(args.max_volumes, args.idle_exit, on_ready=ready)
        print(f"bridge: sent {n} volumes; gave up on {len(bridge.failed)} incomplete file(s)")
        for path in bridge.failed:
            print(f"  incomplete: {path}")
        if args.end_series:
            tx.send_end(args.session, bridge.last_series, n)


def _convert(args: argparse.Namespace) -> None:
    from rtdecode.scanner.assemble import read_folder, to_nifti

    vols = read_folder(args.folder)
    img = to_nifti(vols, args.out)
    print(f"wrote {img.shape} ({len(vols)} volumes) to {args.out}")


def _replay(args: argparse.Namespace) -> None:
    import nibabel as nib

    from rtdecode.apps import replay
    from rtdecode.io.nifti import iter_volumes, read_events
    from rtdecode.io.recording import input_volumes

    src = Path(args.source)
    markers = replay.events_to_markers(read_events(args.markers)) if args.markers else ()
    if (args.to is None) == (args.folder is None):
        raise ConfigError("replay needs exactly one of --to ADDRESS or --folder DIR")
    if src.is_dir():
        if args.folder is None:
            raise ConfigError("an export folder replays into a watched folder: use --folder")
        n = replay.replay_folder(src, args.folder, args.tr_s or 1.0, args.speed)
    elif src.suffix in (".h5", ".hdf5"):
        if args.to is None:
            raise ConfigError("a recording replays over ZeroMQ: use --to")
        n = replay.send_volumes(input_volumes(src), args.to, args.speed, markers=markers)
    elif args.folder is not None:
        n = replay.replay_nifti_to_folder(src, args.folder, args.speed)
    else:
        n_volumes = nib.load(str(src)).shape[-1]
        n = replay.send_volumes(
            iter_volumes(src, "replay", "run-01"), args.to, args.speed, n_volumes, markers
        )
    print(f"replayed {n} volumes")


def _demo(args: argparse.Namespace) -> None:
    from rtdecode.apps.demo import run_demo

    run_demo(load_config(args.config), args.out, args.summary, args.transport, args.dashboard)


def build_parser() -> argparse.ArgumentParser:
    """The ``rtdecode`` argument parser."""
    ap = argparse.ArgumentParser(prog="rtdecode", description="Real-time decoding of fMRI into DNN features.")
    ap.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", help="simulate a session (and optionally stream it over ZeroMQ)")
    p.add_argument("--out", required=True, help="session directory")
    p.add_argument("--kind", choices=["train", "test"], default="train")
    p.add_argument("--seed", type=int, default=1, help="session seed (noise, motion, design order)")
    p.add_argument("--subject-seed", type=int, default=0, help="subject seed (brain, features, categories)")
    p.add_argument("-c", "--config", help="YAML config (its 'simulate' section)")
    p.add_argument("--overwrite", action="store_true", help="simulate even if the directory has a session")
    p.add_argument(
        "--stream",
        metavar="ADDRESS",
        help="then stream it to this decoder input (ZeroMQ address, or lsl[:NAME])",
    )
    p.add_argument("--markers", action="store_true", help="while streaming, send the blocks as LSL markers")
    p.add_argument("--speed", type=float, default=1.0, help="1 = TR pace, N = N times faster, inf = unpaced")
    p.add_argument("--session", default="sim", help="session id put in the headers")
    p.add_argument("--series", default="run-01", help="series id put in the headers")
    p.set_defaults(func=_simulate)

    p = sub.add_parser("train", help="train decoders on a recorded training session")
    p.add_argument("--session", required=True, help="session directory (bold.nii, events.tsv, rois/, ...)")
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument("-c", "--config", help="YAML config ('train' and 'run' sections)")
    p.add_argument(
        "--model",
        choices=["ridge", "mlp"],
        default="ridge",
        help="ridge (GOD) or an MLP per ROI (needs torch)",
    )
    p.set_defaults(func=_train)

    p = sub.add_parser(
        "import-lab", help="import Kamitani-lab decoders (<layer>/<subject>/<roi>/model/*.mat)"
    )
    p.add_argument("--models", required=True, help="the lab's decoder directory")
    p.add_argument("--subject", required=True)
    p.add_argument("--layers", nargs="+", required=True, help="layers to import, in output order")
    p.add_argument("--roi", action="append", required=True, metavar="NAME=MASK", help="an ROI and its mask")
    p.add_argument(
        "--voxel-order", choices=["F", "C"], required=True, help="order of the ROI voxels in the lab's data"
    )
    p.add_argument("--features", help="the lab's feature directory (<layer>/<label>.mat) for the candidates")
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.set_defaults(func=_import_lab)

    p = sub.add_parser("evaluate", help="GOD's measures of a decoded series against its session's truth")
    p.add_argument("results", help="a recording (.h5, rtdecode record/offline) or subscriber file (.npz)")
    p.add_argument("--session", required=True, help="session directory (events.tsv, session.json, truth)")
    p.add_argument("--candidates", help="candidate bank (default: the session's features.npz)")
    p.add_argument("--hrf-shift-s", type=float, default=HRF_SHIFT_S, help="hemodynamic delay (s)")
    p.add_argument("--json", help="write the tables as JSON here")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("keygen", help="create CurveZMQ key pairs (decoder, senders, subscribers)")
    p.add_argument("names", nargs="+", help="one key pair per name: NAME.key (public), NAME.key_secret")
    p.add_argument("--out", required=True, help="directory for the key files")
    p.set_defaults(func=_keygen)

    p = sub.add_parser("run", help="run the real-time decoder")
    p.add_argument("-c", "--config", help="YAML config ('run' section)")
    p.add_argument("--bundle", help="decoder bundle directory (overrides the config)")
    p.add_argument("--exit-after-series", action="store_true", help="stop at the first end-of-series")
    p.add_argument("--summary", help="write counts and latency summary as JSON here on exit")
    p.set_defaults(func=_run)

    p = sub.add_parser("subscribe", help="print each volume's ranking and latency live")
    p.add_argument("--address", default="tcp://127.0.0.1:5556", help="the decoder's output address")
    p.add_argument("--roi", default="VC")
    p.add_argument("--layer", default="cnn8")
    p.add_argument("--save", help="write everything received to this NPZ when done")
    p.add_argument("--ready-file", help="create this file once messages arrive")
    p.add_argument("--until-end", action="store_true", help="stop after the decoder's end-of-series")
    p.add_argument("--timeout", type=float, default=0.0, help="stop after this many silent seconds")
    p.set_defaults(func=_subscribe)

    p = sub.add_parser("dashboard", help="serve a live page of motion, latency and rankings (WebSocket)")
    p.add_argument("--address", default="tcp://127.0.0.1:5556", help="the decoder's output address")
    p.add_argument("--host", default="127.0.0.1", help="interface to serve the page on")
    p.add_argument("--port", type=int, default=8765, help="port of the page (0: any free port)")
    p.add_argument("--history", type=int, default=600, help="volumes a page opened late starts with")
    p.add_argument("--ready-file", help="write the page's URL here once it is served")
    p.set_defaults(func=_dashboard)

    p = sub.add_parser("report", help="one self-contained HTML page about a recorded session")
    p.add_argument("recording", help="a recording (.h5) from rtdecode record or rtdecode offline")
    p.add_argument("-o", "--out", help="HTML file to write (default: beside the recording)")
    p.add_argument("--events", help="BIDS events.tsv with category_label: the categories shown, per block")
    p.add_argument("--candidates", help="candidate bank (default: the one the decoder used)")
    p.add_argument("--hrf-shift-s", type=float, default=HRF_SHIFT_S, help="hemodynamic delay of --events (s)")
    p.set_defaults(func=_report)

    p = sub.add_parser("offline", help="run the pipeline as a batch over a recorded series")
    p.add_argument("-c", "--config", help="YAML config ('run' section)")
    p.add_argument("--bundle", help="decoder bundle directory (overrides the config)")
    p.add_argument("--bold", required=True, help="4-D NIfTI of the series")
    p.add_argument("--out", required=True, help="HDF5 recording to write")
    p.add_argument("--record-input", action="store_true", help="store the input volumes too")
    p.set_defaults(func=_offline)

    p = sub.add_parser("record", help="record everything a decoder publishes to HDF5")
    p.add_argument("--address", default="tcp://127.0.0.1:5556", help="the decoder's output address")
    p.add_argument("--out", required=True, help="HDF5 recording to write")
    p.add_argument("--forever", action="store_true", help="keep recording after an end-of-series")
    p.add_argument("--timeout", type=float, default=0.0, help="stop after this many silent seconds")
    p.add_argument("--ready-file", help="create this file once messages arrive")
    p.set_defaults(func=_record)

    p = sub.add_parser("bridge", help="watch a scanner export folder and send volumes as they complete")
    p.add_argument("--watch", required=True, help="the export folder")
    p.add_argument("--to", default="tcp://127.0.0.1:5555", help="the decoder's volume input")
    p.add_argument("--session", default="session", help="session id put in the headers")
    p.add_argument("--poll", action="store_true", help="poll instead of file-system events (network shares)")
    p.add_argument("--tr-s", type=float, help="repetition time when the header has none (NIfTI, Philips XTC)")
    p.add_argument("--give-up-s", type=float, default=10.0, help="report a file still incomplete after this")
    p.add_argument("--include-existing", action="store_true", help="also send files already in the folder")
    p.add_argument("--max-volumes", type=int, help="stop after this many volumes")
    p.add_argument("--idle-exit", type=float, help="stop after this many seconds without files")
    p.add_argument("--end-series", action="store_true", help="send an end-of-series when stopping")
    p.add_argument("--ready-file", help="create this file once the folder is being watched")
    p.set_defaults(func=_bridge)

    p = sub.add_parser("convert", help="convert an export folder (DICOM, PAR/REC, NIfTI) to a 4-D NIfTI")
    p.add_argument("folder")
    p.add_argument("out")
    p.set_defaults(func=_convert)

    p = sub.add_parser("replay", help="replay a session: NIfTI 4-D, export folder or rtdecode recording")
    p.add_argument("source", help="4-D NIfTI, export folder, or recording (.h5)")
    p.add_argument("--to", help="send to this decoder input: a ZeroMQ address, or lsl[:NAME] for LSL")
    p.add_argument("--markers", metavar="EVENTS_TSV", help="also send these blocks as LSL stimulus markers")
    p.add_argument("--folder", help="write files into this watched folder, as a scanner would")
    p.add_argument("--speed", type=float, default=1.0, help="1 = TR pace, N = N times faster, inf = unpaced")
    p.add_argument("--tr-s", type=float, help="TR of an export folder (for pacing)")
    p.set_defaults(func=_replay)

    p = sub.add_parser("demo", help="simulate, train, decode live, report")
    p.add_argument("-c", "--config", default=None, help="YAML config (default: built-in demo settings)")
    p.add_argument("--out", default="demo-out", help="working directory")
    p.add_argument("--summary", help="write the summary as JSON here")
    p.add_argument(
        "--transport", choices=["zmq", "lsl"], default="zmq", help="how volumes travel to the decoder"
    )
    p.add_argument(
        "--dashboard",
        nargs="?",
        type=int,
        const=8765,
        metavar="PORT",
        help="serve the live dashboard (default port 8765) while streaming, and after until Ctrl-C",
    )
    p.set_defaults(func=_demo)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rtdecode`` command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
    )
    try:
        args.func(args)
    except RtDecodeError as err:
        print(f"rtdecode {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
