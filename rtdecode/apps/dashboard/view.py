"""What the dashboard shows, computed from the decoder's messages (no sockets, no browser).

:class:`SessionView` folds the published messages of a volume into one JSON-ready update when the
volume's last message (``latency``) arrives, and keeps the recent history so that a page opened in
the middle of a session starts with it.
"""

from __future__ import annotations

import base64
import math
from collections import deque
from typing import Any

import numpy as np

from rtdecode.wire import messages as m

# Topics the dashboard needs; the per-unit features and latents are not shown.
TOPICS = ("motion", "ranking", "feedback", "qa", "latency", "block", "status")
# Reconstructions a page that connects late still sees (each carries its PNG).
RECONSTRUCTIONS_KEPT = 12


# Running totals shown in the volume counter (and ``last_seq``, the last volume's index).
COUNTERS = (
    "volumes",
    "decoded",
    "baseline",
    "censored",
    "skipped",
    "gaps",
    "missing",
    "deadline_misses",
    "blocks",
)


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


def _scores(a: np.ndarray) -> list:
    # JSON has no NaN (the page's JSON.parse rejects it): a score that is not a number goes as null.
    return np.where(np.isfinite(a), a, None).tolist()


class SessionView:
    """Turn the decoder's messages into dashboard updates.

    Parameters
    ----------
    history : int
        Volumes (and blocks) kept for a page that connects late.
    """

    def __init__(self, history: int = 600) -> None:
        if history < 1:
            raise ValueError(f"history must be >= 1, got {history!r}")
        self.counts: dict = {**dict.fromkeys(COUNTERS, 0), "last_seq": None}
        self.volumes: deque[dict] = deque(maxlen=history)
        self.blocks: deque[dict] = deque(maxlen=history)
        self.settings: dict | None = None
        self.last_event: dict | None = None
        self.reconstructions: deque[dict] = deque(maxlen=RECONSTRUCTIONS_KEPT)
        self.history = ""  # where the session so far came from, or why it could not
        self._pending: dict[int, dict] = {}

    def add(self, msg: m.WireMessage) -> dict | None:
        """Take one message; return the update it completes (a volume, a block, a status) or None."""
        if isinstance(msg, m.Status):
            return self._status(msg)
        if isinstance(msg, m.Block):
            return None if msg.running else self._block(msg)
        if isinstance(msg, m.Reconstruction):
            return self._reconstruction(msg)
        if not isinstance(msg, m.Motion | m.Ranking | m.Feedback | m.Qa | m.Latency):
            return None
        seq = msg.seq
        if seq not in self._pending and len(self._pending) >= 64:
            # Volumes whose latency message never came (a page started mid-volume, a lost message).
            del self._pending[min(self._pending)]
        part = self._pending.setdefault(seq, {"seq": seq})
        if isinstance(msg, m.Motion):
            part["motion"] = [_finite(v) for v in msg.params]
            part["fd_mm"] = _finite(msg.fd_mm)
            part["fd_threshold_mm"] = _finite(msg.fd_threshold_mm)
            part["censored"] = msg.censored
        elif isinstance(msg, m.Ranking):
            part["status"] = msg.status
            if msg.scores is not None:
                part["top"] = {
                    "rois": msg.rois,
                    "layers": msg.layers,
                    "labels": msg.labels,
                    "scores": _scores(msg.scores),
                }
        elif isinstance(msg, m.Feedback):
            part["feedback"] = {n: _finite(s.get("value")) for n, s in msg.scores.items()}
        elif isinstance(msg, m.Qa):
            keys = ("dvars_pct", "global_signal", "clean_minutes", "projected_clean_minutes")
            part["qa"] = {k: _finite(getattr(msg, k)) for k in keys} | {
                "spikes": msg.spikes,
                "tsnr": {roi: _finite(v) for roi, v in msg.tsnr.items()},
                "frames_under": {k: _finite(v) for k, v in msg.frames_under.items()},
            }
        else:
            return self._volume(self._pending.pop(seq), msg)
        return None

    def _volume(self, part: dict, msg: m.Latency) -> dict:
        c = self.counts
        tr_ms = 1000.0 * msg.tr_s if _finite(msg.tr_s) else None
        e2e = _finite(msg.ms.get("end_to_end"))
        miss = e2e is not None and tr_ms is not None and e2e > tr_ms
        c["volumes"] += 1
        c["decoded"] += part.get("status") == "ok"
        c["baseline"] += part.get("status") == "baseline"
        c["censored"] += bool(part.get("censored"))
        c["deadline_misses"] += miss
        c["last_seq"] = part["seq"]
        update = {
            "type": "volume",
            **part,
            "series": msg.series,
            "acq_time_s": msg.acq_time_s,
            "tr_ms": tr_ms,
            "latency_ms": {k: round(v, 3) for k, v in msg.ms.items()},
            "e2e_ms": e2e,
            "export_ms": _finite(msg.export_ms),
            "acquired_from": msg.acquired_from or "",
            "deadline_miss": miss,
            "counts": dict(c),
        }
        self.volumes.append(update)
        return update

    def _block(self, msg: m.Block) -> dict:
        self.counts["blocks"] += 1
        update = {
            "type": "block",
            **{k: getattr(msg, k) for k in ("block", "label", "condition", "status", "onset_s", "offset_s")},
            "rois": msg.rois,
            "layers": msg.layers,
            "labels": msg.labels,
            "scores": _scores(msg.scores) if msg.scores is not None else None,
            "label_rank": msg.label_rank,
            "n_volumes": len(msg.seqs),
            "counts": dict(self.counts),
        }
        self.blocks.append(update)
        return update

    def _reconstruction(self, msg: m.Reconstruction) -> dict:
        keys = ("series", "block", "label", "method", "iterations", "seconds", "lag_s", "loss")
        update = {
            "type": "reconstruction",
            **{
                k: _finite(v) if isinstance(v, float) else v
                for k in keys
                if (v := getattr(msg, k)) is not None
            },
            "png": base64.b64encode(msg.png.tobytes()).decode(),
        }
        self.reconstructions.append(update)
        return update

    def _status(self, msg: m.Status) -> dict | None:
        h = msg.header()
        event = msg.event
        c = self.counts
        if event == "heartbeat":  # the decoder is alive and idle; not worth replacing the last event
            return {"type": "status", "event": "heartbeat", "counts": dict(c)}
        if event == "skipped":
            c["skipped"] += 1
        elif event == "gap":
            c["gaps"] += 1
            c["missing"] += msg.missing_to - msg.missing_from + 1
        if msg.settings is not None:
            self.settings = msg.settings
        self.last_event = {"type": "status", **{k: v for k, v in h.items() if k != "settings"}}
        return {**self.last_event, "counts": dict(c), "settings": self.settings}

    def snapshot(self) -> dict:
        """Everything a newly connected page needs."""
        return {
            "type": "snapshot",
            "volumes": list(self.volumes),
            "blocks": list(self.blocks),
            "counts": dict(self.counts),
            "settings": self.settings,
            "last_event": self.last_event,
            "reconstructions": list(self.reconstructions),
            "history": self.history,
        }
