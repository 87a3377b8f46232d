"""Physiological noise regressors from cardiac and respiratory recordings, causally: RETROICOR and RVT.

The recordings (a pulse oximeter or ECG trace and a respiratory belt trace, as a Siemens PMU,
BIOPAC or BrainProducts bridge gives them) arrive as time-stamped samples, live from an LSL
stream of type ``physio`` or at once from a BIDS ``_physio.tsv.gz``; :class:`Physio` keeps the
last ``window_s`` seconds. A volume's regressors use only the samples acquired up to the end of
that volume (``t_vol + TR``), so live and offline give the same numbers whatever the transport's
delays.

* RETROICOR (Glover, Li & Ress 2000): at each slice's acquisition time, the cardiac phase
  ``φc = 2π (t − t_k) / (t_{k+1} − t_k)`` between the surrounding beats (after the last detected
  beat, the last interval stands in for the one not yet complete) and the respiratory phase
  ``φr = ±π · H(R(t))``, ``H`` the cumulative histogram of the belt's amplitude, the sign that of
  ``dR/dt``; regressors ``cos mφ, sin mφ`` for ``m = 1, 2``, eight in all, per slice time.
* RVT (Birn et al. 2006): the last complete breath's depth (peak minus the trough before it) over
  its period, relative to the series' first volume's, convolved with the respiration response
  function (Birn et al. 2008) over the past volumes.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import find_peaks

from rtdecode.numerics.response import rrf

N_RETROICOR = 8  # cardiac and respiratory, orders 1 and 2, cosine and sine
_CARDIAC_MIN_INTERVAL_S = 0.33  # 180 beats per minute
_BREATH_MIN_INTERVAL_S = 1.5  # 40 breaths per minute
_DERIVATIVE_S = 0.25  # half-width of the belt's slope estimate
_CARDIAC_SEARCH_S = 10.0  # at least five beats down to 30 bpm
_BREATH_SEARCH_S = 40.0  # at least two breaths down to 3 per minute
_RRF_LENGTH_S = 40.0
_MARGIN_S = 60.0


def _peaks(t: np.ndarray, x: np.ndarray, min_interval_s: float) -> np.ndarray:
    # Indices of the trace's peaks: at least min_interval apart and standing out by a quarter of
    # the trace's 5-95 % range (so noise on a slope is not a beat).
    if x.size < 3:
        return np.zeros(0, np.int64)
    fs = (t.size - 1) / max(t[-1] - t[0], 1e-9)
    lo, hi = np.percentile(x, [5, 95])
    idx, _ = find_peaks(x, distance=max(1, int(min_interval_s * fs)), prominence=0.25 * (hi - lo))
    return idx


def cardiac_phase(beats: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Cardiac phase (rad, 0..2π) at times ``t`` from the beat times before and after them.

    After the last beat the previous interval stands in for the next; before the first, NaN.
    """
    t = np.asarray(t, np.float64)
    if beats.size < 2:
        return np.full(t.shape, np.nan)
    k = np.searchsorted(beats, t, side="right") - 1
    ok = k >= 0
    k = np.clip(k, 0, beats.size - 1)
    nxt = np.minimum(k + 1, beats.size - 1)
    interval = np.where(k + 1 < beats.size, beats[nxt] - beats[k], beats[-1] - beats[-2])
    frac = np.mod((t - beats[k]) / interval, 1.0)
    return np.where(ok, 2 * np.pi * frac, np.nan)


def respiratory_phase(t_trace: np.ndarray, belt: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Glover's respiratory phase (rad, −π..π) at times ``t`` from the belt trace so far."""
    lo, hi = belt.min(), belt.max()
    if not hi > lo:
        return np.zeros(np.shape(t))
    hist, edges = np.histogram(belt, bins=100, range=(lo, hi))
    cum = np.concatenate([[0.0], np.cumsum(hist) / belt.size])
    r = np.interp(t, t_trace, belt)
    level = np.interp(r, edges, cum)
    ahead = np.interp(np.minimum(t + _DERIVATIVE_S, t_trace[-1]), t_trace, belt)
    behind = np.interp(t - _DERIVATIVE_S, t_trace, belt)
    return np.pi * level * np.where(ahead >= behind, 1.0, -1.0)


def retroicor(phase_c: np.ndarray, phase_r: np.ndarray) -> np.ndarray:
    """RETROICOR's regressors (…, 8): cos/sin of orders 1 and 2 of each phase; NaN phases give 0."""
    cols = []
    for phase in (phase_c, phase_r):
        known = np.isfinite(phase)
        p = np.where(known, phase, 0.0)
        for m in (1, 2):
            cols += [np.where(known, np.cos(m * p), 0.0), np.where(known, np.sin(m * p), 0.0)]
    return np.stack(cols, axis=-1)


class Physio:
    """Cardiac and respiratory samples and the regressors they give each volume (see the module).

    Parameters
    ----------
    window_s : float
        Seconds of recording kept (beats, breaths and the belt's histogram come from them), > 10.
    """

    def __init__(self, window_s: float = 120.0) -> None:
        if not window_s > 10:
            raise ValueError(f"window_s must be > 10 s, got {window_s!r}")
        self.window_s = window_s
        self._t = np.zeros(0)
        self._x = np.zeros((0, 2))  # cardiac, respiratory; NaN where a channel is not recorded
        self.reset()

    def reset(self) -> None:
        """Forget the series (its time origin and RVT history), not the recording."""
        self.origin_s: float | None = None
        self._rvt: dict[int, float] = {}
        self._rvt_ref: float | None = None

    @property
    def latest_s(self) -> float:
        """Time of the newest sample (−inf before any)."""
        return float(self._t[-1]) if self._t.size else -np.inf

    def add(self, t_s: np.ndarray, cardiac: np.ndarray, respiratory: np.ndarray) -> None:
        """Append samples (times in s on the recording's clock); any not after the newest are dropped."""
        t = np.asarray(t_s, np.float64).ravel()
        x = np.column_stack(
            [np.asarray(cardiac, np.float64).ravel(), np.asarray(respiratory, np.float64).ravel()]
        )
        if x.shape[0] != t.size:
            raise ValueError(f"{t.size} sample times for {x.shape[0]} samples")
        # Repeated or out-of-order samples (a resent chunk) are dropped.
        keep = t > np.maximum.accumulate(np.concatenate([[self.latest_s], t]))[:-1]
        self._t = np.concatenate([self._t, t[keep]])
        self._x = np.concatenate([self._x, x[keep]])

    def volume_end(self, seq: int, tr_s: float, acquired_s: float | None) -> float:
        """Where volume ``seq``'s samples end on the recording's clock (the origin left as it is)."""
        return self._origin(seq, tr_s, acquired_s) + (seq + 1) * tr_s

    def _origin(self, seq: int, tr_s: float, acquired_s: float | None) -> float:
        # The series' origin, or the one this volume would set as its first.
        if self.origin_s is not None:
            return self.origin_s
        return (acquired_s if acquired_s is not None else 0.0) - seq * tr_s

    def volume_time(self, seq: int, tr_s: float, acquired_s: float | None) -> float:
        """Volume ``seq``'s start on the recording's clock.

        The first volume of a series fixes the origin: its acquisition time (the live case, where
        samples carry clock times) or 0 for volume 0 (the BIDS case, times relative to the first
        volume); later volumes follow at their TR.
        """
        self.origin_s = self._origin(seq, tr_s, acquired_s)
        return self.origin_s + seq * tr_s

    def regressors(
        self, seq: int, tr_s: float, offsets_s: np.ndarray, acquired_s: float | None = None
    ) -> tuple[np.ndarray, float]:
        """RETROICOR at ``offsets_s`` into volume ``seq`` (n, 8) and the volume's RVT regressor.

        Uses the samples up to the volume's end only (:meth:`volume_time` places it, from
        ``acquired_s``); a channel without samples gives zeros.
        """
        t_vol = self.volume_time(seq, tr_s, acquired_s)
        end = t_vol + tr_s
        # Samples older than this volume's window are no later volume's either (a margin for a
        # series that starts again earlier on the same recording).
        old = np.searchsorted(self._t, end - self.window_s - _MARGIN_S)
        self._t, self._x = self._t[old:], self._x[old:]
        # In time from volume 0, to the microsecond: a recording on the machine's clock and the
        # same one from a file choose the same samples and give the same numbers.
        end_rel = round(seq * tr_s + tr_s, 6)
        lo, hi = np.searchsorted(self._t, [end - self.window_s - 1e-3, end + 1e-3])
        rel = np.round(self._t[lo:hi] - self.origin_s, 6)
        sel = (rel > end_rel - self.window_s) & (rel <= end_rel)
        t, x = rel[sel], self._x[lo:hi][sel]
        times = seq * tr_s + np.asarray(offsets_s, np.float64)
        phase_c = phase_r = np.full(times.shape, np.nan)
        rvt = np.nan
        # Beats and breaths from the last seconds only (a few of each): the phases need the
        # last ones, and searching the whole window for every volume would cost milliseconds.
        card = np.isfinite(x[:, 0]) & (t > end_rel - _CARDIAC_SEARCH_S)
        if card.sum() > 10:
            phase_c = cardiac_phase(t[card][_peaks(t[card], x[card, 0], _CARDIAC_MIN_INTERVAL_S)], times)
        resp = np.isfinite(x[:, 1])
        if resp.sum() > 10:
            phase_r = respiratory_phase(t[resp], x[resp, 1], times)
            recent = resp & (t > end_rel - _BREATH_SEARCH_S)
            rvt = self._breath_rvt(t[recent], x[recent, 1])
        return retroicor(phase_c, phase_r), self._rvt_regressor(seq, rvt, tr_s)

    @staticmethod
    def _breath_rvt(t: np.ndarray, belt: np.ndarray) -> float:
        # The last complete breath: depth (its peak minus the trough before it) over its period.
        if belt.size < 3:
            return np.nan
        peaks = _peaks(t, belt, _BREATH_MIN_INTERVAL_S)
        if peaks.size < 2:
            return np.nan
        a, b = peaks[-2], peaks[-1]
        return float((belt[b] - belt[a:b].min()) / (t[b] - t[a]))

    def _rvt_regressor(self, seq: int, rvt: float, tr_s: float) -> float:
        if not np.isfinite(rvt):
            rvt = self._rvt[max(self._rvt)] if self._rvt else np.nan
        if not np.isfinite(rvt):
            return 0.0
        if self._rvt_ref is None:
            self._rvt_ref = rvt
        self._rvt[seq] = rvt / self._rvt_ref - 1.0 if self._rvt_ref > 0 else 0.0
        lags = np.arange(int(_RRF_LENGTH_S / tr_s) + 1)
        for old in [k for k in self._rvt if k < seq - lags[-1]]:
            del self._rvt[old]
        # A dropped volume's RVT is the last one before it.
        past = [self._rvt.get(seq - lag, np.nan) for lag in lags]
        for i in range(len(past) - 2, -1, -1):
            past[i] = past[i] if np.isfinite(past[i]) else past[i + 1]
        past = np.nan_to_num(np.array(past))
        return float(rrf(lags * tr_s) @ past * tr_s)

    def get_state(self) -> dict[str, np.ndarray]:
        """The recording kept, the time origin and the RVT history (for checkpoints)."""
        state = {"t": self._t, "x": self._x}
        if self.origin_s is not None:
            state["origin"] = np.array(self.origin_s)
        if self._rvt_ref is not None:
            state["rvt_ref"] = np.array(self._rvt_ref)
            state["rvt"] = np.array(sorted(self._rvt.items()), np.float64).reshape(-1, 2)
        return state

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Take what :meth:`get_state` returned."""
        self.reset()
        self._t, self._x = np.array(state["t"], np.float64), np.array(state["x"], np.float64).reshape(-1, 2)
        if "origin" in state:
            self.origin_s = float(state["origin"])
        if "rvt_ref" in state:
            self._rvt_ref = float(state["rvt_ref"])
            self._rvt = {int(k): float(v) for k, v in state["rvt"]}
