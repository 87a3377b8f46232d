"""Every result of the decoder as Lab Streaming Layer streams, beside the ZeroMQ topics.

:class:`LslPublisher` has the publisher's ``publish(message)`` method, so the live
loop sends each message to ZeroMQ and LSL alike. All streams exist from start-up (clients can
resolve them before the first volume); each sample is time-stamped with the acquisition time of
its volume on this machine's LSL clock. Names, types, channels and units are in
``docs/protocol.md``; the XML description of each stream lists its channels
(``desc/channels/channel/{label,unit,type}``) and an ``rtdecode`` element with the details.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rtdecode.transport.lsl import describe_stream, pylsl, wall_to_lsl
from rtdecode.volume import Stage, stamps_from_dict
from rtdecode.wire import messages as m

MOTION_CHANNELS = (
    ("trans_x", "mm"),
    ("trans_y", "mm"),
    ("trans_z", "mm"),
    ("rot_x", "deg"),
    ("rot_y", "deg"),
    ("rot_z", "deg"),
    ("framewise_displacement", "mm"),
    ("censored", "bool"),
)
LATENCY_CHANNELS = tuple(s.name.lower() for s in Stage if s != Stage.ACQUIRED)


def _outlet(
    name: str, kind: str, labels: Sequence[str], units: Sequence[str] | str, fmt: str, meta: Mapping[str, Any]
) -> pylsl.StreamOutlet:
    info = pylsl.StreamInfo(name, kind, len(labels), pylsl.IRREGULAR_RATE, fmt, f"{name}-{os.getpid()}")
    units = [units] * len(labels) if isinstance(units, str) else units
    chans = info.desc().append_child("channels")
    for label, unit in zip(labels, units):
        ch = chans.append_child("channel")
        ch.append_child_value("label", label)
        ch.append_child_value("unit", unit)
        ch.append_child_value("type", kind.rsplit(".", 1)[-1])
    describe_stream(info, meta)
    return pylsl.StreamOutlet(info)


class LslPublisher:
    """Publish results on LSL streams named ``<prefix>-<kind>``.

    Parameters
    ----------
    rois, layers : list of str
        The decoder bundle's ROIs and layers.
    n_units : list of int
        Units per layer.
    labels : list of str
        The candidate labels (ranking indices refer to them).
    k : int
        Candidates per ranking.
    feedback : list of str
        Names of the configured feedback scores.
    prefix : str
    """

    def __init__(
        self,
        rois: Sequence[str],
        layers: Sequence[str],
        n_units: Sequence[int],
        labels: Sequence[str],
        k: int,
        feedback: Sequence[str] = (),
        prefix: str = "rtdecode",
    ) -> None:
        self.layers, self.k = list(layers), min(k, len(labels))
        bounds = np.concatenate([[0], np.cumsum(n_units)]).astype(int)
        self._slices = {ly: slice(a, b) for ly, a, b in zip(layers, bounds[:-1], bounds[1:])}
        unit_labels = [f"{ly}/{i}" for ly, n in zip(layers, n_units) for i in range(n)]
        self.features = {
            roi: _outlet(
                f"{prefix}-features-{roi}",
                "rtdecode.features",
                unit_labels,
                "a.u.",
                "float32",
                {"roi": roi, "layers": list(layers), "n_units": [int(n) for n in n_units]},
            )
            for roi in rois
        }
        self._feature_rows = {roi: np.full(int(bounds[-1]), np.nan, np.float32) for roi in rois}
        rank_labels, rank_units = [], []
        for roi in rois:
            for ly in layers:
                for r in range(1, self.k + 1):
                    rank_labels += [f"{roi}/{ly}/{r}/index", f"{roi}/{ly}/{r}/score"]
                    rank_units += ["index", "r"]
        self.ranking = _outlet(
            f"{prefix}-ranking",
            "rtdecode.ranking",
            rank_labels,
            rank_units,
            "float32",
            {"rois": list(rois), "layers": list(layers), "k": self.k, "labels": list(labels)},
        )
        self.motion = _outlet(
            f"{prefix}-motion",
            "rtdecode.motion",
            [c for c, _ in MOTION_CHANNELS],
            [u for _, u in MOTION_CHANNELS],
            "float32",
            {"convention": "rtdecode.numerics.rigid: R = Rz Ry Rx about the grid centre"},
        )
        self.latency = _outlet(
            f"{prefix}-latency",
            "rtdecode.latency",
            list(LATENCY_CHANNELS),
            "ms",
            "float32",
            {"meaning": "time from acquisition to each stage; NaN where a stage was not reached"},
        )
        self.feedback_names = list(feedback)
        self.feedback = None
        if self.feedback_names:
            fb_labels = [n for name in self.feedback_names for n in (name, f"{name}.raw")]
            self.feedback = _outlet(
                f"{prefix}-feedback",
                "rtdecode.feedback",
                fb_labels,
                "score",
                "float32",
                {"scores": self.feedback_names},
            )
        self.blocks = _outlet(f"{prefix}-blocks", "rtdecode.blocks", ["block"], "json", "string", {})
        self.status = _outlet(f"{prefix}-status", "rtdecode.status", ["status"], "json", "string", {})
        self.qa = _outlet(f"{prefix}-qa", "rtdecode.qa", ["qa"], "json", "string", {})

    def publish(self, msg: m.WireMessage) -> None:
        """Push one message's content to its stream (volumes and latents are not re-streamed)."""
        acq = getattr(msg, "acq_time_s", None)
        t = wall_to_lsl(acq) if acq is not None else pylsl.local_clock()
        if isinstance(msg, m.Features):
            row = self._feature_rows[msg.roi]
            row[self._slices[msg.layer]] = msg.features
            if msg.layer == self.layers[-1]:
                self.features[msg.roi].push_chunk(row.reshape(1, -1), t)
        elif isinstance(msg, m.Ranking) and msg.indices is not None:
            both = np.stack([msg.indices.astype(np.float32), msg.scores.astype(np.float32)], -1)
            self.ranking.push_chunk(both[..., : self.k, :].reshape(1, -1), t)
        elif isinstance(msg, m.Motion):
            values = [*msg.params, msg.fd_mm, float(msg.censored)]
            self.motion.push_chunk(np.array(values, np.float32).reshape(1, -1), t)
        elif isinstance(msg, m.Latency):
            stamps = stamps_from_dict(msg.stamps)
            acq = stamps[Stage.ACQUIRED]
            ms = [
                (stamps[s] - acq) / 1e6 if acq >= 0 and stamps[s] >= 0 else math.nan
                for s in Stage
                if s != Stage.ACQUIRED
            ]
            self.latency.push_chunk(np.array(ms, np.float32).reshape(1, -1), t)
        elif isinstance(msg, m.Feedback) and self.feedback is not None:
            values = [
                _nan(msg.scores.get(name, {}).get(field))
                for name in self.feedback_names
                for field in ("value", "raw")
            ]
            self.feedback.push_chunk(np.array(values, np.float32).reshape(1, -1), t)
        elif isinstance(msg, m.Block):
            self.blocks.push_sample([json.dumps(msg.header())], t)
        elif isinstance(msg, m.Status | m.Qa):
            (self.status if isinstance(msg, m.Status) else self.qa).push_sample([json.dumps(msg.header())], t)

    def close(self) -> None:
        """Destroy every outlet."""
        self.features.clear()
        self.ranking = self.motion = self.latency = self.feedback = self.blocks = self.status = self.qa = None

    def __enter__(self) -> LslPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _nan(v: float | None) -> float:
    return math.nan if v is None else float(v)
