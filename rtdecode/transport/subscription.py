"""Following a decoder's publisher: every message, decoded and parsed, until a stop condition."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from rtdecode.errors import ProtocolError, ReceiveTimeout
from rtdecode.transport.zmq import Subscriber
from rtdecode.wire.messages import Status, WireMessage, parse

log = logging.getLogger(__name__)


def messages(
    address: str,
    ready_file: str | Path | None = None,
    until_end: bool = False,
    timeout_s: float = 0.0,
    topics: Sequence[str] = (),
    stop: threading.Event | None = None,
    queue: int = 1000,
) -> Iterator[WireMessage]:
    """Everything a decoder publishes (or the ``topics`` prefixes), decoded, until a stop condition.

    Stops when ``stop`` is set (by default on SIGTERM), after the end-of-series status (which is
    yielded) when ``until_end``, or after ``timeout_s`` without any message (0 waits for ever).
    ``ready_file`` is created when the first message arrives, i.e. once the subscription is live.
    Messages are yielded as their declared classes (:mod:`rtdecode.wire.messages`); malformed
    ones are logged and dropped. ``queue`` is the subscriber's own buffer (see
    :class:`~rtdecode.transport.zmq.Subscriber`).
    """
    if stop is None:
        stop = threading.Event()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Subscriber(address, topics, queue=queue) as sub:
        last = time.monotonic()
        while not stop.is_set():
            try:
                msg = parse(sub.recv(0.5))
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
            if until_end and isinstance(msg, Status) and msg.event == "end":
                return
