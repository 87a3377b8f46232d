"""The live driver: receive volumes, run the pipeline, publish every result.

Bad input never stops the loop: a malformed message or a refused volume is logged, answered with
a ``status`` message (``event: skipped``) and counted; the next volume is processed as usual.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from rtdecode import wire
from rtdecode.config import RunConfig
from rtdecode.errors import ConfigError, PeerDisconnected, ProtocolError, ReceiveTimeout, VolumeError
from rtdecode.io.checkpoint import Checkpoint
from rtdecode.io.nifti import load_volume
from rtdecode.models.latents import LatentDecoders
from rtdecode.models.linear import load_bundle, mask_checksum
from rtdecode.numerics.kernels import warm_up
from rtdecode.pipeline.blocks import BlockDecoder, BlockResult, parse_marker
from rtdecode.pipeline.chain import Pipeline, Result
from rtdecode.pipeline.feedback import Feedback, Score
from rtdecode.pipeline.latency import LatencyTracker, format_table, stage_durations_ms
from rtdecode.pipeline.motion import MotionCorrector
from rtdecode.pipeline.preprocess import Preprocessor
from rtdecode.pipeline.ranking import CandidateBank, Identifier
from rtdecode.pipeline.reorder import ReorderBuffer
from rtdecode.progress import progress
from rtdecode.transport.zmq import CurveServer, Publisher, Receiver
from rtdecode.volume import SeriesEnd, Stage, Volume, stamp, stamps_to_dict

log = logging.getLogger(__name__)


def build_pipeline(cfg: RunConfig) -> Pipeline:
    """Load the bundle and candidates named in ``cfg`` and assemble the stages."""
    bundle = load_bundle(cfg.bundle)
    bank = CandidateBank.load(cfg.candidates or Path(cfg.bundle) / "candidates.npz")
    identifier = Identifier(bank, bundle.layer_slices, cfg.top_k, cfg.rank_precision, cfg.rank_threads)
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


class VolumeSource(Protocol):
    """Where volumes come from: a ZeroMQ :class:`Receiver` or an LSL volume inlet."""

    def recv_volume(self, timeout_s: float) -> Volume | SeriesEnd:
        """The next volume, stamped ``RECEIVED``, or the end of a series."""

    def close(self) -> None:
        """Disconnect."""


class Sink(Protocol):
    """Where results go: a ZeroMQ :class:`Publisher` live, a :class:`~rtdecode.record.Recorder` offline."""

    def publish(
        self, topic: str, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None
    ) -> None:
        """Send or store one message."""


def _json_number(v: float) -> float | None:
    # JSON has no NaN: a score that cannot be computed yet travels as null.
    return None if math.isnan(v) else v


def publish_result(
    pub: Sink, res: Result, pipe: Pipeline, scores: Mapping[str, tuple[float, float]] | None = None
) -> dict[str, float]:
    """Publish motion, features, ranking, feedback and latency of one volume; return its durations (ms)."""
    vol = res.volume
    base = {
        "session": vol.session,
        "series": vol.series,
        "seq": vol.seq,
        "acq_time_s": vol.acq_time_s,
        "tr_s": vol.tr_s,
        "status": res.status,
    }
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
                "fd_threshold_mm": pipe.motion.fd_threshold_mm,
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
    if scores:
        fb = {n: {"raw": _json_number(raw), "value": _json_number(val)} for n, (raw, val) in scores.items()}
        pub.publish("feedback", {**base, "kind": "feedback", "scores": fb})
    durations = stage_durations_ms(vol.stamps)
    pub.publish("latency", {**base, "kind": "latency", "stamps": stamps_to_dict(vol.stamps), "ms": durations})
    return durations


def publish_block(
    pub: Sink, block: BlockResult, last: Volume, pipe: Pipeline, scores: Mapping[str, tuple[float, float]]
) -> None:
    """Publish a completed block (topic ``block``): its volumes, ranking and feedback scores."""
    b, dec = block.block, pipe.decoder
    header = {
        "kind": "block",
        "session": last.session,
        "series": last.series,
        "seq": last.seq,
        "acq_time_s": last.acq_time_s,
        "block": b.index,
        "label": b.label,
        "condition": b.condition,
        "onset_s": b.onset_s,
        "offset_s": b.offset_s,
        "seqs": block.seqs,
        "status": block.status,
        "rois": dec.roi_names,
        "layers": dec.layers,
        "feedback": {n: {"raw": _json_number(r), "value": _json_number(v)} for n, (r, v) in scores.items()},
    }
    arrays = {}
    if block.predictions is not None:
        labels = pipe.identifier.bank.labels
        header["labels"] = [[[labels[j] for j in row] for row in per_roi] for per_roi in block.top_indices]
        arrays = {"indices": block.top_indices, "scores": block.top_scores, "predictions": block.predictions}
        if block.label_rank is not None:
            header["label_rank"] = block.label_rank.tolist()
            header["label_correlation"] = np.round(block.label_correlation.astype(float), 6).tolist()
    pub.publish("block", header, arrays)


class _Stop:
    def __init__(self) -> None:
        self.requested = False

    def __call__(self, *_: object) -> None:
        self.requested = True


class Fanout:
    """A sink that forwards every message to several sinks (ZeroMQ and LSL)."""

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = sinks

    def publish(
        self, topic: str, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None
    ) -> None:
        """Send one message to every sink."""
        for sink in self.sinks:
            sink.publish(topic, header, arrays)


class Decoder:
    """The per-volume step both drivers share: pipeline, feedback, block decoding, publishing.

    Parameters
    ----------
    cfg : RunConfig
    sink : Sink
        Where every message goes.
    """

    def __init__(self, cfg: RunConfig, sink: Sink) -> None:
        self.cfg = cfg
        self.pipe = build_pipeline(cfg)
        self.sink = sink
        self.counts = Counts()
        self.tracker = LatencyTracker()
        self.feedback = build_feedback(cfg, self.pipe)
        self.blocks = (
            BlockDecoder(self.pipe.identifier, cfg.blocks.hrf_shift_s) if cfg.blocks.enabled else None
        )
        self.latents = load_latents(cfg, self.pipe)
        self._series: tuple[str, str] | None = None
        self._last_arrival: tuple[float, Volume] | None = None  # monotonic s, volume
        self._paused = False
        self.checkpoint = Checkpoint(cfg.checkpoint) if cfg.checkpoint else None
        self.resumed = self.checkpoint.restore(self.pipe) if self.checkpoint is not None else None
        if self.resumed is not None:
            self._series = (self.resumed["session"], self.resumed["series"])
            log.info("resumed series %(session)s/%(series)s after volume %(last_seq)d", self.resumed)

    def marker(self, text: str, time_ns: int) -> None:
        """Take one stimulus marker (a malformed one is reported and skipped)."""
        if self.blocks is None:
            return
        try:
            self.blocks.add_marker(parse_marker(text, time_ns))
        except ProtocolError as err:
            log.warning("marker skipped: %s", err)
            self.sink.publish("status", {"kind": "status", "event": "marker-skipped", "reason": str(err)})

    def idle(self) -> None:
        """No volume arrived for a while: announce a scanner pause once it exceeds ``pause_trs``."""
        if self._last_arrival is None or self._paused:
            return
        t, vol = self._last_arrival
        silent = time.monotonic() - t
        if silent > self.cfg.pause_trs * vol.tr_s:
            self._paused = True
            log.warning("no volume for %.1f s (%.0f TR) after volume %d", silent, silent / vol.tr_s, vol.seq)
            self.sink.publish(
                "status",
                {"kind": "status", "event": "paused", "series": vol.series, "last_seq": vol.seq,
                 "silent_s": silent, "tr_s": vol.tr_s},
            )  # fmt: skip

    def step(self, vol: Volume) -> None:
        """Process and publish one received volume; a refused volume is answered with a skip."""
        self.counts.received += 1
        now = time.monotonic()
        if self._paused:
            self._paused = False
            paused_s = now - self._last_arrival[0]
            log.info("volumes again after %.1f s", paused_s)
            self.sink.publish(
                "status",
                {"kind": "status", "event": "pause-ended", "series": vol.series, "seq": vol.seq,
                 "paused_s": paused_s},
            )  # fmt: skip
        self._last_arrival = (now, vol)
        key = (vol.session, vol.series)
        if key != self._series and self._series is not None:
            self.feedback.reset()
            if self.blocks is not None:
                self.blocks.reset()
        self._series = key
        try:
            res = self.pipe.process(vol)
        except VolumeError as err:
            self.skip(str(err))
            return
        except Exception as err:  # a bug must cost one volume, not the session
            log.exception("internal error on a volume")
            self.skip(f"internal error: {type(err).__name__}: {err}")
            return
        self.counts.processed += 1
        self.counts.dropped += res.dropped_before
        if res.dropped_before:
            self.sink.publish(
                "status",
                {
                    "kind": "status", "event": "gap", "session": vol.session, "series": vol.series,
                    "missing_from": vol.seq - res.dropped_before, "missing_to": vol.seq - 1,
                    "after_restart": self.resumed is not None and self.counts.processed == 1,
                },
            )  # fmt: skip
        if self.cfg.publish_input:
            self.sink.publish(wire.VOLUME_TOPIC, wire.volume_header(vol), {"data": vol.data})
        rest = self.blocks.is_rest(vol) if self.blocks is not None else None
        scores = self.feedback.update(res, rest)
        publish_result(self.sink, res, self.pipe, scores)
        if self.latents is not None and res.x is not None:
            t0 = time.perf_counter_ns()
            out = self.latents.predict(res.x)
            ms = (time.perf_counter_ns() - t0) / 1e6
            header = {"kind": "latent", "session": vol.session, "series": vol.series, "seq": vol.seq}
            header |= {
                "acq_time_s": vol.acq_time_s,
                "shapes": {n: list(a.shape) for n, a in out.items()},
                "ms": ms,
            }
            self.sink.publish("latent", header, out)
        self.tracker.add(vol.stamps)
        if self.checkpoint is not None:
            self.checkpoint.save(self.pipe)
        if self.blocks is not None:
            censored = bool(res.motion.censored) if res.motion is not None else False
            raw = {name: raw for name, (raw, _) in scores.items()}
            for block in self.blocks.add(res, censored, raw):
                publish_block(self.sink, block, vol, self.pipe, self.feedback.block(block))

    def skip(self, reason: str) -> None:
        """Count and announce a message or volume that could not be used."""
        self.counts.skipped += 1
        log.warning("skipped: %s", reason)
        self.sink.publish(
            "status", {"kind": "status", "event": "skipped", "reason": reason, **_count_fields(self.counts)}
        )

    def summary(self) -> dict:
        """Counts and the latency summary so far."""
        return {**_count_fields(self.counts), "latency_ms": self.tracker.summary()}

    def settings(self) -> dict:
        """The run configuration and the candidate count, as the ``started`` and ``end`` events carry them."""
        n_candidates = len(self.pipe.identifier.bank.labels) if self.pipe.identifier is not None else 0
        return {**dataclasses.asdict(self.cfg), "n_candidates": n_candidates}


def load_latents(cfg: RunConfig, pipe: Pipeline) -> LatentDecoders | None:
    """The latent decoders named by ``cfg.latents``, checked against the bundle's mask."""
    if not cfg.latents:
        return None
    lat = LatentDecoders.load(cfg.latents)
    if lat.mask_sha256 != mask_checksum(pipe.decoder.mask):
        raise ConfigError(f"run.latents {cfg.latents!r} was trained on another analysis mask than the bundle")
    return lat


def build_feedback(cfg: RunConfig, pipe: Pipeline) -> Feedback:
    """The feedback scores configured in ``cfg.feedback``."""
    return Feedback([Score(spec, pipe.decoder, pipe.identifier.bank, cfg.bundle) for spec in cfg.feedback])


def curve_server(cfg: RunConfig) -> CurveServer | None:
    """The CurveZMQ settings of the decoder's sockets, if enabled."""
    return CurveServer(cfg.curve.secret_key, cfg.curve.clients) if cfg.curve.enabled else None


def open_source(cfg: RunConfig) -> VolumeSource:
    """The volume input named by ``cfg.transport``."""
    if cfg.transport == "lsl":
        from rtdecode.transport.lsl import VolumeInlet

        return VolumeInlet(cfg.lsl.volume_stream)
    return Receiver(
        cfg.input.address,
        cfg.input.bind,
        curve=curve_server(cfg),
        max_message_bytes=int(cfg.input.max_message_mb * 2**20),
    )


def open_lsl_outputs(cfg: RunConfig, pipe: Pipeline, feedback: Feedback) -> Sink:
    """LSL outlets for every result (``cfg.lsl.outputs``)."""
    from rtdecode.transport.lsl_outlets import LslPublisher

    dec = pipe.decoder
    return LslPublisher(
        dec.roi_names,
        dec.layers,
        dec.n_units,
        pipe.identifier.bank.labels,
        cfg.top_k,
        feedback.names,
        cfg.lsl.prefix,
    )


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
        pub = stack.enter_context(Publisher(cfg.output.address, cfg.output.bind, curve=curve_server(cfg)))
        sink = Fanout([pub])
        dec = Decoder(cfg, sink)
        if cfg.lsl.outputs:
            sink.sinks.append(stack.enter_context(open_lsl_outputs(cfg, dec.pipe, dec.feedback)))
        source = stack.enter_context(open_source(cfg))
        markers = None
        if cfg.blocks.enabled:
            from rtdecode.transport.lsl import MarkerInlet

            markers = MarkerInlet(cfg.lsl.marker_stream)
            stack.callback(markers.close)
        where = "LSL streams of type fMRI" if cfg.transport == "lsl" else source.last_endpoint
        log.info("decoder listening on %s, publishing on %s", where, pub.last_endpoint)
        sink.publish(
            "status",
            {"kind": "status", "event": "started", "resumed": dec.resumed, "settings": dec.settings()},
        )
        order = ReorderBuffer(cfg.reorder_ms / 1000)
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
                        dec.step(vol)
                    continue
                sink.publish("status", {"kind": "status", "event": "heartbeat", **_count_fields(dec.counts)})
                dec.idle()
                continue
            except ProtocolError as err:
                dec.counts.received += 1
                dec.skip(f"malformed message: {err}")
                continue
            except PeerDisconnected as err:
                log.info("%s", err)
                sink.publish("status", {"kind": "status", "event": "sender-disconnected", "reason": str(err)})
                continue
            finally:
                # Markers before the volume: a block may end with it.
                for text, t_ns in markers.poll() if markers is not None else ():
                    dec.marker(text, t_ns)
            if isinstance(item, SeriesEnd):
                for vol in order.flush():
                    dec.step(vol)
                summary = {**dec.summary(), "series": item.series, "n_sent": item.n_sent}
                sink.publish(
                    "status", {"kind": "status", "event": "end", **summary, "settings": dec.settings()}
                )
                c = dec.counts
                print(
                    f"series {item.series!r} ended: {c.processed} processed, {c.skipped} skipped, "
                    f"{c.dropped} dropped\n{format_table(summary['latency_ms'])}",
                    flush=True,
                )
                if exit_after_series:
                    break
                continue
            now = time.monotonic()
            for vol in order.push(item, now) + order.due(now):
                dec.step(vol)
        for vol in order.flush():  # stopped while waiting for a gap to fill: the held volumes still count
            dec.step(vol)
        sink.publish("status", {"kind": "status", "event": "stopped", **_count_fields(dec.counts)})
    return dec.summary()


def _count_fields(c: Counts) -> dict:
    return {"received": c.received, "processed": c.processed, "skipped": c.skipped, "dropped": c.dropped}


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
    import nibabel as nib

    from rtdecode.io.nifti import iter_volumes
    from rtdecode.io.recording import Recorder

    meta = {"mode": "offline", "bold": str(bold), "bundle": cfg.bundle}
    with Recorder(out, record_input, meta) as rec:
        dec = Decoder(dataclasses.replace(cfg, publish_input=record_input), rec)
        n_volumes = nib.load(str(bold)).shape[-1]
        for vol in progress(iter_volumes(bold), "decoding offline", total=n_volumes, unit="vol"):
            stamp(vol.stamps, Stage.RECEIVED)
            dec.step(vol)
        summary = dec.summary()
        rec.publish("status", {"kind": "status", "event": "end", **summary, "settings": dec.settings()})
    return summary
