"""A live session's per-volume step: pipeline, feedback, blocks, latents, every result published.

:class:`LiveSession` is what both drivers share: the live loop (:mod:`rtdecode.apps.live`) feeds
it received volumes and markers, the batch (:mod:`rtdecode.apps.batch`) the volumes of a file.
Bad input never stops it: a refused volume is logged, answered with a ``skipped`` status and
counted; the next volume is processed as usual.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rtdecode.apps.results import block_message, result_messages
from rtdecode.apps.setup import build_feedback, build_pipeline, load_latents
from rtdecode.config import RunConfig
from rtdecode.errors import CheckpointError, ProtocolError, VolumeError
from rtdecode.io.checkpoint import Checkpoint
from rtdecode.pipeline.blocks import BlockDecoder
from rtdecode.pipeline.chain import Result
from rtdecode.pipeline.latency import (
    LatencyTracker,
    drop_implausible_stamps,
    format_table,
)
from rtdecode.volume import NOT_REACHED, SeriesEnd, Stage, Volume
from rtdecode.wire import messages as m
from rtdecode.wire.markers import parse_marker
from rtdecode.wire.ports import Sink

if TYPE_CHECKING:  # LSL is loaded only by sessions that read a physiological stream
    from rtdecode.transport.lsl_physio import PhysioInlet

log = logging.getLogger(__name__)


@dataclass
class MessageCounts:
    """What happened to the incoming messages."""

    received: int = 0
    processed: int = 0
    skipped: int = 0
    dropped: int = 0

    def fields(self) -> dict[str, int]:
        """As the ``status`` message carries them."""
        return dataclasses.asdict(self)


@dataclass
class SeriesTally:
    """What happened to one series' volumes, for its ``end``."""

    counts: MessageCounts = dataclasses.field(default_factory=MessageCounts)
    session: str = ""
    last_seq_seen: int = -1  # the highest index received, processed or not


# A volume between the pipeline and publishing: its series' tally, the result, stamps left out.
_Prepared = tuple[Volume, SeriesTally, Result, list[str]]


class LiveSession:
    """The per-volume step both drivers share: pipeline, feedback, block decoding, publishing.

    Parameters
    ----------
    cfg : RunConfig
    sink : Sink
        Where every message goes.
    physio : PhysioInlet, optional
        The live physiological recording, handed to the pipeline before each volume.
    """

    def __init__(self, cfg: RunConfig, sink: Sink, physio: PhysioInlet | None = None) -> None:
        self.cfg = cfg
        self.pipe = build_pipeline(cfg)
        self.physio = physio
        self.sink = sink
        self.counts = MessageCounts()
        self.series: OrderedDict[str, SeriesTally] = OrderedDict()  # the recent series, for their ends
        self.tracker = LatencyTracker()
        self.feedback = build_feedback(cfg, self.pipe)
        self.blocks = (
            BlockDecoder(
                self.pipe.identifier,
                cfg.blocks.hrf_shift_s,
                windows={c: (float(a), float(b)) for c, (a, b) in cfg.blocks.windows.items()},
                running=cfg.blocks.running,
            )
            if cfg.blocks.enabled
            else None
        )
        self.latents = load_latents(cfg, self.pipe)
        # The pipeline's series count when feedback and blocks last started (None: no volume yet;
        # markers may arrive before the first volume and must not be reset away).
        self._series_index: int | None = None
        self._last_arrival: tuple[float, Volume] | None = None  # monotonic s, volume
        self._paused = False
        self.checkpoint = Checkpoint(cfg.checkpoint) if cfg.checkpoint else None
        state = self.checkpoint.restore() if self.checkpoint is not None else None
        self.resumed = None
        if state is not None:
            try:
                self.resumed = self.pipe.set_state(state)
            except (KeyError, ValueError) as err:
                msg = f"checkpoint {cfg.checkpoint!r} does not fit the pipeline: {err}"
                raise CheckpointError(msg) from err
            self._series_index = self.pipe.series_started
            log.info("resumed series %(session)s/%(series)s after volume %(last_seq)d", self.resumed)

    def status(self, event: str, **fields: object) -> None:
        """Publish a ``status`` event."""
        self.sink.publish(m.Status(event=event, **fields))

    def marker(self, text: str, time_ns: int) -> None:
        """Take one stimulus marker (a malformed one is reported and skipped)."""
        if self.blocks is None:
            return
        try:
            self.blocks.add_marker(parse_marker(text, time_ns))
        except ProtocolError as err:
            log.warning("marker skipped: %s", err)
            self.status("marker-skipped", reason=str(err))

    def idle(self) -> None:
        """No volume arrived for a while: announce a scanner pause once it exceeds ``pause_trs``."""
        if self._last_arrival is None or self._paused:
            return
        t, vol = self._last_arrival
        silent = time.monotonic() - t
        if silent > self.cfg.pause_trs * vol.tr_s:
            self._paused = True
            log.warning("no volume for %.1f s (%.0f TR) after volume %d", silent, silent / vol.tr_s, vol.seq)
            self.status("paused", series=vol.series, last_seq=vol.seq, silent_s=silent, tr_s=vol.tr_s)

    def _tally(self, vol: Volume) -> SeriesTally:
        tally = self.series.get(vol.series)
        if tally is None:
            tally = self.series[vol.series] = SeriesTally(session=vol.session)
            if len(self.series) > 256:
                self.series.popitem(last=False)
        if vol.seq - tally.last_seq_seen <= self.cfg.max_gap_volumes + 1:  # not a corrupt index
            tally.last_seq_seen = max(tally.last_seq_seen, vol.seq)
        return tally

    def step(self, vol: Volume) -> None:
        """Process and publish one received volume; a refused volume is answered with a skip."""
        self.step_many([vol])

    def step_many(self, vols: list[Volume]) -> None:
        """Process volumes that arrived together, in order, ranking them in one pass over the bank.

        Each volume goes through the pipeline up to its preprocessed voxels, then all are decoded
        and ranked at once (:meth:`~rtdecode.pipeline.chain.Pipeline.decode_and_rank`: each gets
        the features and ranking it would get alone), then each is published. A refused volume is
        answered with a skip and costs no other volume its output.
        """
        prepared = [p for vol in vols if (p := self._prepare(vol)) is not None]
        for vol, tally, res, stamps_dropped in self._decode_and_rank(prepared):
            self._finish(vol, tally, res, stamps_dropped)
        if self.checkpoint is not None and prepared:
            self.checkpoint.save(self.pipe.get_state())

    def _prepare(self, vol: Volume) -> _Prepared | None:
        self.counts.received += 1
        tally = self._tally(vol)
        tally.counts.received += 1
        stamps_dropped = drop_implausible_stamps(vol.stamps, vol.tr_s)
        if stamps_dropped:
            log.warning(
                "volume %d: sender stamps %s are impossible; left out of latency", vol.seq, stamps_dropped
            )
        now = time.monotonic()
        if self._paused:
            self._paused = False
            paused_s = now - self._last_arrival[0]
            log.info("volumes again after %.1f s", paused_s)
            self.status("pause-ended", series=vol.series, seq=vol.seq, paused_s=paused_s)
        self._last_arrival = (now, vol)
        if self.physio is not None and self.pipe.physio is not None:
            acquired = vol.stamps[Stage.ACQUIRED]
            if acquired == NOT_REACHED:
                end = None
            else:
                end = self.pipe.physio.volume_end(vol.seq, vol.tr_s, acquired / 1e9)
            self.physio.feed(self.pipe.physio.add, end, self.cfg.physio.max_wait_s)
        try:
            return vol, tally, self.pipe.prepare(vol), stamps_dropped
        except VolumeError as err:
            self.skip(str(err), vol)
        except Exception as err:  # a bug must cost one volume, not the session
            log.exception("internal error on a volume")
            self.skip(f"internal error: {type(err).__name__}: {err}", vol)
        return None

    def _decode_and_rank(self, prepared: list[_Prepared]) -> list[_Prepared]:
        # The decoding and ranking of them all, or, should it fail, of each alone: a bug costs one volume.
        try:
            self.pipe.decode_and_rank([res for _, _, res, _ in prepared])
            return prepared
        except Exception:
            if len(prepared) == 1:
                vol = prepared[0][0]
                log.exception("internal error on a volume")
                self.skip("internal error in decoding or ranking", vol)
                return []
        return [p for one in prepared for p in self._decode_and_rank([one])]

    def _finish(self, vol: Volume, tally: SeriesTally, res: Result, stamps_dropped: list[str]) -> None:
        if self._series_index is not None and res.series_index != self._series_index:
            self.feedback.reset()  # a new series: per-series state starts over
            if self.blocks is not None:
                self.blocks.reset()
        self._series_index = res.series_index
        for c in (self.counts, tally.counts):
            c.processed += 1
            c.dropped += res.dropped_before
        if res.dropped_before:
            self.status(
                "gap",
                session=vol.session,
                series=vol.series,
                missing_from=vol.seq - res.dropped_before,
                missing_to=vol.seq - 1,
                after_restart=self.resumed is not None and self.counts.processed == 1,
            )
        if self.cfg.publish_input:
            self.sink.publish(m.VolumeMessage.of(vol))
        rest = self.blocks.is_rest(vol) if self.blocks is not None else None
        scores = self.feedback.update(res, rest)
        for msg in result_messages(res, self.pipe, scores, stamps_dropped or None):
            self.sink.publish(msg)
        if self.latents is not None and res.x is not None:
            t0 = time.perf_counter_ns()
            out = self.latents.predict(res.x)
            self.sink.publish(
                m.Latent(
                    **m.volume_ref(vol),
                    shapes={n: list(a.shape) for n, a in out.items()},
                    ms=(time.perf_counter_ns() - t0) / 1e6,
                    targets=out,
                )
            )
        if not stamps_dropped:
            self.tracker.add(vol.stamps)
        if self.blocks is not None:
            censored = bool(res.motion.censored) if res.motion is not None else False
            raw = {name: raw for name, (raw, _) in scores.items()}
            for block in self.blocks.add(res, censored, raw):
                scores = {} if block.running else self.feedback.block(block)
                self.sink.publish(block_message(block, vol, self.pipe, scores))

    def skip(self, reason: str, vol: Volume | None = None, context: dict | None = None) -> None:
        """Count and announce a message or volume that could not be used.

        ``vol`` (a volume that was read) or ``context`` (what could be read of a malformed
        message: ``session``, ``series``, ``seq``) say which volume the refusal concerns.
        """
        self.counts.skipped += 1
        log.warning("skipped: %s", reason)
        where = dict(context or {})
        if vol is not None:
            where = {"session": vol.session, "series": vol.series, "seq": vol.seq}
        tally = self.series.get(where.get("series"))
        if tally is not None:
            tally.counts.skipped += 1
            tally.counts.received += vol is None  # a volume that was read is counted by step
        self.status("skipped", reason=reason, **where, **self.counts.fields())

    def end_series(self, end: SeriesEnd) -> bool:
        """Close a series the sender says is complete; False for an ``end`` of a series never seen.

        Volumes the sender sent after the last one that arrived (``n_sent``) are announced as a
        gap at the end; the ``end`` event carries the series' own counts beside the totals.
        """
        tally = self.series.get(end.series)
        if tally is None:
            self.skip(f"end of series {end.series!r}, from which no volume arrived")
            return False
        c = tally.counts
        if end.n_sent is not None and end.n_sent > tally.last_seq_seen + 1:
            missing_from, missing_to = tally.last_seq_seen + 1, end.n_sent - 1
            c.dropped += missing_to - missing_from + 1
            self.counts.dropped += missing_to - missing_from + 1
            log.warning("series %r: volumes %d-%d never arrived", end.series, missing_from, missing_to)
            self.status(
                "gap",
                session=end.session,
                series=end.series,
                missing_from=missing_from,
                missing_to=missing_to,
                after_restart=False,
                at_end=True,
            )
        summary = self.summary()
        self.status(
            "end",
            session=end.session,
            series=end.series,
            n_sent=end.n_sent,
            series_counts=c.fields(),
            settings=self.settings(),
            **summary,
        )
        print(
            f"series {end.series!r} ended: {c.processed} processed, {c.skipped} skipped, {c.dropped} missing "
            f"(all series: {self.counts.processed} processed)\n{format_table(summary['latency_ms'])}",
            flush=True,
        )
        return True

    def summary(self) -> dict:
        """Counts and the latency summary so far."""
        return {**self.counts.fields(), "latency_ms": self.tracker.summary()}

    def settings(self) -> dict:
        """The run configuration, candidate count and int8 kernel, as ``started`` and ``end`` carry them."""
        ident = self.pipe.identifier
        n_candidates = len(ident.bank.labels) if ident is not None else 0
        # Absolute paths: a report or an evaluation reads them from any directory.
        files = {k: str(Path(v).resolve()) for k in ("bundle", "candidates") if (v := getattr(self.cfg, k))}
        kernel = ident.kernel if ident is not None else None
        return {**dataclasses.asdict(self.cfg), **files, "n_candidates": n_candidates, "int8_kernel": kernel}

    def close(self) -> None:
        """Release the pipeline's threads; safe twice."""
        self.pipe.close()
