"""The writer of a session's HDF5 recording; the reader is :class:`rtdecode.io.recording.Recording`.

The :class:`Recorder` is a sink with the same ``publish(message)`` method as the ZeroMQ
publisher, so the live recorder (fed by a subscriber) and ``rtdecode offline`` (fed by the
session directly) write the same file, plus a BIDS-style confounds TSV beside it. The layout is
in ``docs/formats.md``.
"""

from __future__ import annotations

import datetime
import json
import sys
import time
from pathlib import Path

import h5py
import numpy as np

from rtdecode import __version__
from rtdecode.io.confounds import write_confounds
from rtdecode.io.recording import RECORDING_FORMAT, RECORDING_VERSION
from rtdecode.volume import Stage, stamps_from_dict
from rtdecode.wire import messages as m


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
    flush_s : float
        Write out at the end of a volume once this long has passed since the last write: 0 (live)
        writes every volume as it ends; ``rtdecode offline``, at many volumes a second, writes
        once a few seconds, so a killed run loses the volumes since then.

    Attributes
    ----------
    n_volumes : int
        Volumes written to the file so far.
    """

    def __init__(
        self, path: str | Path, record_input: bool = False, meta: dict | None = None, flush_s: float = 0.0
    ) -> None:
        self.path = Path(path)
        self.record_input = record_input
        self.flush_s = flush_s
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
        self._datasets: dict[str, h5py.Dataset] = {}
        for name in ("status/events", "blocks/headers"):
            self._datasets[name] = self._f.create_dataset(
                name, shape=(0,), maxshape=(None,), dtype=h5py.string_dtype()
            )
        # Rows wait here until a volume ends: then each dataset is grown and written once per run
        # of rows, which costs a fraction of a write per row (a volume has ~100 rows to file).
        self._pending: dict[str, dict[int, np.ndarray | str]] = {}
        self._attrs: dict[str, dict] = {}  # object -> attributes, written (once) at the next flush
        self._qa_rois: list[str] | None = None  # the columns of qa/tsnr, from the first qa message
        self._rows: dict[int, int] = {}
        self._motion: dict[int, tuple[list[float], float]] = {}
        self._flushed_at = -np.inf
        self.n_volumes = 0
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
            self._put("volumes/status", row, msg.status)
            if msg.indices is not None:
                self._put("ranking/indices", row, msg.indices)
                self._put("ranking/scores", row, msg.scores)
                self._attrs.setdefault("ranking", {"rois": msg.rois, "layers": msg.layers})
                self._put("ranking/top_labels", row, json.dumps(msg.labels))
            self._put("volumes/censored", row, np.array(msg.censored))
            self._put("volumes/tr_s", row, np.array(msg.tr_s, dtype=np.float64))
            self._put("volumes/acq_time_s", row, np.array(msg.acq_time_s, dtype=np.float64))
        elif isinstance(msg, m.Qa):
            self._put_qa(row, msg)
        elif isinstance(msg, m.Motion):
            self._put("motion/params", row, np.asarray(msg.params, dtype=np.float64))
            self._attrs.setdefault("motion/params", {"fd_threshold_mm": msg.fd_threshold_mm})
            self._put("motion/fd_mm", row, np.array(msg.fd_mm, dtype=np.float64))
            self._motion[msg.seq] = (msg.params, msg.fd_mm)
        else:
            self._put("volumes/stamps", row, stamps_from_dict(msg.stamps))
            if msg.acquired_from:
                self._put("volumes/acquired_from", row, msg.acquired_from)
            # The last message of a volume: write out what waits (every volume with flush_s 0),
            # so that a full disk shows here (HDF5 would otherwise fail later, inside its cache,
            # where the error cannot be caught) and a recorder that is killed keeps every volume
            # written before the last flush.
            if time.monotonic() - self._flushed_at >= self.flush_s:
                self._flush()

    def _put_qa(self, row: int, msg: m.Qa) -> None:
        if self._qa_rois is None:
            self._qa_rois = list(msg.tsnr)
            self._attrs["qa"] = {"rois": self._qa_rois, "fd_levels_mm": [float(k) for k in msg.frames_under]}
        for name in ("dvars_pct", "global_signal", "clean_minutes"):
            value = getattr(msg, name)
            self._put(f"qa/{name}", row, np.array(np.nan if value is None else value, np.float64))
        self._put("qa/spikes", row, np.array(-1 if msg.spikes is None else msg.spikes, np.int64))
        tsnr = [msg.tsnr.get(roi) for roi in self._qa_rois]
        self._put("qa/tsnr", row, np.array([np.nan if v is None else v for v in tsnr], np.float64))

    def _row(self, seq: int) -> int:
        row = self._rows.get(seq)
        if row is None:
            row = self._rows[seq] = len(self._rows)
            self._put("volumes/seq", row, np.array(seq, dtype=np.int64))
        return row

    def _put(self, name: str, row: int, value: np.ndarray | str) -> None:
        """File ``value`` (an array, or a string) as row ``row`` of dataset ``name`` at the next flush.

        Arrays are copied: the sender may reuse their memory before the flush.
        """
        self._pending.setdefault(name, {})[row] = value if isinstance(value, str) else np.array(value)

    def _append_str(self, name: str, value: str) -> None:
        # The status and block datasets exist from the start: the next row follows what they
        # hold and what waits.
        self._put(name, self._datasets[name].shape[0] + len(self._pending.get(name, ())), value)

    def _dataset(self, name: str, example: np.ndarray | str) -> h5py.Dataset:
        if name in self._datasets:
            return self._datasets[name]
        if isinstance(example, str):
            ds = self._f.create_dataset(name, shape=(0,), maxshape=(None,), dtype=h5py.string_dtype())
        else:
            # Rows never written read as NaN (floats) or -1 (integers: indices, stamps).
            fillvalue = {"f": np.nan, "i": -1, "u": -1}.get(example.dtype.kind)
            ds = self._f.create_dataset(
                name,
                shape=(0, *example.shape),
                maxshape=(None, *example.shape),
                dtype=example.dtype,
                chunks=(max(1, 2**16 // max(example.nbytes, 1)), *example.shape),
                fillvalue=fillvalue,
            )
        self._datasets[name] = ds
        return ds

    def _flush(self) -> None:
        # Smallest rows first: a file cut short (a full disk, a copy) then keeps every volume's
        # results in front of the bulky input volumes written with them.
        for name, rows in sorted(self._pending.items(), key=lambda item: _row_bytes(item[1])):
            order = sorted(rows)
            ds = self._dataset(name, rows[order[0]])
            if ds.shape[0] <= order[-1]:
                ds.resize(order[-1] + 1, axis=0)
            cuts = [0, *(np.flatnonzero(np.diff(order) != 1) + 1).tolist(), len(order)]
            for a, b in zip(cuts[:-1], cuts[1:]):  # one write per run of consecutive rows
                values = [rows[r] for r in order[a:b]]
                ds[order[a] : order[b - 1] + 1] = (
                    np.array(values, dtype=object) if isinstance(values[0], str) else np.stack(values)
                )
        self._pending.clear()
        for name, attrs in self._attrs.items():
            if attrs:  # emptied once written
                self._f[name].attrs.update(attrs)
                attrs.clear()
        self._f.flush()
        self._flushed_at = time.monotonic()
        self.n_volumes = len(self._rows)

    def close(self) -> None:
        """Finish the file and write ``<name>_desc-confounds_timeseries.tsv`` beside it; safe twice."""
        if self.closed:
            return
        self._flush()
        self.closed = True
        self._f.close()
        if self._motion:
            write_confounds(self.confounds_path, self._motion)

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


def _row_bytes(rows: dict[int, np.ndarray | str]) -> int:
    row = next(iter(rows.values()))
    return 0 if isinstance(row, str) else row.nbytes
