"""BIDS physiological recordings (``*_physio.tsv.gz`` with its JSON sidecar).

The TSV has no header; the sidecar names its ``Columns`` (``cardiac``, ``respiratory``,
``trigger``…), its ``SamplingFrequency`` (Hz) and its ``StartTime``: the first sample's time in
seconds relative to the first volume of the series (negative when recording began before it).
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np

from rtdecode.errors import FileError

CHANNELS = ("cardiac", "respiratory")


def physio_path_for(bold: str | Path) -> Path:
    """The BIDS recording beside a series: ``…[_echo-<k>]_bold.nii[.gz]`` → ``…_physio.tsv.gz``."""
    bold = Path(bold)
    stem = re.sub(r"echo-\d+_", "", bold.name.split(".")[0])  # one recording for every echo
    stem = stem[: -len("bold")] if stem.endswith("bold") else f"{stem}_"
    return bold.with_name(f"{stem}physio.tsv.gz")


def read_physio(path: str | Path) -> dict[str, np.ndarray]:
    """Read a recording: ``time``, ``cardiac``, ``respiratory``.

    ``time`` is in seconds from the first volume; a channel not recorded is NaN.

    Raises
    ------
    FileError
        The file or its sidecar is missing or malformed, or it records neither channel.
    """
    path = Path(path)
    sidecar = path.with_name(path.name.removesuffix(".gz").removesuffix(".tsv") + ".json")
    try:
        meta = json.loads(sidecar.read_text())
        fs, start, columns = float(meta["SamplingFrequency"]), float(meta["StartTime"]), list(meta["Columns"])
        with gzip.open(path, "rt") if path.suffix == ".gz" else open(path) as f:
            data = np.loadtxt(f, delimiter="\t", ndmin=2)
    except (OSError, ValueError, KeyError, TypeError, EOFError) as err:
        raise FileError(f"{path}: not a BIDS physiological recording ({err})") from err
    if not fs > 0 or data.shape[1] != len(columns):
        raise FileError(f"{path}: {data.shape[1]} columns for {len(columns)} named, at {fs} Hz")
    if not set(CHANNELS) & set(columns):
        raise FileError(f"{path}: none of the columns {columns} is {' or '.join(CHANNELS)}")
    out = {"time": start + np.arange(data.shape[0]) / fs}
    for name in CHANNELS:
        out[name] = data[:, columns.index(name)] if name in columns else np.full(data.shape[0], np.nan)
    return out
