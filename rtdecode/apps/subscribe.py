"""A subscriber that shows each volume's ranking and latency live and can save what it received."""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from rtdecode.errors import RecordingError
from rtdecode.transport.subscription import messages
from rtdecode.wire import messages as m

log = logging.getLogger(__name__)


class ResultLog:
    """Everything published about each volume, keyed by volume index (one series)."""

    def __init__(self) -> None:
        self.features: dict[tuple[str, str], dict[int, np.ndarray]] = {}
        self.rankings: dict[int, m.Ranking] = {}
        self.latency: dict[int, dict] = {}
        self.motion: dict[int, m.Motion] = {}
        self.feedback: dict[int, dict] = {}
        self.blocks: list[dict] = []
        self.status: dict[int, str] = {}
        self.end: dict | None = None
        self.skipped: list[str] = []

    def add(self, msg: m.WireMessage) -> None:
        """File one message under its volume."""
        if isinstance(msg, m.Features):
            self.features.setdefault((msg.roi, msg.layer), {})[msg.seq] = msg.features.copy()
        elif isinstance(msg, m.Ranking):
            self.rankings[msg.seq] = msg
            self.status[msg.seq] = msg.status
        elif isinstance(msg, m.Latency):
            self.latency[msg.seq] = msg.ms
        elif isinstance(msg, m.Motion):
            self.motion[msg.seq] = msg
        elif isinstance(msg, m.Feedback):
            self.feedback[msg.seq] = msg.scores
        elif isinstance(msg, m.Block) and not msg.running:  # the final result of each block
            self.blocks.append(msg.header())
        elif isinstance(msg, m.Status) and msg.event == "end":
            self.end = msg.header()
        elif isinstance(msg, m.Status) and msg.event == "skipped":
            self.skipped.append(msg.reason)

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
        ok = [r for r in self.rankings.values() if r.indices is not None]
        if ok:
            top = np.full((seqs.size, *ok[0].indices.shape), -1, dtype=np.int32)
            for s, r in self.rankings.items():
                if r.indices is not None:
                    top[pos[s]] = r.indices
            arrays["top_indices"] = top
            arrays["rois"], arrays["layers"] = np.array(ok[0].rois), np.array(ok[0].layers)
        arrays["e2e_ms"] = np.array([self.latency.get(s, {}).get("end_to_end", np.nan) for s in seqs])
        motion = [self.motion.get(s) for s in seqs]
        arrays["motion"] = np.array([mo.params if mo else [np.nan] * 6 for mo in motion])
        arrays["fd_mm"] = np.array([mo.fd_mm if mo else np.nan for mo in motion])
        arrays["censored"] = np.array([bool(mo and mo.censored) for mo in motion])
        names = sorted({n for scores in self.feedback.values() for n in scores})
        for name in names:
            for key, field in (("feedback", "value"), ("feedback_raw", "raw")):
                values = [self.feedback.get(s, {}).get(name, {}).get(field) for s in seqs]
                arrays[f"{key}/{name}"] = np.array([np.nan if v is None else v for v in values], dtype=float)
        arrays["blocks"] = np.array(json.dumps(self.blocks))
        arrays["end"] = np.array(json.dumps(self.end))
        np.savez(path, **arrays)


def volume_line(results: ResultLog, seq: int, roi: str, layer: str) -> str:
    """One line for a volume: status, top labels of ``roi``/``layer``, motion and latency."""
    ranking = results.rankings.get(seq)
    text = f"vol {seq:4d}"
    if ranking is None or ranking.indices is None:
        text += f"  {results.status.get(seq, '?'):<8}"
    else:
        try:
            i, j = ranking.rois.index(roi), ranking.layers.index(layer)
            pairs = zip(ranking.labels[i][j], ranking.scores[i, j])
            text += f"  {roi}/{layer}: " + " ".join(f"{lb}({sc:.2f})" for lb, sc in pairs)
        except ValueError:
            text += f"  ({roi}/{layer} not decoded)"
        if ranking.censored:
            text += "  [censored]"
    motion = results.motion.get(seq)
    if motion is not None:
        text += f"  fd {motion.fd_mm:.2f} mm"
    e2e = results.latency.get(seq, {}).get("end_to_end")
    if e2e is not None:
        text += f"  e2e {e2e:.1f} ms"
    return text


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
        if isinstance(msg, m.Latency):
            echo(volume_line(results, msg.seq, roi, layer))
        elif isinstance(msg, m.Status) and msg.event == "skipped":
            echo(f"decoder skipped a message: {msg.reason}")
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
    from rtdecode.io.recorder import Recorder

    rec = Recorder(out, record_input=True, meta={"mode": "live", "address": address})
    # No limit on the recorder's own queue: a disk that stalls must not cost volumes (the
    # decoder's side still drops beyond 1,000 messages, so only the recorder's memory grows).
    for msg in itertools.chain(messages(address, ready_file, until_end, timeout_s, queue=0), [None]):
        if isinstance(msg, m.Status) and msg.event == "heartbeat":
            continue
        try:
            if msg is None:  # the stream has ended: closing writes the events after the last volume
                rec.close()
            else:
                rec.publish(msg)
        except (OSError, RuntimeError) as err:  # h5py reports failed writes as either
            # The file is left as last flushed: closing HDF5 after a failed write can crash it.
            raise RecordingError(
                f"cannot write {str(out)!r} ({err}); recording stopped at volume "
                f"{getattr(msg, 'seq', None)!r} after {rec.n_volumes} volumes"
            ) from err
    return rec.n_volumes
