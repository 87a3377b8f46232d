"""The live driver: receive volumes, run the pipeline, publish every result.

Bad input never stops the loop: a malformed message or a refused volume is logged, answered with
a ``status`` message (``event: skipped``) and counted; the next volume is processed as usual.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from rtdecode import wire
from rtdecode._kernels import warm_up
from rtdecode.config import RunConfig
from rtdecode.decoders import DecoderBundle
from rtdecode.errors import ConfigError, ProtocolError, ReceiveTimeout, VolumeError
from rtdecode.identify import CandidateBank, Identifier
from rtdecode.latency import LatencyTracker, format_table, stage_durations_ms
from rtdecode.motion import MotionCorrector
from rtdecode.nifti import load_volume
from rtdecode.pipeline import Pipeline, Result
from rtdecode.preprocess import Preprocessor
from rtdecode.transport.zmq import Publisher, Receiver
from rtdecode.volume import Stage, Volume, stamp, stamps_to_dict

log = logging.getLogger(__name__)


def build_pipeline(cfg: RunConfig) -> Pipeline:
    """Load the bundle and candidates named in ``cfg`` and assemble the stages."""
    bundle = DecoderBundle.load(cfg.bundle)
    bank = CandidateBank.load(cfg.candidates or Path(cfg.bundle) / "candidates.npz")
    identifier = Identifier(bank, bundle.layer_slices, cfg.top_k)
    motion = None
    if cfg.motion.enabled:
        warm_up()
        motion = MotionCorrector(
            np.flatnonzero(bundle.mask), cfg.motion.n_reference, cfg.motion.fd_threshold_mm
        )
        if cfg.motion.reference:
            data, affine = load_volume(cfg.motion.reference)
            if data.shape != bundle.mask.shape:
                raise ConfigError(
                    f"run.motion.reference {cfg.motion.reference!r} has shape {data.shape}, "
                    f"the decoders expect {bundle.mask.shape}"
                )
            motion.set_reference(data, affine)
    pre = Preprocessor(cfg.preprocess.baseline_volumes, cfg.preprocess.detrend_tau_s)
    return Pipeline(bundle.mask, pre, motion, bundle, identifier)


@dataclass
class Counts:
    """What happened to the incoming messages."""

    received: int = 0
    processed: int = 0
    skipped: int = 0
    dropped: int = 0


class Sink(Protocol):
    """Where results go: a ZeroMQ :class:`Publisher` live, a :class:`~rtdecode.record.Recorder` offline."""

    def publish(
        self, topic: str, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None
    ) -> None:
        """Send or store one message."""


def publish_result(pub: Sink, res: Result, pipe: Pipeline) -> dict[str, float]:
    """Publish features, ranking, motion and latency of one volume; return its durations (ms)."""
    vol = res.volume
    base = {"session": vol.session, "series": vol.series, "seq": vol.seq, "status": res.status}
    censored = bool(res.motion.censored) if res.motion is not None else False
    stamp(vol.stamps, Stage.PUBLISHED)
    if res.motion is not None:
        pub.publish(
            "motion",
            {
                **base,
                "kind": "motion",
                "params": res.motion.params.tolist(),
                "fd_mm": res.motion.fd_mm,
                "censored": censored,
                "iterations": res.motion.iterations,
            },
        )
    if res.status == "ok":
        dec, labels = pipe.decoder, pipe.identifier.bank.labels
        for i, roi in enumerate(dec.roi_names):
            for layer, sl in dec.layer_slices.items():
                pub.publish(
                    f"features.{roi}.{layer}",
                    {**base, "kind": "features", "roi": roi, "layer": layer},
                    {"features": res.predictions[i, sl]},
                )
        top_labels = [[[labels[j] for j in row] for row in per_roi] for per_roi in res.top_indices]
        pub.publish(
            "ranking",
            {
                **base,
                "kind": "ranking",
                "censored": censored,
                "rois": dec.roi_names,
                "layers": dec.layers,
                "labels": top_labels,
            },
            {"indices": res.top_indices, "scores": res.top_scores},
        )
    else:
        pub.publish("ranking", {**base, "kind": "ranking", "censored": censored})
    durations = stage_durations_ms(vol.stamps)
    pub.publish("latency", {**base, "kind": "latency", "stamps": stamps_to_dict(vol.stamps), "ms": durations})
    return durations


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
    counts = Counts()
    tracker = LatencyTracker()
    pipe = build_pipeline(cfg)
    with (
        Receiver(cfg.input.address, cfg.input.bind) as rx,
        Publisher(cfg.output.address, cfg.output.bind) as pub,
    ):
        log.info("decoder listening on %s, publishing on %s", rx.last_endpoint, pub.last_endpoint)
        pub.publish("status", {"kind": "status", "event": "started"})
        while not stop.requested:
            try:
                msg = rx.recv(cfg.heartbeat_s)
            except ReceiveTimeout:
                pub.publish("status", {"kind": "status", "event": "heartbeat", **_count_fields(counts)})
                continue
            except ProtocolError as err:
                _skip(pub, counts, f"malformed message: {err}")
                continue
            if msg.topic == wire.END_TOPIC:
                summary = {
                    **_count_fields(counts),
                    "latency_ms": tracker.summary(),
                    "series": msg.header.get("series"),
                    "n_sent": msg.header.get("n_sent"),
                }
                pub.publish("status", {"kind": "status", "event": "end", **summary})
                print(
                    f"series {msg.header.get('series')!r} ended: {counts.processed} processed, "
                    f"{counts.skipped} skipped, {counts.dropped} dropped\n{format_table(tracker.summary())}",
                    flush=True,
                )
                if exit_after_series:
                    break
                continue
            if msg.topic != wire.VOLUME_TOPIC:
                _skip(pub, counts, f"unexpected topic {msg.topic!r} on the volume input")
                continue
            counts.received += 1
            try:
                vol = wire.decode_volume(msg)
            except ProtocolError as err:
                _skip(pub, counts, str(err))
                continue
            stamp(vol.stamps, Stage.RECEIVED)
            _process_one(pipe, vol, pub, counts, tracker, cfg.publish_input)
        pub.publish("status", {"kind": "status", "event": "stopped", **_count_fields(counts)})
    return {**_count_fields(counts), "latency_ms": tracker.summary()}


def _process_one(
    pipe: Pipeline, vol: Volume, sink: Sink, counts: Counts, tracker: LatencyTracker, publish_input: bool
) -> None:
    # The per-volume step both drivers share: process, then publish or answer with a skip.
    try:
        res = pipe.process(vol)
    except VolumeError as err:
        _skip(sink, counts, str(err))
        return
    except Exception as err:  # a bug must cost one volume, not the session
        log.exception("internal error on a volume")
        _skip(sink, counts, f"internal error: {type(err).__name__}: {err}")
        return
    counts.processed += 1
    counts.dropped += res.dropped_before
    if publish_input:
        sink.publish(wire.VOLUME_TOPIC, wire.volume_header(vol), {"data": vol.data})
    publish_result(sink, res, pipe)
    tracker.add(vol.stamps)


def _count_fields(c: Counts) -> dict:
    return {"received": c.received, "processed": c.processed, "skipped": c.skipped, "dropped": c.dropped}


def _skip(pub: Sink, counts: Counts, reason: str) -> None:
    counts.skipped += 1
    log.warning("skipped: %s", reason)
    pub.publish("status", {"kind": "status", "event": "skipped", "reason": reason, **_count_fields(counts)})


def run_offline(cfg: RunConfig, bold: str | Path, out: str | Path, record_input: bool = False) -> dict:
    """``rtdecode offline``: the live pipeline as a batch over a recorded series, into a recording.

    Parameters
    ----------
    cfg : RunConfig
    bold : str or Path
        4-D NIfTI of the series.
    out : str or Path
        HDF5 recording to write (see :mod:`rtdecode.record`).
    record_input : bool
        Store the input volumes too.

    Returns
    -------
    dict
        Counts and the latency summary.
    """
    from rtdecode.nifti import iter_volumes
    from rtdecode.record import Recorder

    pipe = build_pipeline(cfg)
    counts, tracker = Counts(), LatencyTracker()
    meta = {"mode": "offline", "bold": str(bold), "bundle": cfg.bundle}
    with Recorder(out, record_input, meta) as rec:
        for vol in iter_volumes(bold):
            counts.received += 1
            stamp(vol.stamps, Stage.RECEIVED)
            _process_one(pipe, vol, rec, counts, tracker, record_input)
        summary = {**_count_fields(counts), "latency_ms": tracker.summary()}
        rec.publish("status", {"kind": "status", "event": "end", **summary})
    return summary
