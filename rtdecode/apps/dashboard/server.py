"""``rtdecode dashboard``: a subscriber that serves a live page on a local port.

One process, one port: HTTP for the page and its assets (shipped in ``static/``, nothing from the
internet), a WebSocket at ``/ws`` for the updates. A thread reads the decoder's PUB socket; the
asyncio loop folds each message into the :class:`~rtdecode.apps.dashboard.view.SessionView` and
broadcasts the update it completes. A page that connects late first gets the recent history; a
dashboard that starts late (or again) takes the session so far from the decoder's history
endpoint (``run.history``, ``--history-from``) before its first live message, and says so on the
page when it cannot.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import signal
import threading
from http import HTTPStatus
from importlib.resources import files
from pathlib import Path

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.http11 import Request, Response

from rtdecode.apps.dashboard.view import TOPICS, SessionView
from rtdecode.errors import BindError, ProtocolError, ReceiveTimeout
from rtdecode.transport.subscription import messages
from rtdecode.transport.zmq import fetch_history, in_history
from rtdecode.wire.messages import WireMessage

log = logging.getLogger(__name__)

_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css"}
_PAGES = {
    "/": "index.html",
    "/index.html": "index.html",
    "/dashboard.js": "dashboard.js",
    "/dashboard.css": "dashboard.css",
}


def _static(name: str) -> bytes:
    return files("rtdecode.apps.dashboard").joinpath("static", name).read_bytes()


def _encode(update: dict) -> str | None:
    try:
        return json.dumps(update, allow_nan=False)
    except ValueError as err:  # a NaN that slipped through: the page's JSON.parse would reject it
        log.warning("update of type %s not sent: %s", update.get("type"), err)
        return None


def _key(msg: WireMessage) -> str:
    # A message seen both in the history and live (published between the two) is the same header.
    return json.dumps(msg.header(), sort_keys=True, default=str)


async def _run(
    address: str, host: str, port: int, ready_file: str | Path | None, history: int, until: asyncio.Future,
    reconstructions: str | None = None, history_from: str | None = None,
) -> None:  # fmt: skip
    view = SessionView(history)
    clients: set[ServerConnection] = set()
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()

    def put(item: WireMessage | str) -> None:
        loop.call_soon_threadsafe(inbox.put_nowait, item)

    def take_history() -> set[str]:
        try:
            old = fetch_history(history_from)
        except (ReceiveTimeout, ProtocolError, BindError) as err:
            log.warning("no history from %s: %s", history_from, err)
            put(f"no history from the decoder ({err})")
            return set()
        for msg in old:
            put(msg)
        put(f"the session so far came from the decoder's history ({len(old)} messages)")
        return {_key(msg) for msg in old}

    def pump(address: str, topics: tuple[str, ...], with_history: bool = False) -> None:
        seen: set[str] | None = None
        for msg in messages(address, topics=topics, stop=stop):
            # Asked once the subscription delivers, so history and live overlap rather than miss.
            if with_history and seen is None:
                seen = take_history()
            if seen and _key(msg) in seen:
                continue
            # The first live message the history would have kept but lacks: every later one is
            # newer still (PUB keeps order), so the comparison stops here.
            if seen and in_history(msg):
                seen = set()
            put(msg)

    async def fold() -> None:
        while True:
            item = await inbox.get()
            if isinstance(item, str):
                view.history = item
                update = {"type": "history", "text": item}
            else:
                update = view.add(item)
            text = _encode(update) if update is not None else None
            if text is not None:
                broadcast(clients, text)

    def http(conn: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?")[0]
        if path == "/ws":
            # Browsers let any web page open a WebSocket to localhost: only the dashboard's own
            # page (or a client that is not a browser, sending no Origin) may read the session.
            origin = request.headers.get("Origin")
            if origin is not None and origin != f"http://{request.headers.get('Host', '')}":
                return conn.respond(HTTPStatus.FORBIDDEN, f"WebSocket from origin {origin} refused\n")
            return None  # the WebSocket handshake goes on
        name = _PAGES.get(path)
        if name is None:
            return conn.respond(HTTPStatus.NOT_FOUND, f"no such page: {request.path}\n")
        body = _static(name)
        resp = conn.respond(HTTPStatus.OK, "")
        del resp.headers["Content-Type"], resp.headers["Content-Length"]
        resp.headers["Content-Type"] = _TYPES[Path(name).suffix]
        resp.headers["Content-Length"] = str(len(body))
        resp.headers["Cache-Control"] = "no-store"
        return dataclasses.replace(resp, body=body)

    async def handler(conn: ServerConnection) -> None:
        text = _encode(view.snapshot())
        # The snapshot goes out and the page joins the broadcast with no await in between, so no
        # update falls between the two.
        if text is not None:
            broadcast([conn], text)
        clients.add(conn)
        try:
            await conn.wait_closed()
        finally:
            clients.discard(conn)

    readers = [
        threading.Thread(
            target=pump, args=(address, TOPICS, bool(history_from)), name="dashboard-subscriber", daemon=True
        )
    ]
    if reconstructions:  # rtdecode reconstruct publishes on its own address
        readers.append(
            threading.Thread(target=pump, args=(reconstructions, ("reconstruction",)), daemon=True)
        )
    try:
        server = await serve(handler, host, port, process_request=http, compression=None)
    except OSError as err:  # port taken, host not an address of this machine
        raise BindError(f"cannot serve the dashboard on {host}:{port}: {err.strerror or err}") from err
    async with server:
        bound = server.sockets[0].getsockname()
        url = f"http://{bound[0]}:{bound[1]}/"
        for reader in readers:
            reader.start()
        folder = asyncio.create_task(fold())
        print(f"dashboard on {url} (results from {address})", flush=True)
        if ready_file is not None:
            Path(ready_file).write_text(url + "\n")
        try:
            await until
        finally:
            stop.set()
            folder.cancel()
    for reader in readers:
        reader.join(2.0)


def serve_dashboard(
    address: str,
    host: str = "127.0.0.1",
    port: int = 8765,
    ready_file: str | Path | None = None,
    history: int = 600,
    reconstructions: str | None = None,
    history_from: str | None = None,
) -> None:
    """Serve the dashboard until SIGTERM or Ctrl-C.

    Parameters
    ----------
    address : str
        The decoder's PUB address.
    host, port : str, int
        Where the page is served; port 0 picks a free one (the URL is printed and written to
        ``ready_file``). Keep ``host`` on loopback unless the console is another machine.
    ready_file : str or Path, optional
        Gets the page's URL once the server listens.
    history : int
        Volumes and blocks a late page starts with.
    reconstructions : str, optional
        The PUB address of ``rtdecode reconstruct``: its images are shown too.
    history_from : str, optional
        The decoder's ``run.history.address``: the session so far is taken from it at start.
    """

    async def main() -> None:
        until = asyncio.get_running_loop().create_future()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, lambda: until.done() or until.set_result(None))
        await _run(address, host, port, ready_file, history, until, reconstructions, history_from)

    asyncio.run(main())
