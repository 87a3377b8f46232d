"""The messages a sender sends the decoder: a volume, and the end of a series."""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import numpy as np

from rtdecode._typecheck import short
from rtdecode.errors import ProtocolError
from rtdecode.volume import SeriesEnd, Volume, stamps_from_dict, stamps_to_dict
from rtdecode.wire.frames import Message
from rtdecode.wire.schema import TYPES, WireMessage, array, header

MAX_SEQ = 2**53 - 1  # the largest integer every JSON reader holds exactly


@dataclasses.dataclass(kw_only=True)
class VolumeMessage(WireMessage):
    """One fMRI volume, sender → decoder (and republished with ``run.publish_input``)."""

    kind: ClassVar[str] = "volume"
    session: str = header("string", "session id")
    series: str = header("string", "series (run) id; a new series restarts preprocessing")
    seq: int = header("integer", "volume index within the series, from 0, increasing")
    affine: list = header("list", "4×4 voxel indices → RAS+ millimetres (NIfTI/nibabel convention)", "mm")
    tr_s: float = header("number", "repetition time", "s")
    acq_time_s: float = header("number", "acquisition time, Unix seconds (wall clock)", "s")
    stamps: dict = header(
        "object",
        "stage name → `time.monotonic_ns()` value; the sender sets `acquired`, `file_complete` (a "
        "scanner bridge) and `sent`",
        "ns",
        optional=True,
    )
    acquired_from: str | None = header(
        "string",
        "what `acquired` is: `trigger`, `scanner clock`, `scanner clock, estimated offset`, `sender`",
        optional=True,
    )
    clock_offset_s: float | None = header(
        "number", "this computer's clock minus the scanner's, as applied to `acq_time_s`", "s", optional=True
    )
    slice_times_s: list | None = header(
        "list", "acquisition time of each slice along the third axis after the volume began (for "
        "slice-timing correction)", "s", optional=True,
    )  # fmt: skip
    echo_times_ms: list | None = header(
        "list",
        "a multi-echo volume's echo times, one per index of the data's fourth axis",
        "ms",
        optional=True,
    )
    data: np.ndarray = array(
        "any real dtype", "[nx, ny, nz] or [nx, ny, nz, n_echoes]", "voxel values in scanner units, C order"
    )

    @classmethod
    def of(cls, vol: Volume) -> VolumeMessage:
        """The message of a :class:`~rtdecode.volume.Volume` (data not copied)."""
        return cls(
            session=vol.session,
            series=vol.series,
            seq=int(vol.seq),
            affine=np.asarray(vol.affine, dtype=float).tolist(),
            tr_s=float(vol.tr_s),
            acq_time_s=float(vol.acq_time_s),
            stamps=stamps_to_dict(vol.stamps),
            acquired_from=vol.acquired_from or None,
            clock_offset_s=vol.clock_offset_s,
            slice_times_s=None if vol.slice_times_s is None else [float(t) for t in vol.slice_times_s],
            echo_times_ms=None if vol.echo_times_ms is None else [float(t) for t in vol.echo_times_ms],
            data=vol.data,
        )

    def to_volume(self) -> Volume:
        """The :class:`~rtdecode.volume.Volume` it carries, checked.

        Raises
        ------
        ProtocolError
            A value out of range: affine not 4×4 numbers, data not 3-D (4-D with one echo time
            > 0 per echo, increasing), ``seq`` < 0, ``tr_s`` not finite and > 0, ``acq_time_s`` not
            finite, stamps not integers.
        """
        affine = self.affine
        if len(affine) != 4 or not all(
            isinstance(row, list) and len(row) == 4 and all(TYPES["number"](v) for v in row) for row in affine
        ):
            raise ProtocolError(f"volume 'affine' must be a 4x4 list of numbers, got {affine!r}")
        echoes = self.echo_times_ms
        if echoes is None and self.data.ndim != 3:
            raise ProtocolError(
                f"volume data must be 3-D (4-D with echo_times_ms), got shape {self.data.shape}"
            )
        if echoes is not None and (
            self.data.ndim != 4
            or len(echoes) != self.data.shape[3]
            or len(echoes) < 2
            or not all(TYPES["number"](t) and 0 < t < 1000 for t in echoes)
            or list(echoes) != sorted(set(echoes))
        ):
            raise ProtocolError(
                f"volume 'echo_times_ms' must be increasing numbers in ms, one per index of the data's "
                f"fourth axis (two or more), got {short(echoes)} for data of shape {self.data.shape}"
            )
        if not 0 <= self.seq <= MAX_SEQ:
            raise ProtocolError(f"volume 'seq' must be an integer from 0 to {MAX_SEQ}, got {self.seq!r}")
        if not (math.isfinite(self.tr_s) and self.tr_s > 0) or not math.isfinite(self.acq_time_s):
            raise ProtocolError(
                f"volume 'tr_s' must be > 0 and 'acq_time_s' finite, got {self.tr_s!r}, {self.acq_time_s!r}"
            )
        times = self.slice_times_s
        if times is not None and (
            len(times) != self.data.shape[2]
            or not all(TYPES["number"](t) and 0 <= t < 10 * self.tr_s for t in times)
        ):
            raise ProtocolError(
                f"volume 'slice_times_s' must be {self.data.shape[2]} numbers from 0 to 10 × tr_s (one per "
                f"slice along the third axis), got {short(times)}"
            )
        stamps, offset = self.stamps or {}, self.clock_offset_s
        if not all(TYPES["integer"](v) and -(2**63) <= v < 2**63 for v in stamps.values()):
            raise ProtocolError(f"volume 'stamps' must map stage names to 64-bit integer ns, got {stamps!r}")
        return Volume(
            self.data,
            np.asarray(affine, dtype=np.float64),
            self.seq,
            float(self.tr_s),
            float(self.acq_time_s),
            self.session,
            self.series,
            stamps_from_dict(stamps),
            self.acquired_from or "",
            offset if offset is not None and math.isfinite(offset) else None,
            None if times is None else tuple(float(t) for t in times),
            None if echoes is None else tuple(float(t) for t in echoes),
        )


@dataclasses.dataclass(kw_only=True)
class End(WireMessage):
    """A sender's word that a series is complete."""

    kind: ClassVar[str] = "end"
    session: str = header("string", "session id")
    series: str = header("string", "the series that ended")
    n_sent: int | None = header("integer", "volumes sent in the series", optional=True)

    def to_series_end(self) -> SeriesEnd:
        """The :class:`~rtdecode.volume.SeriesEnd` it announces, checked.

        Raises
        ------
        ProtocolError
            ``n_sent`` is negative or beyond the largest index.
        """
        if self.n_sent is not None and not 0 <= self.n_sent <= MAX_SEQ + 1:
            raise ProtocolError(
                f"end 'n_sent' must be an integer from 0 to {MAX_SEQ + 1}, got {self.n_sent!r}"
            )
        return SeriesEnd(self.session, self.series, self.n_sent)


def encode_volume(vol: Volume) -> list[bytes | memoryview]:
    """Frames of a ``volume`` message (data not copied)."""
    return VolumeMessage.of(vol).encode()


def decode_volume(msg: Message) -> Volume:
    """The checked :class:`~rtdecode.volume.Volume` of a decoded ``volume`` message.

    Raises
    ------
    ProtocolError
        A field is missing, of the wrong JSON type, or out of range.
    """
    return VolumeMessage.from_wire(msg).to_volume()
