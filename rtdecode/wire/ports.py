"""What the live loop needs from a volume source and a result sink (structural protocols).

ZeroMQ and LSL endpoints (:mod:`rtdecode.transport`), the HDF5 recorder and the fan-out all
satisfy them without inheriting anything; the loop never knows which one it holds.
"""

from __future__ import annotations

from typing import Protocol

from rtdecode.volume import SeriesEnd, Volume
from rtdecode.wire.messages import WireMessage


class VolumeSource(Protocol):
    """Where volumes come from: a ZeroMQ receiver or an LSL volume inlet."""

    def recv_volume(self, timeout_s: float) -> Volume | SeriesEnd:
        """The next volume, stamped ``RECEIVED``, or the end of a series."""

    def close(self) -> None:
        """Disconnect."""


class Sink(Protocol):
    """Where results go: ZeroMQ PUB and LSL outlets live, an HDF5 recording offline."""

    def publish(self, msg: WireMessage) -> None:
        """Send or store one declared message."""


class Fanout:
    """A sink that forwards every message to several sinks (ZeroMQ and LSL)."""

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = sinks

    def publish(self, msg: WireMessage) -> None:
        """Send one message to every sink."""
        for sink in self.sinks:
            sink.publish(msg)
