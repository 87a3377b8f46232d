"""Lab Streaming Layer: volumes and stimulus markers in, every result out.

The stream layouts (names, types, channel labels, units, XML descriptions) are in
``docs/protocol.md``, section "LSL streams". liblsl reads its configuration once, on first use,
so importing this module points ``LSLAPICFG`` at the loopback-only file shipped beside it unless
the user has named one (a lab network needs its own, see the README).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

LOOPBACK_CONFIG = Path(__file__).with_name("lsl_loopback.cfg")
os.environ.setdefault("LSLAPICFG", str(LOOPBACK_CONFIG))

import pylsl  # noqa: E402  (must follow the configuration above)

from rtdecode.errors import ProtocolError, ReceiveTimeout  # noqa: E402
from rtdecode.volume import NOT_REACHED, SeriesEnd, Stage, Volume, stamp  # noqa: E402

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
VOLUME_TYPE = "fMRI"
MARKER_TYPE = "Markers"
# pylsl's channel formats for the numpy dtypes a volume may have.
_FORMATS = {"int8": "int8", "int16": "int16", "int32": "int32", "float32": "float32", "float64": "double64"}

# liblsl's clock is std::chrono::steady_clock, CLOCK_MONOTONIC on Linux like time.monotonic_ns;
# measuring the offset once keeps the conversion right where the two differ.
_LSL_MINUS_MONOTONIC_S = pylsl.local_clock() - time.monotonic_ns() / 1e9


def lsl_to_monotonic_ns(t_lsl: float) -> int:
    """Convert a time on this machine's LSL clock to ``time.monotonic_ns()``."""
    return round((t_lsl - _LSL_MINUS_MONOTONIC_S) * 1e9)


def monotonic_ns_to_lsl(ns: int) -> float:
    """Convert ``time.monotonic_ns()`` to this machine's LSL clock (seconds)."""
    return ns / 1e9 + _LSL_MINUS_MONOTONIC_S


def wall_to_lsl(wall_time_s: float) -> float:
    """Convert a wall-clock time (Unix seconds) to this machine's LSL clock."""
    return pylsl.local_clock() - (time.time() - wall_time_s)


class ClockOffset:
    """A stream's clock minus this machine's (LSL's estimate, every 5 s); 0 for this machine's streams."""

    def __init__(self, inlet: pylsl.StreamInlet, info: pylsl.StreamInfo, timeout_s: float = 2.0) -> None:
        # A stream of this machine shares its clock: an estimate would add only noise (~20 µs).
        self._inlet = None if info.hostname() == socket.gethostname() else inlet
        self._value, self._at = 0.0, -np.inf
        self.get(timeout_s)

    def get(self, timeout_s: float = 2.0) -> float:
        """The offset to add to the stream's time stamps (seconds)."""
        if self._inlet is not None and time.monotonic() - self._at > 5.0:
            self._value, self._at = self._inlet.time_correction(timeout=timeout_s), time.monotonic()
        return self._value


def describe_stream(info: pylsl.StreamInfo, fields: Mapping[str, Any]) -> None:
    """Add an ``rtdecode`` element with ``fields`` (JSON-encoded unless strings) to a stream description."""
    node = info.desc().append_child("rtdecode")
    node.append_child_value("version", str(FORMAT_VERSION))
    for key, value in fields.items():
        node.append_child_value(key, value if isinstance(value, str) else json.dumps(value))


def description(info: pylsl.StreamInfo) -> dict[str, str]:
    """The fields of a stream description's ``rtdecode`` element (see :func:`describe`)."""
    node = info.desc().child("rtdecode")
    out, child = {}, node.first_child()
    while not child.empty():
        out[child.name()] = child.child_value()
        child = child.next_sibling()
    return out


class VolumeOutlet:
    """Send volumes as samples of an LSL stream of type ``fMRI`` (one outlet per series).

    Each sample is a whole volume, flattened in C order, time-stamped with its acquisition time
    on the sender's LSL clock. The outlet is created with the first volume of a series, because
    its description carries that series' shape, affine, TR and the time volume 0 was acquired,
    from which a receiver recovers each volume's index.

    Parameters
    ----------
    name : str
        Stream name.
    n_volumes : int
        Volumes in the series if known (the receiver then ends the series after the last), else 0.
    speed : float
        Replay speed: the stream's nominal rate is ``speed / TR``.
    linger_s : float
        How long :meth:`send_end` and :meth:`close` keep the outlet open so that receivers can
        fetch what was pushed last.
    """

    def __init__(
        self, name: str = "rtdecode-scanner", n_volumes: int = 0, speed: float = 1.0, linger_s: float = 2.0
    ) -> None:
        if not 0 < speed < float("inf"):
            raise ValueError(f"an LSL volume stream needs a finite speed > 0, got {speed!r}")
        self.name, self.n_volumes, self.speed, self.linger_s = name, n_volumes, speed, linger_s
        self._outlet: pylsl.StreamOutlet | None = None
        self._key: tuple | None = None

    def _open(self, vol: Volume, series_start: float) -> None:
        fmt = _FORMATS.get(vol.data.dtype.name)
        if fmt is None:
            raise ValueError(f"LSL cannot carry {vol.data.dtype} volumes; use one of {sorted(_FORMATS)}")
        self.close()
        info = pylsl.StreamInfo(
            self.name,
            VOLUME_TYPE,
            int(vol.data.size),
            self.speed / vol.tr_s,
            fmt,
            f"{self.name}-{vol.session}-{vol.series}-{os.getpid()}",
        )
        describe_stream(
            info,
            {
                "session": vol.session,
                "series": vol.series,
                "shape": list(vol.data.shape),
                "order": "C",
                "affine": np.asarray(vol.affine, dtype=float).tolist(),
                "tr_s": float(vol.tr_s),
                "series_start": series_start,
                "n_volumes": int(self.n_volumes),
            },
        )
        self._outlet = pylsl.StreamOutlet(info, chunk_size=1, max_buffered=max(60, int(360 / vol.tr_s)))
        self._key = _series_of(vol)

    def prepare(self, first: Volume, start_ns: int) -> None:
        """Open the series' outlet for volume 0 due at ``start_ns`` (monotonic) and wait for an inlet.

        An LSL outlet delivers only to connected inlets; this gives them until ``start_ns``.
        """
        self._open(first, monotonic_ns_to_lsl(start_ns))
        if not self._outlet.wait_for_consumers(max((start_ns - time.monotonic_ns()) / 1e9, 0.0)):
            log.warning("no inlet has connected to LSL stream %r yet; volumes go out regardless", self.name)

    def send(self, vol: Volume, t_lsl: float | None = None) -> None:
        """Push one volume, time-stamped ``t_lsl`` (default: its ``ACQUIRED`` stamp, else now)."""
        if t_lsl is None:
            acq = vol.stamps[Stage.ACQUIRED]
            t_lsl = monotonic_ns_to_lsl(int(acq)) if acq != NOT_REACHED else pylsl.local_clock()
        if _series_of(vol) != self._key:
            self._open(vol, t_lsl - vol.seq * vol.tr_s / self.speed)
        stamp(vol.stamps, Stage.SENT)
        self._outlet.push_chunk(np.ascontiguousarray(vol.data).reshape(1, -1), t_lsl)

    def send_end(self, session: str, series: str, n_sent: int) -> None:
        """End the series: keep the outlet for ``linger_s`` so the last volumes get out, then close."""
        self.close()

    def close(self) -> None:
        """Close the current outlet (after ``linger_s``); safe to call twice."""
        if self._outlet is not None:
            time.sleep(self.linger_s)
            self._outlet = None
            self._key = None

    def __enter__(self) -> VolumeOutlet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _series_of(vol: Volume) -> tuple:
    # What a volume stream's outlet is for: a volume that differs in any of it needs a new one.
    return (vol.session, vol.series, vol.data.shape, vol.data.dtype, np.asarray(vol.affine).tobytes())


class VolumeInlet:
    """Receive volumes from an LSL stream of type ``fMRI`` (see :class:`VolumeOutlet`).

    The index of a volume is recovered from its time stamp and the series start in the stream
    description, so dropped volumes show as gaps and repeats as repeats. A series ends after
    volume ``n_volumes - 1`` when the description gives ``n_volumes``; then the next stream
    of the type (another series) is looked for.

    Parameters
    ----------
    name : str
        Only streams of this name (empty: any).
    """

    def __init__(self, name: str = "") -> None:
        self.name = name
        # A resolver in the background finds a new series' stream within a resolution wave.
        pred = f"type='{VOLUME_TYPE}'" + (f" and name='{name}'" if name else "")
        self._resolver = pylsl.ContinuousResolver(pred=pred, forget_after=5.0)
        self._inlet: pylsl.StreamInlet | None = None
        self._done: set[str] = set()
        self._queue: deque[Volume | SeriesEnd] = deque()

    def _connect(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        found_all = self._resolver.results()
        while not [f for f in found_all if f.uid() not in self._done] and time.monotonic() < deadline:
            time.sleep(0.02)
            found_all = self._resolver.results()
        for found in found_all:
            if found.uid() in self._done:
                continue
            # Resolution returns the header only; the description comes with the inlet's info().
            inlet = pylsl.StreamInlet(found, max_buflen=360, max_chunklen=1, recover=True)
            info = inlet.info(timeout_s)
            meta = description(info)
            try:
                self._shape = tuple(json.loads(meta["shape"]))
                self._order = meta.get("order", "C")
                self._affine = np.array(json.loads(meta["affine"]), dtype=float).reshape(4, 4)
                self._tr = float(meta["tr_s"])
                self._start = float(meta["series_start"])
                self._n_volumes = int(meta.get("n_volumes", "0"))
                self._session, self._series = meta.get("session", "lsl"), meta.get("series", info.uid())
            except (KeyError, ValueError, TypeError) as err:
                self._done.add(info.uid())
                raise ProtocolError(
                    f"LSL stream {info.name()!r}: unusable description (missing or bad {err})"
                ) from err
            if int(np.prod(self._shape)) != info.channel_count() or self._order not in ("C", "F"):
                self._done.add(info.uid())
                raise ProtocolError(
                    f"LSL stream {info.name()!r}: shape {self._shape} / order {self._order!r} "
                    f"do not fit {info.channel_count()} channels"
                )
            self._uid, self._rate = info.uid(), info.nominal_srate()
            self._inlet = inlet
            self._inlet.open_stream(timeout_s)
            # The first estimate takes several round trips; get it before volumes flow.
            self._clock = ClockOffset(inlet, info, max(timeout_s, 2.0))
            self._dtype = np.dtype(self._inlet.np_dtype)
            log.info("receiving volumes over LSL from %r (%s/%s)", info.name(), self._session, self._series)
            return
        raise ReceiveTimeout(f"no LSL stream of type {VOLUME_TYPE!r} within {timeout_s} s")

    def recv_volume(self, timeout_s: float) -> Volume | SeriesEnd:
        """Return the next volume (stamped ``ACQUIRED`` and ``RECEIVED``) or the end of a series.

        Raises
        ------
        ReceiveTimeout
            No stream or no volume within ``timeout_s``.
        ProtocolError
            The stream's description is unusable (the stream is ignored from then on).
        """
        if self._queue:
            return self._queue.popleft()
        if self._inlet is None:
            self._connect(timeout_s)
        n = 4
        dest = np.empty((n, int(np.prod(self._shape))), dtype=self._dtype)
        # liblsl's chunk pull waits for a full chunk or the timeout, so wait for one volume only,
        # then take whatever else has arrived without waiting.
        _, ts = self._inlet.pull_chunk(timeout=timeout_s, max_samples=1, dest_obj=dest[:1])
        if len(ts) == 0:
            raise ReceiveTimeout(f"no volume within {timeout_s} s")
        _, more = self._inlet.pull_chunk(timeout=0.0, max_samples=n - 1, dest_obj=dest[1:])
        ts = [*ts, *more]
        received = time.monotonic_ns()
        correction = self._clock.get()
        for row, t in zip(dest, ts):
            seq = round((t - self._start) * self._rate)
            vol = Volume(
                np.ascontiguousarray(row.reshape(self._shape, order=self._order)),  # F order: one copy
                self._affine,
                seq,
                self._tr,
                time.time() - (pylsl.local_clock() - (t + correction)),
                self._session,
                self._series,
                acquired_from="sender",  # the LSL sample's time stamp
            )
            vol.stamps[Stage.ACQUIRED] = lsl_to_monotonic_ns(t + correction)
            vol.stamps[Stage.RECEIVED] = received
            self._queue.append(vol)
            if self._n_volumes and seq >= self._n_volumes - 1:
                self._queue.append(SeriesEnd(self._session, self._series, self._n_volumes))
                self._done.add(self._uid)
                self._inlet.close_stream()
                self._inlet = None
                break
        return self._queue.popleft()

    def close(self) -> None:
        """Disconnect; safe to call twice."""
        if self._inlet is not None:
            self._inlet.close_stream()
            self._inlet = None

    def __enter__(self) -> VolumeInlet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MarkerInlet:
    """Collect string markers from the stimulus software (an LSL stream of type ``Markers``).

    A worker thread resolves marker streams, connects to them and estimates their clock offsets
    (LSL calls that can take seconds); :meth:`poll` only takes what the worker has queued, so it
    never blocks the volume loop. Markers are time-stamped on this machine's monotonic clock (the
    stimulus computer's clock corrected by LSL's time correction, refreshed every 5 s).

    Parameters
    ----------
    name : str
        Only streams of this name (empty: any stream of type ``Markers``).
    """

    def __init__(self, name: str = "") -> None:
        pred = f"type='{MARKER_TYPE}'" + (f" and name='{name}'" if name else "")
        self._queue: queue.SimpleQueue[tuple[str, int]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(pred,), name="lsl-markers", daemon=True)
        self._thread.start()

    def _run(self, pred: str) -> None:
        resolver = pylsl.ContinuousResolver(pred=pred, forget_after=5.0)
        inlets: dict[str, pylsl.StreamInlet] = {}
        clocks: dict[str, ClockOffset] = {}
        while not self._stop.is_set():
            try:
                for info in resolver.results():
                    if info.uid() not in inlets and info.channel_format() == pylsl.cf_string:
                        inlet = pylsl.StreamInlet(info, max_buflen=360)
                        inlet.open_stream(2.0)
                        clocks[info.uid()] = ClockOffset(inlet, info)
                        inlets[info.uid()] = inlet
                        log.info("receiving markers from %r", info.name())
                for uid, inlet in inlets.items():
                    samples, ts = inlet.pull_chunk(timeout=0.0)
                    if not ts:
                        continue
                    corr = clocks[uid].get()
                    for s, t in zip(samples, ts):
                        self._queue.put((s[0], lsl_to_monotonic_ns(t + corr)))
            except Exception:  # a failing stream must not end marker input for the session
                log.exception("marker input failed; retrying")
            self._stop.wait(0.002)
        for inlet in inlets.values():
            inlet.close_stream()

    def poll(self) -> list[tuple[str, int]]:
        """Markers received since the last call as ``(text, monotonic ns)``, oldest first."""
        out = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                break
        out.sort(key=lambda m: m[1])
        return out

    def close(self) -> None:
        """Stop the worker and disconnect from every marker stream; safe to call twice."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10.0)


class MarkerOutlet:
    """Send string markers, as stimulus software does (used by the simulator and tests)."""

    def __init__(self, name: str = "rtdecode-stimulus") -> None:
        info = pylsl.StreamInfo(name, MARKER_TYPE, 1, 0, "string", f"{name}-{os.getpid()}")
        self._outlet = pylsl.StreamOutlet(info)

    def wait_for_consumer(self, timeout_s: float) -> bool:
        """Wait until some inlet has connected."""
        return self._outlet.wait_for_consumers(timeout_s)

    def send(self, text: str, t_lsl: float | None = None) -> None:
        """Push one marker, time-stamped ``t_lsl`` (default: now)."""
        self._outlet.push_sample([text], t_lsl if t_lsl is not None else pylsl.local_clock())
