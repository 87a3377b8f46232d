"""The HDF5 recording of a session: one writer (:class:`Recorder`), one reader (:class:`Recording`).

The :class:`Recorder` is a sink with the same ``publish(message)`` method as the ZeroMQ
publisher, so the live recorder (fed by a subscriber) and ``rtdecode offline`` (fed by the
session directly) write the same file, plus a BIDS-style confounds TSV beside it. Everything
that reads a recording back (evaluate, report, replay) goes through :class:`Recording`. The
layout is in ``docs/formats.md``.
"""

from __future__ import annotations

import datetime
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from rtdecode import __version__
from rtdecode.errors import RecordingError
from rtdecode.io.confounds import write_confounds
from rtdecode.io.hdf5 import Intact, open_hdf5
from rtdecode.volume import NOT_REACHED, Stage, Volume, stamps_from_dict
from rtdecode.wire import messages as m

RECORDING_FORMAT = "rtdecode-recording"
RECORDING_VERSION = 1
QA_ARRAYS = ("dvars_pct", "global_signal", "clean_minutes", "spikes", "tsnr")  # datasets under qa/


class Recorder:
    """Write the results of one series to HDF5 as they arrive.

    Parameters
    ----------
    path : str or Path
        The HDF5 file to create.
    record_input : bool
        Also store the input volumes (topic ``volume``).
    meta : dict, optional
        Stored as JSON in the file's ``meta`` attribute (configuration, bundle, ...), with the
        time recording started, the command and rtdecode's version (the report's provenance).
    """

    def __init__(self, path: str | Path, record_input: bool = False, meta: dict | None = None) -> None:
        self.path = Path(path)
        self.record_input = record_input
        self._f = h5py.File(self.path, "w", libver=("v110", "latest"))
        self._f.attrs["format"] = RECORDING_FORMAT
        self._f.attrs["version"] = RECORDING_VERSION
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        provenance = {"started": started, "command": " ".join(sys.argv), "rtdecode_version": __version__}
        self._f.attrs["meta"] = json.dumps({**provenance, **(meta or {})})
        self._f.attrs["stages"] = [s.name.lower() for s in Stage]
        # Every group now, so that the root's header is whole at the start of the file, where a
        # copy cut short keeps it (see rtdecode.io.hdf5); HDF5 1.10's chunk index (libver
        # above) keeps each chunk's address where it was first written, which the old B-tree
        # moves as it grows.
        for name in ("volumes", "motion", "features", "ranking", "qa", *["input"] * record_input):
            self._f.create_group(name)
        for name in ("status/events", "blocks/headers"):
            self._f.create_dataset(name, shape=(0,), maxshape=(None,), dtype=h5py.string_dtype())
        self._rows: dict[int, int] = {}
        self._motion: dict[int, tuple[list[float], float]] = {}
        self.closed = False

    # The sink interface shared with rtdecode.transport.zmq.Publisher.
    def publish(self, msg: m.WireMessage) -> None:
        """File one declared message under its volume (status events and blocks as JSON)."""
        if isinstance(msg, m.Status):
            self._append_str("status/events", json.dumps(msg.header()))
            return
        if isinstance(msg, m.Block):  # headers only: the block's ranking and label ranks, not its predictions
            if not msg.running:  # a running block's result is superseded by its final one
                self._append_str("blocks/headers", json.dumps(msg.header()))
            return
        if isinstance(msg, m.VolumeMessage):
            if self.record_input:
                row = self._row(msg.seq)
                self._put("input/data", row, msg.data)
                self._put("input/affine", row, np.asarray(msg.affine, dtype=np.float64))
                self._put("input/acq_time_s", row, np.array(msg.acq_time_s, dtype=np.float64))
                self._put("input/tr_s", row, np.array(msg.tr_s, dtype=np.float64))
            return
        if not isinstance(msg, m.Features | m.Ranking | m.Motion | m.Qa | m.Latency):
            return  # feedback and latents are not recorded
        row = self._row(msg.seq)
        if isinstance(msg, m.Features):
            self._put(f"features/{msg.roi}/{msg.layer}", row, msg.features)
        elif isinstance(msg, m.Ranking):
            self._put_str("volumes/status", row, msg.status)
            if msg.indices is not None:
                self._put("ranking/indices", row, msg.indices, fill=-1)
                self._put("ranking/scores", row, msg.scores)
                g = self._f["ranking"]
                if "rois" not in g.attrs:
                    g.attrs["rois"], g.attrs["layers"] = msg.rois, msg.layers
                self._put_str("ranking/top_labels", row, json.dumps(msg.labels))
            self._put("volumes/censored", row, np.array(msg.censored))
            self._put("volumes/tr_s", row, np.array(msg.tr_s, dtype=np.float64))
            self._put("volumes/acq_time_s", row, np.array(msg.acq_time_s, dtype=np.float64))
        elif isinstance(msg, m.Qa):
            self._put_qa(row, msg)
        elif isinstance(msg, m.Motion):
            self._put("motion/params", row, np.asarray(msg.params, dtype=np.float64))
            self._f["motion/params"].attrs["fd_threshold_mm"] = msg.fd_threshold_mm
            self._put("motion/fd_mm", row, np.array(msg.fd_mm, dtype=np.float64))
            self._motion[msg.seq] = (msg.params, msg.fd_mm)
        else:
            self._put("volumes/stamps", row, stamps_from_dict(msg.stamps), fill=-1)
            if msg.acquired_from:
                self._put_str("volumes/acquired_from", row, msg.acquired_from)
            # The last message of a volume: write it out now, so that a full disk shows here (HDF5
            # would otherwise fail later, inside its cache, where the error cannot be caught) and
            # a recorder that is killed keeps every volume but the last.
            self._f.flush()

    def _put_qa(self, row: int, msg: m.Qa) -> None:
        g = self._f["qa"]
        if "rois" not in g.attrs:
            g.attrs["rois"], g.attrs["fd_levels_mm"] = list(msg.tsnr), [float(k) for k in msg.frames_under]
        for name in ("dvars_pct", "global_signal", "clean_minutes"):
            value = getattr(msg, name)
            self._put(f"qa/{name}", row, np.array(np.nan if value is None else value, np.float64))
        self._put("qa/spikes", row, np.array(-1 if msg.spikes is None else msg.spikes, np.int64))
        tsnr = [msg.tsnr.get(roi) for roi in g.attrs["rois"]]
        self._put("qa/tsnr", row, np.array([np.nan if v is None else v for v in tsnr], np.float64))

    def _row(self, seq: int) -> int:
        row = self._rows.get(seq)
        if row is None:
            row = self._rows[seq] = len(self._rows)
            self._put("volumes/seq", row, np.array(seq, dtype=np.int64))
        return row

    def _dataset(self, name: str, example: np.ndarray, fill: float) -> h5py.Dataset:
        if name not in self._f:
            fillvalue = fill if example.dtype.kind in "iuf" else None
            if example.dtype.kind == "f":
                fillvalue = np.nan if fill == -1 else fill
            self._f.create_dataset(
                name,
                shape=(0, *example.shape),
                maxshape=(None, *example.shape),
                dtype=example.dtype,
                chunks=(max(1, 2**16 // max(example.nbytes, 1)), *example.shape),
                fillvalue=fillvalue,
            )
        return self._f[name]

    def _put(self, name: str, row: int, value: np.ndarray, fill: float = -1) -> None:
        value = np.asarray(value)
        ds = self._dataset(name, value, fill)
        if ds.shape[0] <= row:
            ds.resize(row + 1, axis=0)
        ds[row] = value

    def _put_str(self, name: str, row: int, value: str) -> None:
        if name not in self._f:
            self._f.create_dataset(name, shape=(0,), maxshape=(None,), dtype=h5py.string_dtype())
        ds = self._f[name]
        if ds.shape[0] <= row:
            ds.resize(row + 1, axis=0)
        ds[row] = value

    def _append_str(self, name: str, value: str) -> None:
        self._put_str(name, self._f[name].shape[0], value)

    def close(self) -> None:
        """Finish the file and write ``<name>_desc-confounds_timeseries.tsv`` beside it; safe twice."""
        if self.closed:
            return
        self.closed = True
        self._f.close()
        if self._motion:
            write_confounds(self.confounds_path, self._motion)

    @property
    def n_volumes(self) -> int:
        """Volumes recorded so far."""
        return len(self._rows)

    @property
    def confounds_path(self) -> Path:
        """Where the confounds TSV goes: beside the recording."""
        return self.path.with_name(self.path.stem + "_desc-confounds_timeseries.tsv")

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        try:
            self.close()
        except OSError:
            if exc_type is None:
                raise  # else the error that stopped the recording is the one to report


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
