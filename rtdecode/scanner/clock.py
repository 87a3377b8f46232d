"""The scanner's times on this computer's clock: each volume's acquisition and its export delay.

A scanner writes when it acquired a volume in the header, by its own clock; the bridge knows when
the file (or last slice) was whole, by this computer's. The difference is the scanner's
reconstruction and export, which dominates a real-time loop. The two clocks differ by an offset
that is

* set by the user (``offset_s``; 0 when both follow the same time server),
* measured from the scanner's trigger pulses, when the lab receives them (the pulse of a volume
  and its header time mark the same moment), or
* estimated from the first volumes: the smallest ``file complete - image created`` among them is
  taken as zero transfer time (image created = the header's ContentTime, else acquisition + TR),
  so the export delays are then lower bounds and say so (``acquired_from``).

With trigger pulses, a volume's ``ACQUIRED`` stamp is its pulse: the truest acquisition time there
is. Pulses are paired with volumes by count within a series: the series' first volume takes the
first pulse after the last one the previous series used.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

from rtdecode.errors import ConfigError
from rtdecode.scanner.readers import ScanVolume
from rtdecode.volume import Stage, Volume, wall_to_monotonic_ns

log = logging.getLogger(__name__)

MAX_EXPORT_S = 60.0  # a longer delay between acquisition and creation is a header error


class Triggers(Protocol):
    """A source of the scanner's trigger pulses (see :mod:`rtdecode.transport.triggers`)."""

    def times_ns(self) -> list[int]:
        """Every pulse so far, ``time.monotonic_ns()`` values, oldest first."""
        ...


def wall_at(monotonic_ns: int) -> float:
    """The wall-clock time (Unix seconds) of a past ``time.monotonic_ns()`` value."""
    return time.time() - (time.monotonic_ns() - monotonic_ns) / 1e9


class ScannerClock:
    """Turn volumes read from scanner files into time-stamped :class:`~rtdecode.volume.Volume`.

    Parameters
    ----------
    session : str
        Session id put on the volumes; the series id is ``series-<number>``.
    tr_s : float or None
        Repetition time to use instead of the header's.
    offset_s : float or None
        This computer's clock minus the scanner's; None measures it (triggers) or estimates it.
    triggers : Triggers or None
        The scanner's trigger pulses.
    estimate_from : int
        Volumes of the first series over which an estimated offset is taken.
    """

    def __init__(
        self,
        session: str = "session",
        tr_s: float | None = None,
        offset_s: float | None = None,
        triggers: Triggers | None = None,
        estimate_from: int = 5,
    ) -> None:
        self.session = session
        self.tr_s = tr_s
        self.offset_s = offset_s
        self.offset_from = "set" if offset_s is not None else ""
        self.triggers = triggers
        self.estimate_from = estimate_from
        self._estimates: list[float] = []
        self._trigger_offsets: list[float] = []
        self._series = ""
        self._base = 0  # index of the current series' first pulse
        self._first_seq = 0
        self._last_used = -1  # index of the last pulse paired with a volume

    def volume(self, sv: ScanVolume, complete_ns: int) -> Volume:
        """The volume of ``sv``, whose file (or last slice) was complete at ``complete_ns``.

        Raises
        ------
        ConfigError
            If neither the files nor ``tr_s`` give a usable repetition time.
        """
        tr = self.tr_s if self.tr_s is not None else sv.tr_s
        if not tr >= 0.1:
            # Every volume would be refused by the decoder: stop here and say what is missing.
            raise ConfigError(
                f"series {sv.series}: the files carry no usable repetition time (TR {tr:.3g} s); "
                "start the bridge with --tr-s"
            )
        series = f"series-{sv.series}"
        complete_wall = wall_at(complete_ns)
        data = np.ascontiguousarray(sv.data)
        vol = Volume(data, sv.affine, sv.seq, tr, complete_wall, self.session, series)
        vol.slice_times_s = sv.slice_times_s
        vol.stamps[Stage.FILE_COMPLETE] = complete_ns
        pulse = self._pulse(series, sv.seq, complete_ns)
        if sv.acq_time_s is not None:
            self._learn_offset(sv, tr, complete_wall, pulse)
            vol.acq_time_s = sv.acq_time_s + self.offset_s
            vol.clock_offset_s = self.offset_s
            vol.stamps[Stage.ACQUIRED] = wall_to_monotonic_ns(vol.acq_time_s)
            estimated = self.offset_from == "estimated"
            vol.acquired_from = "scanner clock, estimated offset" if estimated else "scanner clock"
        if pulse is not None:
            vol.stamps[Stage.ACQUIRED] = pulse
            vol.acquired_from = "trigger"
            if sv.acq_time_s is None:
                vol.acq_time_s = wall_at(pulse)
        return vol

    def _pulse(self, series: str, seq: int, complete_ns: int) -> int | None:
        if self.triggers is None:
            return None
        pulses = self.triggers.times_ns()
        if series != self._series:
            self._series, self._base, self._first_seq = series, self._last_used + 1, seq
        k = self._base + seq - self._first_seq
        if not 0 <= k < len(pulses) or pulses[k] > complete_ns:
            log.warning("%s volume %d: no trigger pulse before its file was complete", series, seq)
            return None
        self._last_used = max(self._last_used, k)
        return pulses[k]

    def _learn_offset(self, sv: ScanVolume, tr: float, complete_wall: float, pulse: int | None) -> None:
        if self.offset_from == "set":
            return
        if pulse is not None:
            self._trigger_offsets.append(wall_at(pulse) - sv.acq_time_s)
            self._update(statistics.median(self._trigger_offsets), "trigger")
            return
        if self.offset_from == "trigger" or len(self._estimates) >= self.estimate_from:
            return
        created = sv.created_time_s
        if created is None or not 0.0 <= created - sv.acq_time_s <= MAX_EXPORT_S:
            created = sv.acq_time_s + tr  # the volume cannot be whole before its acquisition ends
        self._estimates.append(complete_wall - created)
        self._update(min(self._estimates), "estimated")

    def _update(self, offset: float, source: str) -> None:
        if self.offset_s is None or source != self.offset_from:
            log.info("scanner clock offset %+.3f s (%s)", offset, source)
        self.offset_s, self.offset_from = offset, source


class Dispatch:
    """Stamp each complete volume with a :class:`ScannerClock` and hand it to ``send``; count them."""

    def __init__(self, send: Callable[[Volume], None], clock: ScannerClock | None = None) -> None:
        self.send = send
        self.clock = clock or ScannerClock()
        self.n_sent = 0
        self.last_series = ""

    def __call__(self, sv: ScanVolume, complete_ns: int) -> None:
        """Send the volume of ``sv``, whose file or last slice was complete at ``complete_ns``."""
        vol = self.clock.volume(sv, complete_ns)
        self.send(vol)
        self.n_sent += 1
        self.last_series = vol.series
