"""A neurofeedback client that needs only pylsl: shows the decoder's feedback scores as they arrive.

    python tools/feedback_client.py                   # every score, as text bars, until Ctrl-C
    python tools/feedback_client.py --score decnef --n 20 --json

It resolves the stream of type ``rtdecode.feedback`` (see docs/protocol.md), reads the channel
labels from the stream description and prints one line per volume with the score's value (after
the decoder's baseline normalisation and smoothing) and its raw value. Importing
``rtdecode.transport.lsl`` first loads the loopback-only LSL configuration unless ``LSLAPICFG``
names another; a PsychoPy display of the same stream is in ``tools/psychopy_feedback.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from rtdecode.transport.lsl import pylsl

FEEDBACK_TYPE = "rtdecode.feedback"


def channel_labels(info: pylsl.StreamInfo) -> list[str]:
    """The channel labels in a stream's description."""
    labels, ch = [], info.desc().child("channels").child("channel")
    while not ch.empty():
        labels.append(ch.child_value("label"))
        ch = ch.next_sibling()
    return labels


def bar(value: float, lo: float = -3.0, hi: float = 3.0, width: int = 30) -> str:
    """A text bar for ``value`` between ``lo`` and ``hi``."""
    if math.isnan(value):
        return "." * width
    k = round((min(max(value, lo), hi) - lo) / (hi - lo) * width)
    return "#" * k + "-" * (width - k)


def main(argv: list[str] | None = None) -> int:
    """Run the client; return the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", help="only the stream of this name (default: any of type rtdecode.feedback)")
    ap.add_argument("--score", help="show only this score")
    ap.add_argument("--n", type=int, default=0, help="stop after this many samples (0: run until Ctrl-C)")
    ap.add_argument("--timeout", type=float, default=30.0, help="give up after this many silent seconds")
    ap.add_argument("--json", action="store_true", help="print one JSON object per sample instead of bars")
    args = ap.parse_args(argv)

    pred = f"type='{FEEDBACK_TYPE}'" + (f" and name='{args.name}'" if args.name else "")
    found = pylsl.resolve_bypred(pred, 1, args.timeout)
    if not found:
        print(f"no LSL stream of type {FEEDBACK_TYPE!r} found within {args.timeout} s", file=sys.stderr)
        return 1
    inlet = pylsl.StreamInlet(found[0])
    labels = channel_labels(inlet.info(args.timeout))
    scores = [lb for lb in labels if not lb.endswith(".raw")]
    if args.score:
        if args.score not in scores:
            print(f"no score {args.score!r} in the stream; it has {scores}", file=sys.stderr)
            return 1
        scores = [args.score]
    print(f"connected to {found[0].name()!r}: scores {scores}", file=sys.stderr, flush=True)
    n = 0
    try:
        while not args.n or n < args.n:
            sample, t = inlet.pull_sample(timeout=args.timeout)
            if sample is None:
                print(f"no feedback for {args.timeout} s", file=sys.stderr)
                return 1
            values = dict(zip(labels, sample))
            n += 1
            if args.json:
                out = {s: {"value": values[s], "raw": values.get(f"{s}.raw")} for s in scores}
                print(json.dumps({"t": t, "scores": out}, allow_nan=True), flush=True)
            else:
                print(
                    "  ".join(
                        f"{s} {bar(values[s])} {values[s]:7.3f} (raw {values[s + '.raw']:.3f})"
                        for s in scores
                    ),
                    flush=True,
                )
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
