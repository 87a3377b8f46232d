"""A subscriber that shows each volume's ranking and latency live and can save what it received."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from rtdecode.errors import ProtocolError, ReceiveTimeout, RecordingError
from rtdecode.transport.zmq import Subscriber
from rtdecode.wire.frames import Message

log = logging.getLogger(__name__)


class ResultLog:
    """Everything published about each volume, keyed by volume index (one series)."""

    def __init__(self) -> None:
        self.features: dict[tuple[str, str], dict[int, np.ndarray]] = {}
        self.rankings: dict[int, Message] = {}
        self.latency: dict[int, dict] = {}
        self.motion: dict[int, dict] = {}
        self.feedback: dict[int, dict] = {}
        self.blocks: list[dict] = []
        self.status: dict[int, str] = {}
        self.end: dict | None = None
        self.skipped: list[str] = []

    def add(self, msg: Message) -> None:
        """File one message under its volume."""
        h = msg.header
        kind = h.get("kind")
        if kind == "features":
            self.features.setdefault((h["roi"], h["layer"]), {})[h["seq"]] = msg.arrays["features"].copy()
        elif kind == "ranking":
            self.rankings[h["seq"]] = msg
            self.status[h["seq"]] = h["status"]
        elif kind == "latency":
            self.latency[h["seq"]] = h["ms"]
        elif kind == "motion":
            self.motion[h["seq"]] = h
        elif kind == "feedback":
            self.feedback[h["seq"]] = h["scores"]
        elif kind == "block":
            self.blocks.append(dict(h))
        elif kind == "status" and h.get("event") == "end":
            self.end = h
        elif kind == "status" and h.get("event") == "skipped":
            self.skipped.append(h["reason"])

    def save(self, path: str | Path) -> None:
        """Write everything received as NPZ.

        Arrays: ``seq``, ``status``, ``features/<roi>/<layer>`` (NaN where absent),
        ``top_indices`` (-1 where absent), ``e2e_ms``, ``motion``, ``fd_mm``, ``censored``,
        ``feedback/<name>`` and ``feedback_raw/<name>`` (NaN where absent), ``blocks`` (the block
        results' headers as JSON) and ``end`` (the decoder's end-of-series status as JSON).
        """
        seqs = np.array(sorted(self.status), dtype=np.int64)
        pos = {s: i for i, s in enumerate(seqs)}
        arrays: dict[str, np.ndarray] = {"seq": seqs, "status": np.array([self.status[s] for s in seqs])}
        for (roi, layer), by_seq in self.features.items():
            n_units = next(iter(by_seq.values())).size
            a = np.full((seqs.size, n_units), np.nan, dtype=np.float32)
            for s, v in by_seq.items():
                if s in pos:
                    a[pos[s]] = v
            arrays[f"features/{roi}/{layer}"] = a
        ok = [m for m in self.rankings.values() if "indices" in m.arrays]
        if ok:
            shape = ok[0].arrays["indices"].shape
            top = np.full((seqs.size, *shape), -1, dtype=np.int32)
            for s, m in self.rankings.items():
                if "indices" in m.arrays:
                    top[pos[s]] = m.arrays["indices"]
            arrays["top_indices"] = top
            arrays["rois"], arrays["layers"] = (
                np.array(ok[0].header["rois"]),
                np.array(ok[0].header["layers"]),
            )
        arrays["e2e_ms"] = np.array([self.latency.get(s, {}).get("end_to_end", np.nan) for s in seqs])
        arrays["motion"] = np.array(
            [self.motion[s]["params"] if s in self.motion else [np.nan] * 6 for s in seqs]
        )
        arrays["fd_mm"] = np.array([self.motion.get(s, {}).get("fd_mm", np.nan) for s in seqs])
        arrays["censored"] = np.array([bool(self.motion.get(s, {}).get("censored", False)) for s in seqs])
        names = sorted({n for scores in self.feedback.values() for n in scores})
        for name in names:
            for key, field in (("feedback", "value"), ("feedback_raw", "raw")):
                values = [self.feedback.get(s, {}).get(name, {}).get(field) for s in seqs]
                arrays[f"{key}/{name}"] = np.array([np.nan if v is None else v for v in values], dtype=float)
        arrays["blocks"] = np.array(json.dumps(self.blocks))
        arrays["end"] = np.array(json.dumps(self.end))
        np.savez(path, **arrays)


def describe(results: ResultLog, seq: int, roi: str, layer: str) -> str:
    """One line for a volume: status, top labels of ``roi``/``layer``, motion and latency."""
    ranking = results.rankings.get(seq)
    text = f"vol {seq:4d}"
    if ranking is None or "indices" not in ranking.arrays:
        text += f"  {results.status.get(seq, '?'):<8}"
    else:
        h = ranking.header
        try:
            labels = h["labels"][h["rois"].index(roi)][h["layers"].index(layer)]
            scores = ranking.arrays["scores"][h["rois"].index(roi), h["layers"].index(layer)]
            text += f"  {roi}/{layer}: " + " ".join(f"{lb}({sc:.2f})" for lb, sc in zip(labels, scores))
        except ValueError:
            text += f"  ({roi}/{layer} not decoded)"
        if h.get("censored"):
            text += "  [censored]"
    m = results.motion.get(seq)
    if m is not None:
        text += f"  fd {m['fd_mm']:.2f} mm"
    e2e = results.latency.get(seq, {}).get("end_to_end")
    if e2e is not None:
        text += f"  e2e {e2e:.1f} ms"
    return text


def messages(
    address: str,
    ready_file: str | Path | None = None,
    until_end: bool = False,
    timeout_s: float = 0.0,
    topics: Sequence[str] = (),
    stop: threading.Event | None = None,
) -> Iterator[Message]:
    """Everything a decoder publishes (or the ``topics`` prefixes), decoded, until a stop condition.

    Stops when ``stop`` is set (by default on SIGTERM), after the end-of-series status (which is
    yielded) when ``until_end``, or after ``timeout_s`` without any message (0 waits for ever).
    ``ready_file`` is created when the first message arrives, i.e. once the subscription is live.
    Malformed messages are logged and dropped.
    """
    if stop is None:
        stop = threading.Event()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Subscriber(address, topics) as sub:
        last = time.monotonic()
        while not stop.is_set():
            try:
                msg = sub.recv(0.5)
            except ReceiveTimeout:
                if timeout_s and time.monotonic() - last > timeout_s:
                    log.warning("no message for %s s; stopping", timeout_s)
                    return
                continue
            except ProtocolError as err:
                log.warning("malformed message ignored: %s", err)
                continue
            last = time.monotonic()
            if ready_file is not None and not Path(ready_file).exists():
                Path(ready_file).write_text("ready\n")
            yield msg
            if until_end and msg.header.get("event") == "end":
                return


def follow(
    address: str,
    roi: str = "VC",
    layer: str = "cnn8",
    save: str | Path | None = None,
    ready_file: str | Path | None = None,
    until_end: bool = False,
    timeout_s: float = 0.0,
    echo: Callable[[str], None] = print,
) -> ResultLog:
    """Subscribe to a decoder and print one line per volume.

    Parameters
    ----------
    address : str
        The decoder's PUB address.
    roi, layer : str
        Which decoder's top candidates to print.
    save : str or Path, optional
        Write :meth:`ResultLog.save` here when done.
    ready_file, until_end, timeout_s
        As in :func:`messages`.
    echo : callable
        Where lines go.
    """
    results = ResultLog()
    for msg in messages(address, ready_file, until_end, timeout_s):
        results.add(msg)
        h = msg.header
        if h.get("kind") == "latency":
            echo(describe(results, h["seq"], roi, layer))
        elif h.get("kind") == "status" and h.get("event") == "skipped":
            echo(f"decoder skipped a message: {h['reason']}")
    if save is not None:
        results.save(save)
    return results


def record_live(
    address: str,
    out: str | Path,
    until_end: bool = True,
    timeout_s: float = 0.0,
    ready_file: str | Path | None = None,
) -> int:
    """``rtdecode record``: write everything a decoder publishes to an HDF5 recording.

    Input volumes are stored when the decoder republishes them (``run.publish_input``).

    Returns
    -------
    int
        Number of volumes recorded.

    Raises
    ------
    RecordingError
        The file could not be written (a full disk): the recorder stops and says how far it got;
        the decoder, a separate process, is not affected.
    """
    from rtdecode.io.recording import Recorder

    rec = Recorder(out, record_input=True, meta={"mode": "live", "address": address})
    for msg in messages(address, ready_file, until_end, timeout_s):
        if msg.header.get("event") == "heartbeat":
            continue
        try:
            rec.publish(msg.topic, msg.header, msg.arrays)
        except (OSError, RuntimeError) as err:  # h5py reports failed writes as either
            # The file is left as last flushed: closing HDF5 after a failed write can crash it.
            raise RecordingError(
                f"cannot write {str(out)!r} ({err}); recording stopped at volume "
                f"{msg.header.get('seq')!r} after {rec.n_volumes} volumes"
            ) from None
    rec.close()
    return rec.n_volumes
