"""The simulated scanner: streams a recorded session's volumes at TR pace or faster."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib

from rtdecode.apps.replay import events_to_markers, send_volumes
from rtdecode.io.nifti import iter_volumes, read_events
from rtdecode.io.physio import physio_path_for, read_physio

log = logging.getLogger(__name__)


def stream_session(
    bold_path: str | Path,
    address: str,
    speed: float = 1.0,
    session: str = "sim",
    series: str = "run-01",
    markers: bool = False,
) -> int:
    """Send every volume of a 4-D NIfTI over ZeroMQ or LSL, then an end-of-series message.

    Volume ``k`` is due ``k * TR / speed`` seconds after the first; sends are paced against
    these absolute targets, so a late send does not delay the ones after it.

    Parameters
    ----------
    bold_path : str or Path
        4-D NIfTI with the TR in its header.
    address : str
        Where the decoder's volume input listens, or ``lsl`` / ``lsl:<name>`` for an LSL stream.
    speed : float
        1 for real time, N for N times faster, ``inf`` for as fast as the receiver accepts.
    session, series : str
        Identifiers put in each volume's header.
    markers : bool
        Also play the stimulus software: send the blocks of ``events.tsv`` (beside the NIfTI) as
        LSL markers at their times.

    A physiological recording beside the series (BIDS ``_physio.tsv.gz``, as the simulator
    writes with ``physio_pct``) goes out with it as an LSL stream of type ``physio``.

    Returns
    -------
    int
        Number of volumes sent.
    """
    if speed <= 0:
        raise ValueError(f"speed must be > 0, got {speed!r}")
    marks = events_to_markers(read_events(Path(bold_path).with_name("events.tsv"))) if markers else ()
    n_volumes = nib.load(str(bold_path)).shape[-1]
    physio_path = physio_path_for(bold_path)
    physio = read_physio(physio_path) if physio_path.exists() else None
    n = send_volumes(
        iter_volumes(bold_path, session, series), address, speed, n_volumes, marks, physio=physio
    )
    log.info("streamed %d volumes of %s", n, bold_path)
    return n
