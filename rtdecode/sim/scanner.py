"""The simulated scanner: streams a recorded session's volumes at TR pace or faster."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from rtdecode.nifti import iter_volumes
from rtdecode.transport.zmq import VolumeSender
from rtdecode.volume import Stage

log = logging.getLogger(__name__)


def stream_session(
    bold_path: str | Path,
    address: str,
    speed: float = 1.0,
    session: str = "sim",
    series: str = "run-01",
    bind: bool = False,
) -> int:
    """Send every volume of a 4-D NIfTI over ZeroMQ, then an end-of-series message.

    Volume ``k`` is due ``k * TR / speed`` seconds after the first; sends are paced against
    these absolute targets, so a late send does not delay the ones after it.

    Parameters
    ----------
    bold_path : str or Path
        4-D NIfTI with the TR in its header.
    address : str
        Where the decoder's volume input listens.
    speed : float
        1 for real time, N for N times faster, ``inf`` for as fast as the receiver accepts.
    session, series : str
        Identifiers put in each volume's header.
    bind : bool
        Bind instead of connecting.

    Returns
    -------
    int
        Number of volumes sent.
    """
    if speed <= 0:
        raise ValueError(f"speed must be > 0, got {speed!r}")
    n = 0
    with VolumeSender(address, bind=bind) as tx:
        t0_mono, t0_wall = None, None
        for vol in iter_volumes(bold_path, session, series):
            if t0_mono is None:
                t0_mono, t0_wall = time.monotonic_ns(), time.time()
            offset_s = vol.seq * vol.tr_s / speed
            due = t0_mono + int(offset_s * 1e9)
            wait = (due - time.monotonic_ns()) / 1e9
            if wait > 0:
                time.sleep(wait)
            # The simulated scanner "acquires" the volume at its due time.
            vol.acq_time_s = t0_wall + offset_s
            vol.stamps[Stage.ACQUIRED] = due
            tx.send(vol)
            n += 1
        tx.send_end(session, series, n)
    log.info("streamed %d volumes of %s", n, bold_path)
    return n
