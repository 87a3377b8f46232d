"""HDF5 files read as far as they are intact: a recording cut short by a full disk or a copy.

HDF5 refuses a file shorter than the end its superblock records. Most of a recording is still
there: the recorder creates its groups first and its small per-volume datasets live in chunks
near the start, rewritten in place at every volume. :func:`open_hdf5` opens such a file with
the missing tail read as zeros, and :class:`Intact` reads only the rows whose bytes survive,
so nothing read from the zeros is ever taken for data: corrupt metadata raises inside HDF5 and
is noted as lost, chunk addresses past the cut end the rows a dataset gives.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

# What HDF5 says when the file is shorter than its superblock's end of file.
_TRUNCATED = re.compile(r"truncated file: eof = (\d+).*stored_eof = (\d+)")
# A variable-length element as stored in a chunk: its length and global heap ID (HDF5 format
# spec III.E, 8-byte offsets as h5py writes them), and the start of a global heap collection.
_HEAP_ID = np.dtype([("length", "<u4"), ("collection", "<u8"), ("index", "<u4")])
_COLLECTION = np.dtype([("signature", "S4"), ("version", "u1"), ("reserved", "S3"), ("size", "<u8")])


class _ZeroTail(io.RawIOBase):
    """A read-only file whose bytes between its real end and ``size`` read as zeros."""

    def __init__(self, path: Path, size: int) -> None:
        self._f = open(path, "rb")  # noqa: SIM115 - closed with this object
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buf) -> int:
        view = memoryview(buf).cast("B")
        n = min(len(view), max(self._size - self._pos, 0))
        self._f.seek(self._pos)
        got = self._f.readinto(view[:n]) or 0
        view[got:n] = bytes(n - got)
        self._pos += n
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


@dataclass
class Intact:
    """Which bytes of an HDF5 file survive, and what could not be read.

    Attributes
    ----------
    size, stored_size : int or None
        The bytes on disk and the bytes the file should hold; None when it is whole.
    lost : list of str
        Objects and rows that lie past the cut, in the words of a warning.
    """

    size: int | None = None
    stored_size: int | None = None
    lost: list[str] = field(default_factory=list)
    path: Path | None = None

    @property
    def truncated(self) -> bool:
        """Whether the file was cut short."""
        return self.size is not None

    def get(self, group: h5py.Group, name: str) -> h5py.Group | h5py.Dataset | None:
        """``group[name]``, or None when it is absent or its header lies past the cut."""
        try:
            return group[name] if name in group else None
        except (KeyError, RuntimeError, OSError, ValueError):
            if not self.truncated:
                raise
            self.lost.append(f"{group.name.rstrip('/')}/{name} (its header)".lstrip("/"))
            return None

    def keys(self, group: h5py.Group | None) -> list[str]:
        """The names in a group that can be opened."""
        if group is None:
            return []
        try:
            names = list(group)
        except (RuntimeError, OSError):
            if not self.truncated:
                raise
            self.lost.append(f"{group.name} (its index)")
            return []
        return [n for n in names if self.get(group, n) is not None]

    def rows(self, ds: h5py.Dataset) -> int:
        """How many leading rows of ``ds`` lie wholly in the surviving bytes."""
        if not self.truncated:
            return ds.shape[0]
        try:
            if ds.chunks is None:
                end = (ds.id.get_offset() or 0) + ds.id.get_storage_size()
                return ds.shape[0] if end <= self.size else 0
            n = ds.shape[0]
            for i in range(ds.id.get_num_chunks()):
                info = ds.id.get_chunk_info(i)
                if info.byte_offset is not None and info.byte_offset + info.size > self.size:
                    n = min(n, info.chunk_offset[0])
            return n
        except (RuntimeError, OSError):  # the chunk index itself lies past the cut
            return 0

    def strings(self, group: h5py.Group, name: str) -> np.ndarray | None:
        """The intact leading rows of a string dataset, or None."""
        ds = self.get(group, name)
        if ds is None:
            return None
        n = self._heap_rows(ds) if self.truncated else ds.shape[0]
        self._note_rows(ds, n)
        return ds.asstr()[:n]

    def _heap_rows(self, ds: h5py.Dataset) -> int:
        # Strings live in global heap collections written at their own time, and HDF5 does not
        # stop on a zeroed collection (it loops): so read the heap IDs from the chunks and keep
        # the leading rows whose collections lie wholly in the surviving bytes.
        rows = self.rows(ds)
        whole: dict[int, bool] = {}
        if not rows:  # also where the chunk index itself is cut
            return 0
        with open(self.path, "rb") as raw:
            for i in range(ds.id.get_num_chunks()):
                start = ds.id.get_chunk_info(i).chunk_offset[0]
                if start >= rows:
                    continue
                ids = np.frombuffer(ds.id.read_direct_chunk((start,))[1], _HEAP_ID)[: rows - start]
                for k, heap_id in enumerate(ids):
                    at = int(heap_id["collection"])
                    if heap_id["length"] and at not in whole:
                        raw.seek(at)
                        head = np.frombuffer(
                            raw.read(_COLLECTION.itemsize).ljust(_COLLECTION.itemsize, b"\0"), _COLLECTION
                        )[0]
                        whole[at] = head["signature"] == b"GCOL" and at + int(head["size"]) <= self.size
                    if heap_id["length"] and not whole[at]:
                        rows = start + k
                        break
        return rows

    def _note_rows(self, ds: h5py.Dataset, n: int) -> None:
        if n < ds.shape[0]:
            self.lost.append(f"{ds.name.lstrip('/')}: rows {n} to {ds.shape[0] - 1}")


@contextmanager
def open_hdf5(path: str | Path) -> Iterator[tuple[h5py.File, Intact]]:
    """Open an HDF5 file to read, whole or truncated (a context manager).

    Yields
    ------
    h5py.File, Intact
        The file and what of it survives (:class:`Intact` with ``truncated`` False when whole).

    Raises
    ------
    OSError
        The file is not HDF5, or too little of it is left to open.
    """
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        cut = _TRUNCATED.search(str(err))
        if not cut:
            raise
        size, stored = int(cut[1]), int(cut[2])
        tail = _ZeroTail(Path(path), stored)
        try:
            f = h5py.File(tail, "r")
            dict(f.attrs)  # the root's header: without it nothing can be named
        except (OSError, RuntimeError, KeyError) as inner:
            tail.close()
            raise OSError(f"truncated file: eof = {size}, stored_eof = {stored}: {inner}") from err
        with tail, f:
            yield f, Intact(size, stored, path=Path(path))
        return
    with f:
        yield f, Intact()
