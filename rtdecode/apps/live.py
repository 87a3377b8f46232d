"""``rtdecode run``: receive volumes, step the live session, publish every result until stopped."""

from __future__ import annotations

import contextlib
import logging
import signal
import time

from rtdecode.apps.dashboard.view import TOPICS
from rtdecode.apps.session import LiveSession
from rtdecode.apps.setup import open_history, open_lsl_outputs, open_publisher, open_source, warn_if_exposed
from rtdecode.config import RunConfig
from rtdecode.errors import PeerDisconnected, ProtocolError, ReceiveTimeout
from rtdecode.pipeline.reorder import ReorderBuffer
from rtdecode.volume import SeriesEnd
from rtdecode.wire.ports import Fanout

log = logging.getLogger(__name__)


class _Stop:
    def __init__(self) -> None:
        self.requested = False

    def __call__(self, *_: object) -> None:
        self.requested = True


def serve(cfg: RunConfig, exit_after_series: bool = False) -> dict:
    """Run the decoder until stopped (SIGINT/SIGTERM) or, optionally, the end of a series.

    Returns
    -------
    dict
        Counts and the latency summary.
    """
    stop = _Stop()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with contextlib.ExitStack() as stack:
        warn_if_exposed(cfg)
        pub = stack.enter_context(open_publisher(cfg))
        sink = Fanout([pub])
        # The history keeps what a dashboard shows: every result but the per-unit arrays.
        if (history := open_history(cfg, TOPICS)) is not None:
            sink.sinks.append(stack.enter_context(history))
        physio = None
        if {"retroicor", "rvt"} & set(cfg.preprocess.nuisance.regressors):
            from rtdecode.transport.lsl_physio import PhysioInlet

            physio = PhysioInlet(cfg.physio.stream)
            stack.callback(physio.close)
        session = LiveSession(cfg, sink, physio)
        stack.callback(session.close)
        if cfg.lsl.outputs:
            sink.sinks.append(stack.enter_context(open_lsl_outputs(cfg, session.pipe, session.feedback)))
        source = stack.enter_context(open_source(cfg))
        markers = None
        if cfg.blocks.enabled:
            from rtdecode.transport.lsl import MarkerInlet

            markers = MarkerInlet(cfg.lsl.marker_stream)
            stack.callback(markers.close)
        where = "LSL streams of type fMRI" if cfg.transport == "lsl" else source.last_endpoint
        log.info("decoder listening on %s, publishing on %s", where, pub.last_endpoint)
        session.status("started", resumed=session.resumed, settings=session.settings())
        order = ReorderBuffer(cfg.reorder_ms / 1000, cfg.max_gap_volumes)
        while not stop.requested:
            due = order.next_deadline()
            timeout = (
                cfg.heartbeat_s if due is None else min(cfg.heartbeat_s, max(0.0, due - time.monotonic()))
            )
            try:
                item = source.recv_volume(timeout)
            except ReceiveTimeout:
                if due is not None:
                    for vol in order.due(time.monotonic()):
                        session.step(vol)
                    continue
                session.status("heartbeat", **session.counts.fields())
                session.idle()
                continue
            except ProtocolError as err:
                session.counts.received += 1
                session.skip(f"malformed message: {err}", context=err.context)
                continue
            except PeerDisconnected as err:
                log.info("%s", err)
                session.status("sender-disconnected", reason=str(err))
                continue
            finally:
                # Markers before the volume: a block may end with it.
                for text, t_ns in markers.poll() if markers is not None else ():
                    session.marker(text, t_ns)
            if isinstance(item, SeriesEnd):
                for vol in order.flush():
                    session.step(vol)
                if session.end_series(item) and exit_after_series:
                    break
                continue
            now = time.monotonic()
            for vol in order.push(item, now) + order.due(now):
                session.step(vol)
        for vol in order.flush():  # stopped while waiting for a gap to fill: the held volumes still count
            session.step(vol)
        session.status("stopped", **session.counts.fields())
    return session.summary()
