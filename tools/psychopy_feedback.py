"""Neurofeedback display for PsychoPy users: a thermometer driven by one rtdecode feedback score.

    python tools/psychopy_feedback.py --score decnef --lo 0 --hi 1

Needs PsychoPy (``pip install psychopy``) besides rtdecode; the same stream without a display is
read by ``tools/feedback_client.py``, which the test suite runs. The bar's height follows the
score's value (after the decoder's baseline normalisation and smoothing), scaled from ``--lo`` to
``--hi``; press Escape to stop. In an experiment, send block markers from the same script with a
``pylsl.StreamOutlet`` of type ``Markers`` (JSON ``{"event": "start", "label": ...}`` and
``{"event": "end"}``, see docs/protocol.md) so that the decoder decodes each block too.
"""

from __future__ import annotations

import argparse
import math
import sys

from feedback_client import FEEDBACK_TYPE, channel_labels  # this script's folder is on sys.path
from psychopy import core, event, visual

from rtdecode.transport.lsl import pylsl


def main(argv: list[str] | None = None) -> int:
    """Show the thermometer until Escape; return the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--score", required=True, help="the feedback score to show")
    ap.add_argument("--lo", type=float, default=-2.0, help="score at the bottom of the bar")
    ap.add_argument("--hi", type=float, default=2.0, help="score at the top of the bar")
    ap.add_argument("--fullscreen", action="store_true")
    args = ap.parse_args(argv)

    found = pylsl.resolve_byprop("type", FEEDBACK_TYPE, 1, 30.0)
    if not found:
        print(f"no LSL stream of type {FEEDBACK_TYPE!r}", file=sys.stderr)
        return 1
    inlet = pylsl.StreamInlet(found[0])
    labels = channel_labels(inlet.info(10.0))
    if args.score not in labels:
        print(f"no score {args.score!r}; the stream has {labels}", file=sys.stderr)
        return 1
    col = labels.index(args.score)

    win = visual.Window(fullscr=args.fullscreen, color="black", units="norm")
    frame = visual.Rect(win, width=0.3, height=1.6, lineColor="white", fillColor=None)
    fill = visual.Rect(win, width=0.28, height=0.0, fillColor="orange", lineColor=None)
    text = visual.TextStim(win, text="", pos=(0, -0.9), height=0.07)
    level = 0.0
    while "escape" not in event.getKeys():
        sample, _ = inlet.pull_sample(timeout=0.0)
        if sample is not None and not math.isnan(sample[col]):
            level = min(max((sample[col] - args.lo) / (args.hi - args.lo), 0.0), 1.0)
            text.text = f"{args.score}: {sample[col]:.2f}"
        fill.height = 1.56 * level
        fill.pos = (0, -0.78 + fill.height / 2)
        frame.draw()
        fill.draw()
        text.draw()
        win.flip()
    win.close()
    core.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
