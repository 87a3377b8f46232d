"""The unit of data that travels through the pipeline: one fMRI volume and its time stamps."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np


class Stage(IntEnum):
    """Named moments in the life of a volume, in pipeline order.

    Stamps are ``time.monotonic_ns()`` values, which every process on one machine shares
    (CLOCK_MONOTONIC), so a sender's and a receiver's stamps can be subtracted. ``ACQUIRED`` is the
    scanner's acquisition of the volume (its trigger pulse, or its header time on this computer's
    clock); ``FILE_COMPLETE`` the moment its file, or last slice, was whole at the bridge: the
    interval between them is the scanner's reconstruction and export, before rtdecode sees it.
    """

    ACQUIRED = 0
    FILE_COMPLETE = 1
    SENT = 2
    RECEIVED = 3
    MOTION = 4
    PREPROCESSED = 5
    DECODED = 6
    IDENTIFIED = 7
    PUBLISHED = 8


NOT_REACHED = -1


def new_stamps() -> np.ndarray:
    """Return a stamp array with every stage marked as not reached.

    Returns
    -------
    numpy.ndarray
        int64 array of shape (len(Stage),) filled with ``NOT_REACHED``.
    """
    return np.full(len(Stage), NOT_REACHED, dtype=np.int64)


def stamp(stamps: np.ndarray, stage: Stage) -> None:
    """Record the current monotonic time in ``stamps`` for ``stage``."""
    stamps[stage] = time.monotonic_ns()


def wall_to_monotonic_ns(wall_time_s: float) -> int:
    """Convert a wall-clock time (Unix seconds) to this machine's monotonic nanoseconds.

    Acquisition times come from the scanner's wall clock; the conversion lets them sit beside
    the monotonic stage stamps.
    """
    return time.monotonic_ns() - round((time.time() - wall_time_s) * 1e9)


def stamps_to_dict(stamps: np.ndarray) -> dict[str, int]:
    """Return the reached stamps as ``{stage name (lower case): ns}``."""
    return {s.name.lower(): int(stamps[s]) for s in Stage if stamps[s] != NOT_REACHED}


def stamps_from_dict(d: dict[str, int]) -> np.ndarray:
    """Inverse of :func:`stamps_to_dict`; unknown names are ignored (newer senders)."""
    out = new_stamps()
    for name, value in d.items():
        member = Stage.__members__.get(name.upper())
        if member is not None:
            out[member] = int(value)
    return out


@dataclass
class Volume:
    """One fMRI volume.

    Parameters
    ----------
    data : numpy.ndarray
        Array of shape (nx, ny, nz), voxel values in scanner units; (nx, ny, nz, n_echoes) for a
        multi-echo volume (``echo_times_ms``).
    affine : numpy.ndarray
        Array of shape (4, 4) mapping voxel indices to RAS+ millimetres (nibabel convention).
    seq : int
        Index of the volume in its series, from 0.
    tr_s : float
        Repetition time in seconds.
    acq_time_s : float
        Acquisition time, wall clock, Unix seconds.
    session : str
        Session identifier.
    series : str
        Series (run) identifier; a new series restarts ``seq``.
    stamps : numpy.ndarray
        int64 array of shape (len(Stage),), monotonic ns per :class:`Stage`.
    acquired_from : str
        What the ``ACQUIRED`` stamp is: ``trigger`` (the scanner's pulse), ``scanner clock`` (the
        header's time with a clock offset that was set or measured by triggers), ``scanner clock,
        estimated offset``, ``sender`` (a simulator or replay), or ``""`` (none).
    clock_offset_s : float or None
        This computer's clock minus the scanner's, as used for ``acq_time_s``.
    slice_times_s : tuple of float or None
        When each slice along the third array axis was acquired, seconds after the volume began
        (from the scanner's headers); None when unknown.
    echo_times_ms : tuple of float or None
        A multi-echo volume's echo times, one per index of the fourth axis; None for one echo.
    """

    data: np.ndarray
    affine: np.ndarray
    seq: int
    tr_s: float
    acq_time_s: float
    session: str = "session"
    series: str = "series"
    stamps: np.ndarray = field(default_factory=new_stamps)
    acquired_from: str = ""
    clock_offset_s: float | None = None
    slice_times_s: tuple[float, ...] | None = None
    echo_times_ms: tuple[float, ...] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the voxel array."""
        return self.data.shape


def series_key(vol: Volume) -> str:
    """What identifies a volume's series: its series id (a session change alone continues it)."""
    return vol.series


@dataclass(frozen=True)
class SeriesEnd:
    """A sender's word that a series is complete (``n_sent`` volumes were sent)."""

    session: str
    series: str
    n_sent: int | None = None
