"""``rtdecode offline``: the live session as a batch over a recorded series, into a recording."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import nibabel as nib

from rtdecode.apps.session import LiveSession
from rtdecode.config import RunConfig
from rtdecode.io.nifti import iter_volumes
from rtdecode.io.physio import physio_path_for, read_physio
from rtdecode.io.recorder import Recorder
from rtdecode.progress import progress
from rtdecode.volume import Stage, stamp


def decode_series(cfg: RunConfig, bold: str | Path, out: str | Path, record_input: bool = False) -> dict:
    """Decode every volume of a 4-D NIfTI with the live session's steps, into an HDF5 recording.

    Parameters
    ----------
    cfg : RunConfig
    bold : str or Path
        4-D NIfTI of the series (with the retroicor or rvt regressors, its BIDS physiological
        recording beside it or at ``run.physio.file``).
    out : str or Path
        HDF5 recording to write (see :mod:`rtdecode.io.recording`).
    record_input : bool
        Store the input volumes too.

    Returns
    -------
    dict
        Counts and the latency summary.
    """
    meta = {"mode": "offline", "bold": str(Path(bold).resolve()), "bundle": str(Path(cfg.bundle).resolve())}
    with Recorder(out, record_input, meta, flush_s=2.0) as rec:  # a backlog, written in runs of rows
        session = LiveSession(dataclasses.replace(cfg, publish_input=record_input), rec)
        try:
            if session.pipe.physio is not None:
                physio = read_physio(cfg.physio.file or physio_path_for(bold))
                session.pipe.physio.add(physio["time"], physio["cardiac"], physio["respiratory"])
            n_volumes = nib.load(str(bold)).shape[-1]
            batch = []  # run.batch_volumes at a time, decoded and ranked in one pass over weights and bank
            for vol in progress(iter_volumes(bold), "decoding offline", total=n_volumes, unit="vol"):
                stamp(vol.stamps, Stage.RECEIVED)
                batch.append(vol)
                if len(batch) == cfg.batch_volumes:
                    session.step_many(batch)
                    batch = []
            session.step_many(batch)
            summary = session.summary()
            session.status("end", settings=session.settings(), **summary)
        finally:
            session.close()
    return summary
