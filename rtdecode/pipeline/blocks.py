"""Block decoding: stimulus markers group volumes into blocks whose averaged predictions are ranked.

The stimulus software marks when a block starts and ends (and what it showed). A block's volumes
are those acquired from ``onset + shift`` to ``offset + shift`` (``shift``: the hemodynamic
delay); the decoders are linear, so the average of their per-volume predictions is the
prediction for the averaged volumes. The block is ranked as soon as its last volume is in, and,
while it runs, after each of its volumes (a *running* result: the volumes so far), so that an
experimenter sees the imagined category's rank rise during an imagery trial.

A condition may have its own window: ``windows={"imagery": (3.0, 18.0)}`` takes an imagery
block's volumes from its start marker + 3 s to + 18 s (then shifted), whatever its end marker
says, for stimulus programs that mark a whole trial (cue, imagery, rating) as one block.

Marker times are on the decoder's monotonic clock; they are placed on the scan's time line
(seconds since volume 0) with the acquisition stamps of the volumes, so replays at any speed
align as a live session does.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from rtdecode.numerics.stats import correlations
from rtdecode.pipeline.chain import Result
from rtdecode.pipeline.ranking import Identifier
from rtdecode.volume import NOT_REACHED, Stage, Volume
from rtdecode.wire.markers import Marker

log = logging.getLogger(__name__)


def _tolerance(tr_s: float) -> float:
    # Designs put block edges on volume boundaries; marker times carry milliseconds of jitter
    # (times the replay speed), so a volume within a quarter TR of an edge goes to the side it
    # would have without the jitter.
    return tr_s / 4


class ScanClock:
    """Convert clock times (monotonic ns) to scan time (seconds since volume 0 was acquired).

    Uses the latest volume's acquisition stamp and the pace of the recent volumes (a replay at
    N times real time runs N times faster than the scan time line).
    """

    def __init__(self, window: int = 8) -> None:
        self._points: list[tuple[int, int]] = []  # (seq, acquired ns)
        self._window = window
        self.tr_s = 0.0

    def add(self, seq: int, acquired_ns: int, tr_s: float) -> None:
        """Add one volume's acquisition stamp."""
        self.tr_s = tr_s
        self._points = [*self._points[-(self._window - 1) :], (seq, acquired_ns)]

    @property
    def last_seq(self) -> int:
        """Index of the latest volume."""
        return self._points[-1][0]

    @property
    def ready(self) -> bool:
        """Whether any volume has been seen."""
        return bool(self._points)

    def scan_time(self, t_ns: int) -> float:
        """Scan time of clock time ``t_ns`` (extrapolated from the latest volume)."""
        seq, acq = self._points[-1]
        rate = 1.0  # scan seconds per clock second; real time until two volumes are in
        if len(self._points) > 1:
            s0, a0 = self._points[0]
            if acq > a0:
                rate = (seq - s0) * self.tr_s / ((acq - a0) / 1e9)
        return seq * self.tr_s + (t_ns - acq) / 1e9 * rate


@dataclass
class Block:
    """A block between two markers, in scan seconds (``offset_s`` is None while it runs)."""

    index: int
    label: str
    condition: str
    onset_s: float
    offset_s: float | None = None

    def window(
        self, shift_s: float, tol_s: float, windows: dict[str, tuple[float, float]]
    ) -> tuple[float, float]:
        """Scan-time span of the block's volumes: ``[start, end)``, end infinite while it runs."""
        if self.condition in windows:
            start, end = windows[self.condition]
            return self.onset_s + start + shift_s - tol_s, self.onset_s + end + shift_s - tol_s
        end = self.offset_s if self.offset_s is not None else math.inf
        return self.onset_s + shift_s - tol_s, end + shift_s - tol_s


@dataclass
class BlockResult:
    """A completed block: its volumes and the ranking of their averaged predictions."""

    block: Block
    seqs: list[int]
    predictions: np.ndarray | None = None  # (n_rois, n_units_total)
    x: np.ndarray | None = None  # averaged preprocessed voxels
    scores: dict[str, float] = field(default_factory=dict)  # mean per-volume feedback scores
    top_indices: np.ndarray | None = None  # (n_rois, n_layers, k)
    top_scores: np.ndarray | None = None
    label_rank: np.ndarray | None = None  # (n_rois, n_layers), 1 = best; None if label unknown
    label_correlation: np.ndarray | None = None
    running: bool = False  # the block is still in progress: its volumes so far

    @property
    def status(self) -> str:
        """``ok`` when some volume could be used, else ``empty``."""
        return "ok" if self.predictions is not None else "empty"


class BlockDecoder:
    """Group volumes into blocks by markers and rank each block when its last volume is in.

    Parameters
    ----------
    identifier : Identifier
    hrf_shift_s : float
        Hemodynamic delay: a block's volumes are those acquired from onset + shift to offset + shift.
    keep_volumes : int
        How many recent volumes' predictions are kept (bounds the longest block).
    windows : dict of str to (float, float), optional
        Per condition, the span of its volumes from the start marker (s), instead of start to end.
    running : bool
        Also rank a block after each of its volumes while it runs.
    """

    def __init__(
        self,
        identifier: Identifier,
        hrf_shift_s: float,
        keep_volumes: int = 600,
        windows: dict[str, tuple[float, float]] | None = None,
        running: bool = True,
    ) -> None:
        self.identifier = identifier
        self.shift = hrf_shift_s
        self.keep = keep_volumes
        self.windows = dict(windows or {})
        self.running = running
        self.reset()

    def reset(self) -> None:
        """Forget everything (a new series)."""
        self.clock = ScanClock()
        self._pending: list[Marker] = []
        self._open: Block | None = None
        self._closed: list[Block] = []
        self._n_blocks = 0
        self._volumes: dict[int, tuple[np.ndarray, np.ndarray, dict[str, float]]] = {}

    def add_marker(self, marker: Marker) -> None:
        """Queue a marker; it takes effect with the next volume."""
        self._pending.append(marker)

    def _apply_markers(self) -> None:
        for m in self._pending:
            t = self.clock.scan_time(m.time_ns)
            if m.event == "start":
                if self._open is not None:
                    log.warning(
                        "block %d had no end marker; it ends where block %d starts",
                        self._open.index,
                        self._n_blocks,
                    )
                    self._close(t)
                self._open = Block(self._n_blocks, m.label, m.condition, t)
                self._n_blocks += 1
            elif self._open is None:
                log.warning("an end marker at scan time %.1f s without an open block was ignored", t)
            else:
                self._close(t)
        self._pending.clear()

    def _close(self, t: float) -> None:
        self._open.offset_s = t
        self._closed.append(self._open)
        self._open = None

    def _tick(self, vol: Volume) -> None:
        # Place the volume on the clock and apply the markers that came before it (once per volume).
        if self.clock.ready and self.clock.last_seq == vol.seq:
            return
        acq = vol.stamps[Stage.ACQUIRED]
        self.clock.add(vol.seq, int(acq if acq != NOT_REACHED else vol.stamps[Stage.RECEIVED]), vol.tr_s)
        if self._pending:
            self._apply_markers()

    def is_rest(self, vol: Volume) -> bool:
        """Whether a volume lies outside every block's window (as far as the markers tell so far)."""
        self._tick(vol)
        t, tol = vol.seq * vol.tr_s, _tolerance(vol.tr_s)
        blocks = [*self._closed, *([self._open] if self._open is not None else [])]
        return not any(lo <= t < hi for lo, hi in (b.window(self.shift, tol, self.windows) for b in blocks))

    def add(self, res: Result, censored: bool, scores: dict[str, float] | None = None) -> list[BlockResult]:
        """Take one processed volume; return the blocks it completes, then the running ones it adds to.

        ``res`` of a refused volume is not passed; volumes that were not decoded (baseline) or
        censored for motion count for timing but not in the averages.
        """
        vol = res.volume
        self._tick(vol)
        used = res.status == "ok" and not censored
        if used:
            self._volumes[vol.seq] = (res.predictions, res.x, scores or {})
            for old in [s for s in self._volumes if s <= vol.seq - self.keep]:
                del self._volumes[old]
        tol = _tolerance(vol.tr_s)
        t_next = (vol.seq + 1) * vol.tr_s
        done = [b for b in self._closed if t_next >= b.window(self.shift, tol, self.windows)[1]]
        self._closed = [b for b in self._closed if b not in done]
        out = [self._result(b, vol.tr_s) for b in done]
        if self.running and used:
            for b in [*self._closed, *([self._open] if self._open is not None else [])]:
                lo, hi = b.window(self.shift, tol, self.windows)
                if lo <= vol.seq * vol.tr_s < hi:
                    out.append(self._result(b, vol.tr_s, running=True))
        return out

    def _result(self, b: Block, tr_s: float, running: bool = False) -> BlockResult:
        lo, hi = b.window(self.shift, _tolerance(tr_s), self.windows)
        seqs = sorted(s for s in self._volumes if lo <= s * tr_s < hi)
        out = BlockResult(b, seqs, running=running)
        if not seqs:
            log.warning("block %d (%s): no decoded volume in its window", b.index, b.label)
            return out
        out.predictions = np.mean([self._volumes[s][0] for s in seqs], axis=0)
        out.x = np.mean([self._volumes[s][1] for s in seqs], axis=0)
        names = set().union(*(self._volumes[s][2] for s in seqs))
        out.scores = {
            n: float(np.mean([self._volumes[s][2][n] for s in seqs if n in self._volumes[s][2]]))
            for n in names
        }
        out.top_indices, out.top_scores = self.identifier.rank(out.predictions)
        labels = self.identifier.bank.labels
        if b.label in labels:
            target = labels.index(b.label)
            n_rois, slices = out.predictions.shape[0], self.identifier.layer_slices
            out.label_rank = np.empty((n_rois, len(slices)), dtype=np.int32)
            out.label_correlation = np.empty((n_rois, len(slices)), dtype=np.float32)
            for j, (layer, sl) in enumerate(slices.items()):
                r = correlations(out.predictions[:, sl], self.identifier.bank.features[layer])
                out.label_correlation[:, j] = r[:, target]
                out.label_rank[:, j] = 1 + (r > r[:, target : target + 1]).sum(1)
        return out
