"""Cardiac and respiratory recordings over LSL: a stream of type ``physio``.

A physiological-monitoring bridge (Siemens PMU, BIOPAC, BrainProducts) publishes a float stream
of type ``physio`` at its sampling rate, one channel per signal, named in the stream's
``desc/channels/channel/label`` (``cardiac`` for a pulse oximeter or ECG, ``respiratory`` for a
belt; ``pulse``, ``ppg``, ``ecg``, ``resp`` and ``respiration`` are read as those; other channels
are ignored; without labels the first two channels are cardiac and respiratory). Time stamps are
on the sender's LSL clock; :class:`PhysioInlet` corrects them to this machine's and hands samples
over on its monotonic clock, the clock of the volumes' ``acquired`` stamps.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

import numpy as np

from rtdecode.transport.lsl import ClockOffset, lsl_to_monotonic_ns, monotonic_ns_to_lsl, pylsl

log = logging.getLogger(__name__)

PHYSIO_TYPE = "physio"
_ALIASES = {
    "cardiac": "cardiac", "pulse": "cardiac", "ppg": "cardiac", "ecg": "cardiac",
    "respiratory": "respiratory", "resp": "respiratory", "respiration": "respiratory",
}  # fmt: skip


def channel_map(labels: list[str]) -> dict[str, int]:
    """Which channel holds ``cardiac`` and ``respiratory`` (see the module)."""
    found = {}
    for i, label in enumerate(labels):
        name = _ALIASES.get(label.strip().lower())
        if name is not None and name not in found:
            found[name] = i
    if not found and len(labels) >= 2 and not any(labels):
        found = {"cardiac": 0, "respiratory": 1}
    return found


def _labels(info: pylsl.StreamInfo) -> list[str]:
    ch = info.desc().child("channels").child("channel")
    labels = []
    for _ in range(info.channel_count()):
        labels.append(ch.child_value("label") if not ch.empty() else "")
        ch = ch.next_sibling()
    return labels


class PhysioInlet:
    """Receive a ``physio`` stream in a worker thread; :meth:`feed` hands samples to the pipeline.

    Parameters
    ----------
    name : str
        Only a stream of this name (empty: the first stream of type ``physio`` found).
    """

    def __init__(self, name: str = "") -> None:
        pred = f"type='{PHYSIO_TYPE}'" + (f" and name='{name}'" if name else "")
        self._queue: queue.SimpleQueue[tuple[np.ndarray, np.ndarray, np.ndarray]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self.latest_s = -np.inf  # the newest sample received, monotonic s
        self._thread = threading.Thread(target=self._run, args=(pred,), name="lsl-physio", daemon=True)
        self._thread.start()

    def _run(self, pred: str) -> None:
        inlet, channels, clock = None, {}, None
        resolver = pylsl.ContinuousResolver(pred=pred, forget_after=5.0)
        while not self._stop.is_set():
            try:
                if inlet is None:
                    found = resolver.results()
                    if not found:
                        self._stop.wait(0.02)
                        continue
                    inlet = pylsl.StreamInlet(found[0], max_buflen=60)
                    inlet.open_stream(2.0)  # samples flow from here: before the first volume's
                    channels = channel_map(_labels(inlet.info(timeout=2.0)))
                    if not channels:
                        log.error("physio stream %r names no cardiac or respiratory channel", found[0].name())
                    clock = ClockOffset(inlet, found[0])
                    log.info("receiving physiological recordings from %r: %s", found[0].name(), channels)
                samples, ts = inlet.pull_chunk(timeout=0.05)
                if not ts:
                    continue
                x = np.asarray(samples, np.float64)
                corr = clock.get()
                t = np.array([lsl_to_monotonic_ns(v + corr) for v in ts]) / 1e9
                cols = [
                    x[:, channels[c]] if c in channels else np.full(len(t), np.nan)
                    for c in ("cardiac", "respiratory")
                ]
                self._queue.put((t, *cols))
                self.latest_s = float(t[-1])
            except Exception:  # a failing stream must not stop the session
                log.exception("physio input failed; retrying")
                inlet = None
                self._stop.wait(0.5)

    def feed(
        self,
        add: Callable[[np.ndarray, np.ndarray, np.ndarray], None],
        until_s: float | None,
        max_wait_s: float,
    ) -> None:
        """Hand every sample received to ``add`` (:meth:`rtdecode.pipeline.physio.Physio.add`).

        Waits up to ``max_wait_s`` for samples up to ``until_s`` (a volume's end, monotonic s)
        so a volume's regressors use all of its recording; after that, goes on with what came.
        """
        deadline = time.monotonic() + max_wait_s
        while until_s is not None and self.latest_s < until_s and time.monotonic() < deadline:
            time.sleep(0.002)
        while True:
            try:
                add(*self._queue.get_nowait())
            except queue.Empty:
                break

    def close(self) -> None:
        """Stop the worker."""
        self._stop.set()
        self._thread.join(timeout=3.0)


class PhysioOutlet:
    """Publish a recording as a ``physio`` stream (for replays and tests).

    Parameters
    ----------
    name : str
    rate_hz : float
        The nominal sampling rate.
    """

    def __init__(self, name: str, rate_hz: float) -> None:
        info = pylsl.StreamInfo(name, PHYSIO_TYPE, 2, rate_hz, pylsl.cf_double64, f"{name}-physio")
        channels = info.desc().append_child("channels")
        for label in ("cardiac", "respiratory"):
            channels.append_child("channel").append_child_value("label", label)
        self._outlet = pylsl.StreamOutlet(info, chunk_size=0, max_buffered=120)

    def push(self, monotonic_s: np.ndarray, cardiac: np.ndarray, respiratory: np.ndarray) -> None:
        """Push samples time-stamped at ``monotonic_s`` (this machine's monotonic clock, s)."""
        x = np.column_stack([cardiac, respiratory]).astype(np.float64)
        stamps = [monotonic_ns_to_lsl(round(t * 1e9)) for t in monotonic_s]
        self._outlet.push_chunk(x.tolist(), stamps)

    def wait_for_consumer(self, timeout_s: float) -> bool:
        """True once an inlet is connected."""
        return self._outlet.wait_for_consumers(timeout_s)

    def close(self) -> None:
        """Stop publishing."""
        del self._outlet
