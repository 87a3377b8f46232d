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
from rtdecode.volume import SeriesEnd, Volume
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
        # Volumes ready for the pipeline. While more are waiting in the input, up to
        # run.batch_volumes are gathered, then decoded and ranked in one pass over the weights and
        # the bank (a backlog after a stall clears faster); otherwise each goes on at once.
        ready: list[Volume] = []

        def flush() -> None:
            session.step_many(ready[:])
            ready.clear()

        while not stop.requested:
            due = order.next_deadline()
            timeout = (
                cfg.heartbeat_s if due is None else min(cfg.heartbeat_s, max(0.0, due - time.monotonic()))
            )
            try:
                item = source.recv_volume(0.0 if ready else timeout)
            except ReceiveTimeout:
                if ready:  # nothing more is waiting
                    flush()
                    continue
                if due is not None:
                    session.step_many(order.due(time.monotonic()))
                    continue
                session.status("heartbeat", **session.counts.fields())
                session.idle()
                continue
            except ProtocolError as err:
                flush()
                session.counts.received += 1
                session.skip(f"malformed message: {err}", context=err.context)
                continue
            except PeerDisconnected as err:
                flush()
                log.info("%s", err)
                session.status("sender-disconnected", reason=str(err))
                continue
            finally:
                # Markers before the volume: a block may end with it.
                texts = markers.poll() if markers is not None else ()
                if texts:
                    flush()
                for text, t_ns in texts:
                    session.marker(text, t_ns)
            if isinstance(item, SeriesEnd):
                ready.extend(order.flush())
                flush()
                if session.end_series(item) and exit_after_series:
                    break
                continue
            now = time.monotonic()
            ready.extend(order.push(item, now) + order.due(now))
            if len(ready) >= cfg.batch_volumes:
                flush()
        ready.extend(order.flush())  # stopped while waiting for a gap to fill: the held volumes still count
        flush()
        session.status("stopped", **session.counts.fields())
    return session.summary()
