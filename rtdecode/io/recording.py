"""A session's HDF5 recording read back; the writer is :class:`rtdecode.io.recorder.Recorder`.

Everything that reads a recording (evaluate, report, replay) goes through :class:`Recording`.
The layout is in ``docs/formats.md``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from rtdecode.errors import RecordingError
from rtdecode.io.hdf5 import Intact, open_hdf5
from rtdecode.volume import NOT_REACHED, Stage, Volume

RECORDING_FORMAT = "rtdecode-recording"
RECORDING_VERSION = 1
QA_ARRAYS = ("dvars_pct", "global_signal", "clean_minutes", "spikes", "tsnr")  # datasets under qa/


@dataclass
class Recording:
    """A recording read back (see ``docs/formats.md``); arrays are in volume order.

    Attributes
    ----------
    seq : numpy.ndarray
        Volume indices, shape (n,).
    status : numpy.ndarray
        ``ok`` / ``baseline`` per volume.
    censored : numpy.ndarray
        bool, shape (n,).
    stamps : numpy.ndarray
        int64 (n, len(Stage)), -1 where a stage was not reached.
    acquired_from : numpy.ndarray
        str, shape (n,): what each ``acquired`` stamp is (``trigger``, ``scanner clock``, ...; ``""``
        where unknown).
    motion, fd_mm : numpy.ndarray or None
        (n, 6) and (n,), when motion correction ran.
    fd_threshold_mm : float or None
        The censoring threshold the decoder applied.
    features : dict of (roi, layer) to numpy.ndarray
        (n, n_units) predictions, NaN rows where a volume was not decoded.
    events, blocks : list of dict
        The ``status`` events and ``block`` results, as published.
    settings : dict
        The decoder's settings from its last ``started``/``end`` event.
    qa : dict of str to numpy.ndarray
        Per-volume quality (:data:`QA_ARRAYS`; NaN, or −1 spikes, where unknown); ``tsnr`` is
        (n, len(qa_rois)).
    qa_rois : list of str
        The columns of ``qa["tsnr"]``.
    truncated : tuple of int or None
        Bytes on disk and bytes the file should hold, when it was cut short.
    lost : list of str
        What a truncated file could not give (objects, rows past the cut).
    """

    path: Path
    meta: dict
    seq: np.ndarray
    status: np.ndarray
    censored: np.ndarray
    tr_s: float | None
    stamps: np.ndarray
    acquired_from: np.ndarray
    motion: np.ndarray | None
    fd_mm: np.ndarray | None
    fd_threshold_mm: float | None
    features: dict[tuple[str, str], np.ndarray]
    events: list[dict]
    blocks: list[dict]
    settings: dict = field(default_factory=dict)
    truncated: tuple[int, int] | None = None
    lost: list[str] = field(default_factory=list)
    qa: dict[str, np.ndarray] = field(default_factory=dict)
    qa_rois: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | Path) -> Recording:
        """Read a recording; of a truncated one, the volumes whose bytes survive (see ``lost``).

        Raises
        ------
        RecordingError
            The file is missing, not HDF5, not an rtdecode recording, holds no volume, or is cut
            so short that nothing of it can be read.
        """
        path = Path(path)
        if not path.exists():
            raise RecordingError(f"{path}: no such recording")
        try:
            with open_hdf5(path) as (f, intact):
                return cls._read(path, f, intact)
        except RecordingError:
            raise
        except OSError as err:
            if cut := re.search(r"truncated file: eof = (\d+).*stored_eof = (\d+)", str(err)):
                raise RecordingError(
                    f"{path}: the recording is truncated ({cut[1]} of {cut[2]} bytes: a disk that filled or "
                    "a copy cut short) and too little of it is left to read"
                ) from err
            raise RecordingError(f"{path}: not an HDF5 file ({err})") from err

    @classmethod
    def _read(cls, path: Path, f: h5py.File, intact: Intact) -> Recording:
        if f.attrs.get("format") != RECORDING_FORMAT:
            raise RecordingError(f"{path}: not an rtdecode recording (format {f.attrs.get('format')!r})")
        group = intact.get(f, "features")
        layers = [
            f"features/{roi}/{layer}" for roi in intact.keys(group) for layer in intact.keys(group[roi])
        ]
        names = [
            "volumes/seq",
            "volumes/censored",
            "volumes/tr_s",
            "volumes/stamps",
            "motion/params",
            "motion/fd_mm",
            *(f"qa/{q}" for q in QA_ARRAYS),
        ]
        found = {name: ds for name in [*names, *layers] if (ds := intact.get(f, name)) is not None}
        whole = {name: intact.rows(ds) for name, ds in found.items()}
        if not whole.get("volumes/seq"):
            readable = " it can read" if intact.truncated else ""
            raise RecordingError(f"{path}: the recording holds no volume{readable}")
        # A truncated file: the volumes every surviving per-volume array holds.
        n = min([whole["volumes/seq"], *(r for name, r in whole.items() if 0 < r < found[name].shape[0])])
        if n < found["volumes/seq"].shape[0]:
            intact.lost.append(f"volumes {n} to {found['volumes/seq'].shape[0] - 1}")
        intact.lost += [f"{name} (all rows)" for name, r in whole.items() if not r and found[name].shape[0]]

        def get(name: str) -> np.ndarray | None:
            return found[name][:n] if whole.get(name) else None

        def strings(name: str, fill: str) -> np.ndarray:
            got = intact.strings(f, name)
            got = np.zeros(0, object) if got is None else got[:n]
            return np.array([*got, *[fill] * (n - len(got))], dtype=object)

        def messages(name: str) -> list[dict]:
            got = intact.strings(f, name)
            return [] if got is None else [json.loads(text) for text in got]

        events = messages("status/events")
        tr, censored = get("volumes/tr_s"), get("volumes/censored")
        params = found.get("motion/params")
        threshold = params.attrs.get("fd_threshold_mm") if params is not None else None
        return cls(
            path=path,
            meta=json.loads(f.attrs.get("meta", "{}")),
            seq=get("volumes/seq"),
            status=strings("volumes/status", "?"),
            censored=np.zeros(n, bool) if censored is None else censored.astype(bool),
            tr_s=float(np.nanmedian(tr)) if tr is not None and np.isfinite(tr).any() else None,
            stamps=_by_stage(get("volumes/stamps"), f.attrs.get("stages")),
            acquired_from=strings("volumes/acquired_from", ""),
            motion=get("motion/params"),
            fd_mm=get("motion/fd_mm"),
            fd_threshold_mm=None if threshold is None else float(threshold),
            features={tuple(name.split("/")[1:]): get(name) for name in layers if whole.get(name)},
            qa={q: get(f"qa/{q}") for q in QA_ARRAYS if whole.get(f"qa/{q}")},
            qa_rois=[str(r) for r in f["qa"].attrs.get("rois", [])] if "qa" in f else [],
            events=events,
            blocks=messages("blocks/headers"),
            settings=next((e["settings"] for e in reversed(events) if "settings" in e), {}),
            truncated=(intact.size, intact.stored_size) if intact.truncated else None,
            lost=intact.lost,
        )

    @property
    def times_s(self) -> np.ndarray:
        """Scan time of each volume (index × TR; the index when the TR is unknown)."""
        return self.seq * (self.tr_s or 1.0)


def input_volumes(path: str | Path, session: str = "replay", series: str = "run-01") -> Iterator[Volume]:
    """The input volumes stored in a recording (``input/*``), read one at a time.

    Of a truncated recording, the volumes whose bytes survive.

    Raises
    ------
    RecordingError
        The recording holds no input volumes.
    """
    with open_hdf5(path) as (f, intact):
        data = intact.get(f, "input/data")
        if data is None:
            raise RecordingError(f"{path}: the recording holds no input volumes (record with --record-input)")
        affine, acq = f["input/affine"], f["input/acq_time_s"]
        if "input/tr_s" in f:
            tr = float(np.median(f["input/tr_s"][:]))
        else:  # recordings written before input/tr_s
            tr = float(np.median(np.diff(acq[:]))) if len(acq) > 1 else 1.0
        for k in range(min(intact.rows(data), intact.rows(affine), intact.rows(acq))):
            yield Volume(data[k], affine[k], k, tr, float(acq[k]), session, series)


def _by_stage(stamps: np.ndarray | None, names) -> np.ndarray:
    # Columns follow the stages of the writer's version (named in the file): put them in ours.
    if stamps is None:
        return np.zeros((0, len(Stage)), np.int64)
    if names is None:
        return stamps
    names = [str(n) for n in names]
    out = np.full((stamps.shape[0], len(Stage)), NOT_REACHED, np.int64)
    for col, name in enumerate(names[: stamps.shape[1]]):
        if name.upper() in Stage.__members__:
            out[:, Stage[name.upper()]] = stamps[:, col]
    return out
