"""ZeroMQ sources and sinks speaking wire protocol v1 (:mod:`rtdecode.wire`).

Volumes travel PUSH -> PULL (no loss, back-pressure instead); results are published on PUB with
one topic per kind. Sends are zero-copy: frames alias the arrays handed over. Each endpoint owns
its context, so :meth:`_Endpoint.close` can terminate it: that is what makes libzmq deliver what is
queued (up to the linger time) and let go of every aliased buffer before Python frees it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import zmq

from rtdecode import wire
from rtdecode.errors import ConfigError, ProtocolError, ReceiveTimeout
from rtdecode.volume import SeriesEnd, Stage, Volume, stamp


def _open(context: zmq.Context, kind: int, address: str, bind: bool, linger_ms: int) -> zmq.Socket:
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, linger_ms)
    try:
        if bind:
            sock.bind(address)
        else:
            sock.connect(address)
    except zmq.ZMQError as err:
        sock.close(0)
        verb = "bind to" if bind else "connect to"
        raise ConfigError(f"cannot {verb} {address!r}: {err}") from None
    return sock


class _Endpoint:
    """Lifecycle shared by all endpoints: context manager, idempotent close."""

    socket: zmq.Socket
    _context: zmq.Context

    def _init(self, kind: int, address: str, bind: bool, linger_ms: int) -> None:
        self._context = zmq.Context(io_threads=1)
        try:
            self.socket = _open(self._context, kind, address, bind, linger_ms)
        except ConfigError:
            self._context.term()
            raise

    def _send(self, frames: Sequence[Any]) -> None:
        self.socket.send_multipart(frames, copy=False)

    def close(self) -> None:
        """Deliver what is queued (up to the linger time), then close; safe to call twice."""
        if not self.socket.closed:
            self.socket.close()
            self._context.term()

    def __enter__(self) -> _Endpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def last_endpoint(self) -> str:
        """The address actually bound (useful with port 0 / ``tcp://127.0.0.1:*``)."""
        return self.socket.getsockopt_string(zmq.LAST_ENDPOINT)


class VolumeSender(_Endpoint):
    """Send volumes (PUSH). Connects by default; the decoder binds.

    Parameters
    ----------
    address : str
    bind : bool
    linger_ms : int
        How long :meth:`close` waits to deliver queued volumes.
    """

    def __init__(self, address: str, bind: bool = False, linger_ms: int = 5000) -> None:
        self._init(zmq.PUSH, address, bind, linger_ms)

    def send(self, vol: Volume) -> None:
        """Stamp ``SENT`` and send one volume; do not modify ``vol.data`` afterwards."""
        stamp(vol.stamps, Stage.SENT)
        self._send(wire.encode_volume(vol))

    def send_frames(self, frames: Sequence[Any]) -> None:
        """Send raw frames (tests use this to send malformed messages)."""
        self._send(frames)

    def send_end(self, session: str, series: str, n_sent: int) -> None:
        """Tell the receiver that a series is complete."""
        self._send(
            wire.encode(
                wire.END_TOPIC, {"kind": "end", "session": session, "series": series, "n_sent": n_sent}
            )
        )


class Receiver(_Endpoint):
    """Receive messages (PULL). Binds by default."""

    def __init__(self, address: str, bind: bool = True, linger_ms: int = 0) -> None:
        self._init(zmq.PULL, address, bind, linger_ms)
        self._poller = zmq.Poller()
        self._poller.register(self.socket, zmq.POLLIN)

    def recv(self, timeout_s: float) -> wire.Message:
        """Receive and decode one message.

        Raises
        ------
        ReceiveTimeout
            Nothing arrived within ``timeout_s``.
        ProtocolError
            The message arrived but is malformed (it is consumed).
        """
        if not self._poller.poll(int(timeout_s * 1000)):
            raise ReceiveTimeout(f"no message within {timeout_s} s")
        frames = self.socket.recv_multipart(copy=False)
        return wire.decode(frames)

    def recv_volume(self, timeout_s: float) -> Volume | SeriesEnd:
        """Receive the next volume (stamped ``RECEIVED``) or end of a series.

        Raises
        ------
        ReceiveTimeout
            Nothing arrived within ``timeout_s``.
        ProtocolError
            A malformed message, or one that is neither a volume nor an end (it is consumed).
        """
        msg = self.recv(timeout_s)
        if msg.topic == wire.END_TOPIC:
            h = msg.header
            return SeriesEnd(str(h.get("session", "")), str(h.get("series", "")), h.get("n_sent"))
        if msg.topic != wire.VOLUME_TOPIC:
            raise ProtocolError(f"unexpected topic {msg.topic!r} on the volume input")
        vol = wire.decode_volume(msg)
        stamp(vol.stamps, Stage.RECEIVED)
        return vol


class Publisher(_Endpoint):
    """Publish results (PUB). Binds by default."""

    def __init__(self, address: str, bind: bool = True, linger_ms: int = 1000) -> None:
        self._init(zmq.PUB, address, bind, linger_ms)

    def publish(
        self, topic: str, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None
    ) -> None:
        """Encode and send one message (arrays are not copied)."""
        self._send(wire.encode(topic, header, arrays))


class Subscriber(_Endpoint):
    """Subscribe to published results (SUB). Connects by default.

    Parameters
    ----------
    address : str
    topics : sequence of str
        Topic prefixes; empty means everything.
    """

    def __init__(self, address: str, topics: Sequence[str] = (), bind: bool = False) -> None:
        self._init(zmq.SUB, address, bind, 0)
        for t in topics or [""]:
            self.socket.setsockopt(zmq.SUBSCRIBE, t.encode())
        self._poller = zmq.Poller()
        self._poller.register(self.socket, zmq.POLLIN)

    def recv(self, timeout_s: float) -> wire.Message:
        """Receive and decode one message (see :meth:`Receiver.recv`)."""
        if not self._poller.poll(int(timeout_s * 1000)):
            raise ReceiveTimeout(f"no message within {timeout_s} s")
        return wire.decode(self.socket.recv_multipart(copy=False))
