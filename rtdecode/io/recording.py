"""Recording every output of a session to HDF5, plus a BIDS-style confounds TSV.

The :class:`Recorder` is a sink with the same ``publish(topic, header, arrays)`` method as the
ZeroMQ publisher, so the live recorder (fed by a subscriber) and ``rtdecode offline`` (fed by the
pipeline directly) write the same file. The layout is in ``docs/formats.md``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from rtdecode.volume import Stage, stamps_from_dict

RECORDING_FORMAT = "rtdecode-recording"
RECORDING_VERSION = 1
CONFOUND_COLUMNS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z", "framewise_displacement")


class Recorder:
    """Write the results of one series to HDF5 as they arrive.

    Parameters
    ----------
    path : str or Path
        The HDF5 file to create.
    record_input : bool
        Also store the input volumes (topic ``volume``).
    meta : dict, optional
        Stored as JSON in the file's ``meta`` attribute (configuration, bundle, ...).
    """

    def __init__(self, path: str | Path, record_input: bool = False, meta: dict | None = None) -> None:
        self.path = Path(path)
        self.record_input = record_input
        self._f = h5py.File(self.path, "w")
        self._f.attrs["format"] = RECORDING_FORMAT
        self._f.attrs["version"] = RECORDING_VERSION
        self._f.attrs["meta"] = json.dumps(meta or {})
        self._rows: dict[int, int] = {}
        self._motion: dict[int, tuple[list[float], float]] = {}
        self._events: list[str] = []
        self._blocks: list[str] = []
        self.closed = False

    # The sink interface shared with rtdecode.transport.zmq.Publisher.
    def publish(
        self, topic: str, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None
    ) -> None:
        """File one message (``topic`` is implied by ``header['kind']``)."""
        arrays = arrays or {}
        kind = header.get("kind")
        if kind == "status":
            self._events.append(json.dumps(dict(header)))
            return
        if kind == "block":  # headers only: the block's ranking and label ranks, not its predictions
            self._blocks.append(json.dumps(dict(header)))
            return
        seq = header.get("seq")
        if not isinstance(seq, int):
            return
        row = self._row(seq)
        if kind == "features":
            self._put(f"features/{header['roi']}/{header['layer']}", row, arrays["features"])
        elif kind == "ranking":
            self._put_str("volumes/status", row, header["status"])
            if "indices" in arrays:
                self._put("ranking/indices", row, arrays["indices"], fill=-1)
                self._put("ranking/scores", row, arrays["scores"])
                g = self._f["ranking"]
                if "rois" not in g.attrs:
                    g.attrs["rois"], g.attrs["layers"] = header["rois"], header["layers"]
                self._put_str("ranking/top_labels", row, json.dumps(header["labels"]))
            self._put("volumes/censored", row, np.array(bool(header.get("censored", False))))
            self._put("volumes/tr_s", row, np.array(header.get("tr_s", np.nan), dtype=np.float64))
            self._put("volumes/acq_time_s", row, np.array(header.get("acq_time_s", np.nan), dtype=np.float64))
        elif kind == "motion":
            self._put("motion/params", row, np.asarray(header["params"], dtype=np.float64))
            self._put("motion/fd_mm", row, np.array(header["fd_mm"], dtype=np.float64))
            self._motion[seq] = (header["params"], header["fd_mm"])
        elif kind == "latency":
            stamps = stamps_from_dict(header["stamps"])
            self._put("volumes/stamps", row, stamps, fill=-1)
            # The last message of a volume: write it out now, so that a full disk shows here (HDF5
            # would otherwise fail later, inside its cache, where the error cannot be caught) and
            # a recorder that is killed keeps every volume but the last.
            self._f.flush()
        elif kind == "volume" and self.record_input:
            self._put("input/data", row, arrays["data"])
            self._put("input/affine", row, np.asarray(header["affine"], dtype=np.float64))
            self._put("input/acq_time_s", row, np.array(header["acq_time_s"], dtype=np.float64))

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

    def close(self) -> None:
        """Finish the file and write ``<name>_desc-confounds_timeseries.tsv`` beside it; safe twice."""
        if self.closed:
            return
        self.closed = True
        self._f.attrs["stages"] = [s.name.lower() for s in Stage]
        self._f.create_dataset(
            "status/events", data=np.array(self._events, dtype=object), dtype=h5py.string_dtype()
        )
        self._f.create_dataset(
            "blocks/headers", data=np.array(self._blocks, dtype=object), dtype=h5py.string_dtype()
        )
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


def write_confounds(path: str | Path, motion: Mapping[int, tuple[list[float], float]]) -> None:
    """Write motion as fMRIPrep's confounds: translations in mm, rotations in radians, FD in mm.

    Rows follow the volume index; the first row's framewise displacement is ``n/a`` as in fMRIPrep.
    """
    lines = ["\t".join(CONFOUND_COLUMNS)]
    for i, seq in enumerate(sorted(motion)):
        params, fd = motion[seq]
        values = [*params[:3], *np.deg2rad(params[3:6])]
        cells = [f"{v:.6f}" for v in values] + ["n/a" if i == 0 else f"{fd:.6f}"]
        lines.append("\t".join(cells))
    Path(path).write_text("\n".join(lines) + "\n")
