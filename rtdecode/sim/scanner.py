"""The simulated scanner: streams a recorded session's volumes at TR pace or faster."""

from __future__ import annotations

import logging
from pathlib import Path

from rtdecode.nifti import iter_volumes
from rtdecode.replay import send_volumes

log = logging.getLogger(__name__)


def stream_session(
    bold_path: str | Path,
    address: str,
    speed: float = 1.0,
    session: str = "sim",
    series: str = "run-01",
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

    Returns
    -------
    int
        Number of volumes sent.
    """
    if speed <= 0:
        raise ValueError(f"speed must be > 0, got {speed!r}")
    n = send_volumes(iter_volumes(bold_path, session, series), address, speed)
    log.info("streamed %d volumes of %s", n, bold_path)
    return n
