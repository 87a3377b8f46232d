"""Putting volumes that arrive out of order back in order, briefly, before the pipeline sees them.

ZeroMQ keeps order on one connection, not across a reconnect: volumes left in the old
connection's pipe can arrive after newer ones from the new connection. Without help, the decoder
would report a gap and then refuse the late volumes as out of order. :class:`ReorderBuffer` holds a
volume that arrives after a gap for up to ``wait_s`` so that the missing ones can catch up; when
they do not, the held volumes go on and the gap is real. In-order volumes pass straight through.
"""

from __future__ import annotations

from rtdecode.volume import Volume, series_key


class ReorderBuffer:
    """Release the volumes of a series in index order, waiting at most ``wait_s`` for a gap to fill.

    Parameters
    ----------
    wait_s : float
        How long a volume that follows a gap is held; 0 passes every volume on at once.
    max_ahead : int
        A volume further ahead than this is passed on at once and changes nothing (the pipeline
        refuses it by name).
    """

    def __init__(self, wait_s: float, max_ahead: int = 10_000) -> None:
        if not wait_s >= 0:
            raise ValueError(f"wait_s must be >= 0, got {wait_s!r}")
        self.wait_s = wait_s
        self.max_ahead = max_ahead
        self._series: tuple[str, str] | None = None
        self._next: int | None = None
        self._held: dict[int, tuple[float, Volume]] = {}  # seq -> (arrival, volume)

    def push(self, vol: Volume, now: float) -> list[Volume]:
        """Take a received volume (``now``: monotonic s); return the volumes to process, in order."""
        key = series_key(vol)
        out = []
        if key != self._series or vol.seq == 0:  # another series, or this one restarted
            out = self.flush()
            self._series, self._next = key, None
        if vol.seq - (self._next or 0) > self.max_ahead:
            return out + [vol]  # a corrupt index: not worth waiting for, and the pipeline refuses it
        if self._next is None or vol.seq <= self._next or self.wait_s == 0:
            # In order, or a repeat/late volume the pipeline refuses by name: nothing to wait for.
            out.append(vol)
            if self._next is None or vol.seq >= self._next:
                self._next = vol.seq + 1
            return out + self._release_consecutive()
        self._held.setdefault(vol.seq, (now, vol))
        return out

    def due(self, now: float) -> list[Volume]:
        """Volumes whose wait is over: the gap before the oldest held volume is given up on."""
        if not self._held or now - min(t for t, _ in self._held.values()) < self.wait_s:
            return []
        self._next = min(self._held)
        return self._release_consecutive()

    def next_deadline(self) -> float | None:
        """Monotonic time at which :meth:`due` will release something, or None if nothing is held."""
        return min(t for t, _ in self._held.values()) + self.wait_s if self._held else None

    def flush(self) -> list[Volume]:
        """Every held volume, in order (the series ended or another began)."""
        out = [self._held.pop(s)[1] for s in sorted(self._held)]
        if out:
            self._next = out[-1].seq + 1
        return out

    def _release_consecutive(self) -> list[Volume]:
        out = []
        while self._next in self._held:
            out.append(self._held.pop(self._next)[1])
            self._next += 1
        return out
