"""ZeroMQ sources and sinks speaking wire protocol v1 (:mod:`rtdecode.wire`).

Volumes travel PUSH -> PULL (no loss, back-pressure instead); results are published on PUB with
one topic per kind. Sends are zero-copy: frames alias the arrays handed over. Each endpoint owns
its context, so :meth:`_Endpoint.close` can terminate it: that is what makes libzmq deliver what is
queued (up to the linger time) and let go of every aliased buffer before Python frees it.

CurveZMQ (optional, for decoders reachable over a network): a binding endpoint given a
:class:`CurveServer` encrypts and admits only clients whose public keys are in an allow-list
directory; connecting endpoints (senders, subscribers) use the key pair named by the environment
variables ``RTDECODE_CURVE_SECRET_KEY`` (their own ``.key_secret`` file) and
``RTDECODE_CURVE_SERVER_KEY`` (the decoder's public ``.key`` file). Keys come from
``rtdecode keygen``.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from rtdecode.errors import (
    BindError,
    ConfigError,
    FileError,
    PeerDisconnected,
    ProtocolError,
    ReceiveTimeout,
    SendTimeout,
)
from rtdecode.volume import SeriesEnd, Stage, Volume, stamp
from rtdecode.wire.frames import END_TOPIC, VOLUME_TOPIC, Message, decode
from rtdecode.wire.inputs import End, encode_volume
from rtdecode.wire.messages import Status, WireMessage, parse, volume_context

SECRET_KEY_ENV = "RTDECODE_CURVE_SECRET_KEY"
SERVER_KEY_ENV = "RTDECODE_CURVE_SERVER_KEY"


@dataclass(frozen=True)
class CurveServer:
    """CurveZMQ for a binding endpoint: its key pair and the directory of allowed client keys."""

    secret_key_file: str
    clients_dir: str


def _load_key(path: str, secret: bool) -> tuple[bytes, bytes | None]:
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as err:
        raise FileError(f"cannot read CurveZMQ key {path!r}: {err}") from err
    if secret and secret_key is None:
        raise ConfigError(f"{path!r} holds no secret key (give the .key_secret file)")
    return public, secret_key


def _client_keys() -> tuple[bytes, bytes, bytes] | None:
    own, server = os.environ.get(SECRET_KEY_ENV), os.environ.get(SERVER_KEY_ENV)
    if not own and not server:
        return None
    if not (own and server):
        raise ConfigError(f"CurveZMQ needs both {SECRET_KEY_ENV} and {SERVER_KEY_ENV}")
    public, secret = _load_key(own, secret=True)
    return public, secret, _load_key(server, secret=False)[0]


class _Endpoint:
    """Lifecycle shared by all endpoints: context manager, idempotent close."""

    socket: zmq.Socket
    _context: zmq.Context
    _auth: ThreadAuthenticator | None = None
    _monitor: zmq.Socket | None = None

    def _init(
        self,
        kind: int,
        address: str,
        bind: bool,
        linger_ms: int,
        curve: CurveServer | None = None,
        max_message_bytes: int = 0,
        rcvhwm: int = 1000,
    ) -> None:
        self._context = zmq.Context(io_threads=1)
        try:
            if bind and curve is not None:
                if not Path(curve.clients_dir).is_dir():
                    raise ConfigError(f"CurveZMQ client key directory {curve.clients_dir!r} does not exist")
                # ZAP handler of this context: only clients whose public key is in the directory.
                self._auth = ThreadAuthenticator(self._context)
                self._auth.start()
                self._auth.configure_curve(domain="*", location=curve.clients_dir)
            self.socket = self._context.socket(kind)
            self.socket.setsockopt(zmq.LINGER, linger_ms)
            self.socket.setsockopt(zmq.RCVHWM, rcvhwm)
            if max_message_bytes > 0:  # before bind: the listener hands its options to each connection
                self.socket.setsockopt(zmq.MAXMSGSIZE, int(max_message_bytes))
            if bind and curve is not None:
                public, secret = _load_key(curve.secret_key_file, secret=True)
                self.socket.curve_publickey, self.socket.curve_secretkey = public, secret
                self.socket.curve_server = True
            elif not bind and (keys := _client_keys()) is not None:
                self.socket.curve_publickey, self.socket.curve_secretkey, self.socket.curve_serverkey = keys
            try:
                if bind:
                    self.socket.bind(address)
                else:
                    self.socket.connect(address)
            except zmq.ZMQError as err:
                verb = "bind to" if bind else "connect to"
                raise BindError(f"cannot {verb} {address!r}: {err}") from err
        except Exception:  # nothing half-open is left behind: a refused start must not leak threads
            if getattr(self, "socket", None) is not None:
                self.socket.close(0)
            if self._auth is not None:
                self._auth.stop()
            self._context.term()
            raise

    def _send(self, frames: Sequence[Any]) -> None:
        self.socket.send_multipart(frames, copy=False)

    def close(self) -> None:
        """Deliver what is queued (up to the linger time), then close; safe to call twice."""
        if not self.socket.closed:
            if self._monitor is not None:
                self.socket.disable_monitor()
                self._monitor.close(0)
            self.socket.close()
            if self._auth is not None:
                self._auth.stop()
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
    send_timeout_s : float
        How long a send may wait for the decoder to take a volume (it queues up to 1,000 while
        connected; with no decoder, or one that refused our key, sends would wait for ever).
    """

    def __init__(
        self, address: str, bind: bool = False, linger_ms: int = 5000, send_timeout_s: float = 10.0
    ) -> None:
        self._init(zmq.PUSH, address, bind, linger_ms)
        self.address = address
        self.socket.setsockopt(zmq.SNDTIMEO, int(send_timeout_s * 1000))

    def _send(self, frames: Sequence[Any]) -> None:
        try:
            super()._send(frames)
        except zmq.Again as err:
            raise SendTimeout(
                f"no decoder at {self.address} took a volume within "
                f"{self.socket.getsockopt(zmq.SNDTIMEO) / 1000:g} s (not running, or it refused our key)"
            ) from err

    def send(self, vol: Volume) -> None:
        """Stamp ``SENT`` and send one volume; do not modify ``vol.data`` afterwards.

        Raises
        ------
        SendTimeout
            The decoder did not take it within ``send_timeout_s``.
        """
        stamp(vol.stamps, Stage.SENT)
        self._send(encode_volume(vol))

    def send_frames(self, frames: Sequence[Any]) -> None:
        """Send raw frames (tests use this to send malformed messages)."""
        self._send(frames)

    def send_end(self, session: str, series: str, n_sent: int) -> None:
        """Tell the receiver that a series is complete."""
        self._send(End(session=session, series=series, n_sent=n_sent).encode())


class Receiver(_Endpoint):
    """Receive messages (PULL). Binds by default.

    Parameters
    ----------
    max_message_bytes : int
        Larger messages are refused by libzmq, which closes the sender's connection (the sender
        reconnects by itself); 0 for no limit. The refusal shows as :class:`PeerDisconnected`.
    """

    def __init__(
        self,
        address: str,
        bind: bool = True,
        linger_ms: int = 0,
        curve: CurveServer | None = None,
        max_message_bytes: int = 0,
    ) -> None:
        self._init(zmq.PULL, address, bind, linger_ms, curve, max_message_bytes)
        self._poller = zmq.Poller()
        self._poller.register(self.socket, zmq.POLLIN)
        self._monitor = self.socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._poller.register(self._monitor, zmq.POLLIN)

    def recv(self, timeout_s: float) -> Message:
        """Receive and decode one message.

        Raises
        ------
        ReceiveTimeout
            Nothing arrived within ``timeout_s``.
        ProtocolError
            The message arrived but is malformed (it is consumed).
        PeerDisconnected
            A sender's connection closed (messages come first: this is raised only when none wait).
        """
        ready = dict(self._poller.poll(int(timeout_s * 1000)))
        if self.socket in ready:
            return decode(self.socket.recv_multipart(copy=False))
        if self._monitor in ready:
            event = recv_monitor_message(self._monitor)
            raise PeerDisconnected(
                f"a sender's connection closed ({event['endpoint'].decode(errors='replace')}): it quit, "
                "or sent a message over run.input.max_message_mb"
            )
        raise ReceiveTimeout(f"no message within {timeout_s} s")

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
        if msg.topic not in (END_TOPIC, VOLUME_TOPIC):
            raise ProtocolError(f"unexpected topic {msg.topic!r} on the volume input (volume or end)")
        try:
            item = parse(msg)  # checks that kind and topic agree
            if isinstance(item, End):
                return item.to_series_end()
            vol = item.to_volume()
        except ProtocolError as err:
            err.context = volume_context(msg.header)
            raise
        stamp(vol.stamps, Stage.RECEIVED)
        return vol


class Publisher(_Endpoint):
    """Publish results (PUB). Binds by default."""

    def __init__(
        self, address: str, bind: bool = True, linger_ms: int = 1000, curve: CurveServer | None = None
    ) -> None:
        self._init(zmq.PUB, address, bind, linger_ms, curve)

    def publish(self, msg: WireMessage) -> None:
        """Encode and send one message (arrays are not copied)."""
        self._send(msg.encode())


class HistoryServer(_Endpoint):
    """What a session has published so far, for a subscriber that starts late (REP, binds).

    A sink beside the :class:`Publisher` keeping copies of the last ``keep`` messages of ``kinds``
    (:func:`in_history`); a thread of its own answers each request with all of them, oldest first,
    in the format of docs/protocol.md ("History"). :func:`fetch_history` is the client.
    """

    def __init__(
        self, address: str, kinds: Sequence[str], keep: int = 20_000, curve: CurveServer | None = None
    ) -> None:
        self._init(zmq.REP, address, True, 0, curve)
        self._kinds = frozenset(kinds)
        self._kept: deque[list[bytes]] = deque(maxlen=keep)
        self._lock, self._stop = threading.Lock(), threading.Event()
        # The socket moves to the thread here and is used by it alone until close joins it.
        self._thread = threading.Thread(target=self._serve, name="history", daemon=True)
        self._thread.start()

    def publish(self, msg: WireMessage) -> None:
        """Keep a copy of one message (its arrays may be reused by the session afterwards)."""
        if msg.kind in self._kinds and in_history(msg):
            frames = [bytes(memoryview(f)) for f in msg.encode()]
            with self._lock:
                self._kept.append(frames)

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not self.socket.poll(100):
                continue
            self.socket.recv_multipart()  # any request: the history is all there is to ask for
            with self._lock:
                kept = list(self._kept)
            reply = [str(len(kept)).encode()]
            for frames in kept:
                reply += [str(len(frames)).encode(), *frames]
            self.socket.send_multipart(reply)

    def close(self) -> None:
        """Stop serving and close; safe to call twice."""
        self._stop.set()
        self._thread.join()
        super().close()


def in_history(msg: WireMessage) -> bool:
    """Whether a history keeps this message when it keeps its kind (heartbeats it never does)."""
    return not (isinstance(msg, Status) and msg.event == "heartbeat")


def fetch_history(address: str, timeout_s: float = 2.0) -> list[WireMessage]:
    """Ask a decoder's :class:`HistoryServer` for the session so far.

    Raises
    ------
    ReceiveTimeout
        No answer within ``timeout_s`` (no decoder, or history off).
    ProtocolError
        The answer is not a history.
    """
    client = _Endpoint()
    client._init(zmq.REQ, address, False, 0)
    with client:
        client.socket.send(b"history")
        if not client.socket.poll(int(timeout_s * 1000)):
            raise ReceiveTimeout(f"no history from {address} within {timeout_s} s")
        reply = client.socket.recv_multipart(copy=False)
    try:
        count, at, out = int(bytes(reply[0])), 1, []
        for _ in range(count):
            n = int(bytes(reply[at]))
            out.append(parse(decode(reply[at + 1 : at + 1 + n])))
            at += 1 + n
    except (ValueError, IndexError) as err:
        raise ProtocolError(f"{address}: not a history answer ({err})") from err
    if at != len(reply):
        raise ProtocolError(f"{address}: not a history answer ({len(reply) - at} frames left over)")
    return out


class Subscriber(_Endpoint):
    """Subscribe to published results (SUB). Connects by default.

    Parameters
    ----------
    address : str
    topics : sequence of str
        Topic prefixes; empty means everything.
    queue : int
        Messages this subscriber may hold unread before the oldest are dropped; 0 for no limit.
        A recorder that must keep everything while its disk is slow buffers here, in its own
        memory; the decoder's side of the connection still drops at 1,000.
    """

    def __init__(
        self, address: str, topics: Sequence[str] = (), bind: bool = False, queue: int = 1000
    ) -> None:
        self._init(zmq.SUB, address, bind, 0, rcvhwm=queue)
        for t in topics or [""]:
            self.socket.setsockopt(zmq.SUBSCRIBE, t.encode())
        self._poller = zmq.Poller()
        self._poller.register(self.socket, zmq.POLLIN)

    def recv(self, timeout_s: float) -> Message:
        """Receive and decode one message (see :meth:`Receiver.recv`)."""
        if not self._poller.poll(int(timeout_s * 1000)):
            raise ReceiveTimeout(f"no message within {timeout_s} s")
        return decode(self.socket.recv_multipart(copy=False))
