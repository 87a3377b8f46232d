"""Latency summaries computed from the stage stamps that travel with each volume."""

from __future__ import annotations

from array import array

import numpy as np

from rtdecode.volume import NOT_REACHED, Stage

_PERCENTILES = {"p50": 50, "p95": 95, "p99": 99}


def stage_durations_ms(stamps: np.ndarray) -> dict[str, float]:
    """Durations of one volume's stages in ms.

    Each reached stage's duration runs from the previous reached stage (``acquired->file_complete``
    is the scanner's reconstruction and export); ``rtdecode`` runs from the file being complete (or,
    without a bridge, reception) to publication, rtdecode's own share; ``end_to_end`` from the
    earliest of acquisition, file completion and reception to publication.

    Parameters
    ----------
    stamps : numpy.ndarray
        int64, shape (len(Stage),).
    """
    stamps = stamps.tolist()  # Python ints: a dozen lookups per volume, each a numpy scalar otherwise
    out = {}
    prev = None
    for s in Stage:
        if stamps[s] == NOT_REACHED:
            continue
        if prev is not None:
            out[f"{prev.name.lower()}->{s.name.lower()}"] = (stamps[s] - stamps[prev]) / 1e6
        prev = s
    published = stamps[Stage.PUBLISHED]
    if published == NOT_REACHED:
        return out
    own = _first_reached(stamps, (Stage.FILE_COMPLETE, Stage.RECEIVED))
    if own != NOT_REACHED:
        out["rtdecode"] = (published - own) / 1e6
    start = _first_reached(stamps, (Stage.ACQUIRED, Stage.FILE_COMPLETE, Stage.RECEIVED))
    if start != NOT_REACHED:
        out["end_to_end"] = (published - start) / 1e6
    return out


def _first_reached(stamps: list[int], stages: tuple[Stage, ...]) -> int:
    return next((stamps[s] for s in stages if stamps[s] != NOT_REACHED), NOT_REACHED)


MAX_STAMP_AGE_S = 86_400.0  # a sender stamp older than a day is a broken clock, not a slow network


def drop_implausible_stamps(stamps: np.ndarray, tr_s: float) -> list[str]:
    """Clear the sender's stamps (``acquired``, ``file_complete``, ``sent``) that cannot be true.

    Returns the names of those cleared.

    A stamp after reception by more than one TR (a clock ahead, or a wrong unit) or more than a
    day before it would publish negative or absurd latencies; it is set to ``NOT_REACHED`` so
    the volume is decoded as usual and its latency is flagged rather than believed.

    Parameters
    ----------
    stamps : numpy.ndarray
        int64, shape (len(Stage),); changed in place.
    tr_s : float
        The series' repetition time.
    """
    received = stamps[Stage.RECEIVED]
    if received == NOT_REACHED:
        return []
    dropped = []
    for stage in (Stage.ACQUIRED, Stage.FILE_COMPLETE, Stage.SENT):
        t = stamps[stage]
        if t != NOT_REACHED and not received - MAX_STAMP_AGE_S * 1e9 <= t <= received + tr_s * 1e9:
            stamps[stage] = NOT_REACHED
            dropped.append(stage.name.lower())
    return dropped


def _interval_order(key: str) -> tuple:
    # Stage order, end_to_end last, whatever order the volumes happened to arrive in.
    if key in ("rtdecode", "end_to_end"):
        return (len(Stage), key == "end_to_end")
    first, second = key.split("->")
    return (Stage[first.upper()], Stage[second.upper()])


class LatencyTracker:
    """Collect per-volume stamps and summarise them.

    Each interval's durations are kept in a flat array of doubles (8 bytes per volume and
    interval): a decoder running for hours keeps every value for exact percentiles without
    growing by a dictionary per volume.
    """

    def __init__(self) -> None:
        self._values: dict[str, array] = {}
        self._n = 0

    def add(self, stamps: np.ndarray) -> dict[str, float]:
        """Record one volume's stamps; return its durations (ms)."""
        d = stage_durations_ms(stamps)
        for key, ms in d.items():
            self._values.setdefault(key, array("d")).append(ms)
        self._n += 1
        return d

    def __len__(self) -> int:
        return self._n

    def summary(self) -> dict[str, dict[str, float]]:
        """Return ``{interval: {p50, p95, p99, max, n}}`` in ms over all recorded volumes."""
        out = {}
        for key in sorted(self._values, key=_interval_order):
            vals = np.frombuffer(self._values[key], dtype=np.float64)
            out[key] = {name: float(np.percentile(vals, q)) for name, q in _PERCENTILES.items()}
            out[key]["max"] = float(vals.max())
            out[key]["n"] = int(vals.size)
        return out


def format_table(summary: dict[str, dict[str, float]]) -> str:
    """Render a latency summary as a fixed-width text table."""
    lines = [f"{'stage (ms)':<28}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}{'n':>7}"]
    for key, s in summary.items():
        lines.append(
            f"{key:<28}{s['p50']:>9.2f}{s['p95']:>9.2f}{s['p99']:>9.2f}{s['max']:>9.2f}{int(s['n']):>7}"
        )
    return "\n".join(lines)
