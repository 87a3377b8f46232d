"""Command line: argument parsing only; every subcommand calls into the modules."""

from __future__ import annotations

import argparse
import logging
import sys

from rtdecode.apps import commands
from rtdecode.config import HRF_SHIFT_S
from rtdecode.errors import RtDecodeError


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
    p.set_defaults(func=commands.simulate)

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
    p.set_defaults(func=commands.train)

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
    p.set_defaults(func=commands.import_lab)

    p = sub.add_parser("evaluate", help="GOD's measures of a decoded series against its session's truth")
    p.add_argument("results", help="a recording (.h5, rtdecode record/offline) or subscriber file (.npz)")
    p.add_argument("--session", required=True, help="session directory (events.tsv, session.json, truth)")
    p.add_argument(
        "--candidates", help="candidate bank (default: the session's features.npz but training categories)"
    )
    p.add_argument(
        "--with-training-categories", action="store_true", help="keep the training categories as candidates"
    )
    p.add_argument("--hrf-shift-s", type=float, default=HRF_SHIFT_S, help="hemodynamic delay (s)")
    p.add_argument("--trial-type", help="only these rows of events.tsv (default: all but cues)")
    p.add_argument("--per-block", action="store_true", help="identify blocks, not category averages")
    p.add_argument(
        "--time-course", action="store_true", help="accuracy per TR from each trial's onset (-3 to +24 s)"
    )
    p.add_argument("--groups", help="label<TAB>group table: semantic neighbours")
    p.add_argument("--json", help="write the tables as JSON here")
    p.set_defaults(func=commands.evaluate)

    p = sub.add_parser("keygen", help="create CurveZMQ key pairs (decoder, senders, subscribers)")
    p.add_argument("names", nargs="+", help="one key pair per name: NAME.key (public), NAME.key_secret")
    p.add_argument("--out", required=True, help="directory for the key files")
    p.set_defaults(func=commands.keygen)

    p = sub.add_parser("run", help="run the real-time decoder")
    p.add_argument("-c", "--config", help="YAML config ('run' section)")
    p.add_argument("--bundle", help="decoder bundle directory (overrides the config)")
    p.add_argument("--exit-after-series", action="store_true", help="stop at the first end-of-series")
    p.add_argument("--summary", help="write counts and latency summary as JSON here on exit")
    p.set_defaults(func=commands.run)

    p = sub.add_parser("subscribe", help="print each volume's ranking and latency live")
    p.add_argument("--address", default="tcp://127.0.0.1:5556", help="the decoder's output address")
    p.add_argument("--roi", default="VC")
    p.add_argument("--layer", default="cnn8")
    p.add_argument("--save", help="write everything received to this NPZ when done")
    p.add_argument("--ready-file", help="create this file once messages arrive")
    p.add_argument("--until-end", action="store_true", help="stop after the decoder's end-of-series")
    p.add_argument("--timeout", type=float, default=0.0, help="stop after this many silent seconds")
    p.set_defaults(func=commands.subscribe)

    p = sub.add_parser("dashboard", help="serve a live page of motion, latency and rankings (WebSocket)")
    p.add_argument("--address", default="tcp://127.0.0.1:5556", help="the decoder's output address")
    p.add_argument("--host", default="127.0.0.1", help="interface to serve the page on")
    p.add_argument("--port", type=int, default=8765, help="port of the page (0: any free port)")
    p.add_argument("--history", type=int, default=600, help="volumes a page opened late starts with")
    p.add_argument("--ready-file", help="write the page's URL here once it is served")
    p.add_argument("--allow-remote", action="store_true", help="allow a --host other than loopback")
    p.add_argument("--reconstructions", help="rtdecode reconstruct's --publish address: show its images")
    p.add_argument("--history-from", help="the decoder's run.history.address: start with the session so far")
    p.set_defaults(func=commands.dashboard)

    p = sub.add_parser("reconstruct", help="an image from each decoded block, published and saved")
    p.add_argument("--address", default="tcp://127.0.0.1:5556", help="the decoder's output address")
    p.add_argument("--publish", default="tcp://127.0.0.1:5557", help="bind here for reconstruction messages")
    p.add_argument("--allow-remote", action="store_true", help="allow a --publish address beyond loopback")
    p.add_argument("--out", help="write block-NNN-<method>.png files and index.jsonl under this folder")
    p.add_argument("--method", choices=["features", "ldm"], default="features")
    p.add_argument("--bank", help="features: the bank folder the decoders' features came from")
    p.add_argument("--roi", default="VC", help="features: whose decoded features to invert")
    p.add_argument("--steps", type=int, default=100, help="features: optimisation steps")
    p.add_argument("--time-limit-s", type=float, default=14.0, help="features: stop an image after this")
    p.add_argument("--generator", default="", help="features: MODULE:FACTORY of an image-prior generator")
    p.add_argument("--ldm", help="ldm: a Stable Diffusion v1.x folder (diffusers layout, safetensors)")
    p.add_argument("--strength", type=float, default=0.8, help="ldm: img2img strength (T&N: 0.8)")
    p.add_argument("--ldm-steps", type=int, default=50, help="ldm: denoising steps of the full schedule")
    p.add_argument("--guidance", type=float, default=5.0, help="ldm: classifier-free guidance scale")
    p.add_argument("--device", default="auto", help="ldm: auto (CUDA if present), cpu or cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--until-end", action="store_true", help="stop after the decoder's end-of-series")
    p.add_argument("--timeout", type=float, default=0.0, help="stop after this many silent seconds")
    p.add_argument("--ready-file", help="create this file once subscribed and bound")
    p.set_defaults(func=commands.reconstruct)

    p = sub.add_parser("report", help="one self-contained HTML page about a recorded session")
    p.add_argument("recording", help="a recording (.h5) from rtdecode record or rtdecode offline")
    p.add_argument("-o", "--out", help="HTML file to write (default: beside the recording)")
    p.add_argument("--events", help="BIDS events.tsv with category_label: the categories shown, per block")
    p.add_argument("--candidates", help="candidate bank (default: the one the decoder used)")
    p.add_argument("--hrf-shift-s", type=float, default=HRF_SHIFT_S, help="hemodynamic delay of --events (s)")
    p.add_argument("--reconstructions", help="a folder of rtdecode reconstruct --out: show its images")
    p.add_argument("--stimuli", help="a folder of <label>.png: the images shown, beside the reconstructions")
    p.add_argument("--bold", help="the series as 4-D NIfTI, for the data images (if not recorded)")
    p.set_defaults(func=commands.report)

    p = sub.add_parser("offline", help="run the pipeline as a batch over a recorded series")
    p.add_argument("-c", "--config", help="YAML config ('run' section)")
    p.add_argument("--bundle", help="decoder bundle directory (overrides the config)")
    p.add_argument("--bold", required=True, help="4-D NIfTI of the series")
    p.add_argument("--out", required=True, help="HDF5 recording to write")
    p.add_argument("--record-input", action="store_true", help="store the input volumes too")
    p.set_defaults(func=commands.offline)

    p = sub.add_parser("record", help="record everything a decoder publishes to HDF5")
    p.add_argument("--address", default="tcp://127.0.0.1:5556", help="the decoder's output address")
    p.add_argument("--out", required=True, help="HDF5 recording to write")
    p.add_argument("--forever", action="store_true", help="keep recording after an end-of-series")
    p.add_argument("--timeout", type=float, default=0.0, help="stop after this many silent seconds")
    p.add_argument("--ready-file", help="create this file once messages arrive")
    p.set_defaults(func=commands.record)

    p = sub.add_parser(
        "bridge", help="take a scanner's images (export folder or DICOM push), send volumes as they complete"
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--watch", help="the export folder")
    src.add_argument("--dicom-port", type=int, help="run a DICOM node (Storage SCP) on this port instead")
    p.add_argument("--dicom-host", default="127.0.0.1", help="address the DICOM node binds")
    p.add_argument("--ae-title", default="RTDECODE", help="the DICOM node's AE title")
    p.add_argument(
        "--calling-ae", action="append", default=[], help="accept pushes only from this AE title (repeatable)"
    )
    p.add_argument("--save-dir", help="also write every pushed image to this folder")
    p.add_argument(
        "--scanner-clock-offset-s",
        type=float,
        help="this computer's clock minus the scanner's (default: from --trigger, else estimated)",
    )
    p.add_argument("--trigger", help="the scanner's pulses: serial:<device> or lsl:<marker stream name>")
    p.add_argument("--trigger-char", help="a pulse's character (serial, default 5) or marker text (LSL, any)")
    p.add_argument("--trigger-baud", type=int, default=115200, help="the trigger box's baud rate")
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
    p.set_defaults(func=commands.bridge)

    p = sub.add_parser("convert", help="convert an export folder (DICOM, PAR/REC, NIfTI) to a 4-D NIfTI")
    p.add_argument("folder")
    p.add_argument("out")
    p.set_defaults(func=commands.convert)

    p = sub.add_parser("replay", help="replay a session: NIfTI 4-D, export folder or rtdecode recording")
    p.add_argument("source", help="4-D NIfTI, export folder, or recording (.h5)")
    p.add_argument("--to", help="send to this decoder input: a ZeroMQ address, or lsl[:NAME] for LSL")
    p.add_argument("--markers", metavar="EVENTS_TSV", help="also send these blocks as LSL stimulus markers")
    p.add_argument("--folder", help="write files into this watched folder, as a scanner would")
    p.add_argument("--speed", type=float, default=1.0, help="1 = TR pace, N = N times faster, inf = unpaced")
    p.add_argument("--tr-s", type=float, help="TR of an export folder (for pacing)")
    p.add_argument(
        "--physio",
        metavar="PHYSIO_TSV_GZ",
        help="also send this BIDS recording as an LSL stream of type physio",
    )
    p.set_defaults(func=commands.replay)

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
    p.add_argument("--imagery", action="store_true", help="also decode and score an imagery run (GOD)")
    p.add_argument(
        "--reconstruct", action="store_true", help="real photographs seen, each block reconstructed"
    )
    p.add_argument(
        "--reuse",
        action="store_true",
        help="use the sessions and decoders in --out again if made with the same settings",
    )
    p.set_defaults(func=commands.demo)
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
