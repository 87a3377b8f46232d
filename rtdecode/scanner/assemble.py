"""Turning a stream of exported files into complete volumes, whatever the vendor."""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterable
from pathlib import Path

import nibabel as nib
import numpy as np

from rtdecode.errors import VolumeError
from rtdecode.scanner.dicom import (
    is_mosaic,
    is_multiframe,
    read_dicom,
    read_multiframe,
    read_siemens_mosaic,
    read_slice_volume,
    slice_volume_key,
    slices_per_volume,
)
from rtdecode.scanner.readers import NotAnImage, ScanVolume, read_nifti_volume, read_parrec

_IGNORED_SUFFIXES = {".partial", ".tmp", ".part", ".json", ".txt", ".log"}


def _trailing_number(path: Path) -> int | None:
    m = re.search(r"(\d+)$", path.name.split(".")[0])
    return int(m.group(1)) if m else None


class Assembler:
    """Collect exported files and hand out each volume once it is complete.

    Files can arrive in any order; per-slice DICOM series are held until all slices of a volume
    are in. :meth:`add` raises :class:`~rtdecode.errors.VolumeError` for a file that is not
    complete (yet): the caller retries it later and gives up after its own timeout. Datasets
    received over the network go to :meth:`add_dataset`.

    When no header says how many slices a volume has, a series' first volume is taken as whole
    once a slice of a later volume arrives, and its slice count holds for the rest of the series.
    """

    def __init__(self) -> None:
        self._slices: dict[tuple[str, int], dict[str, object]] = {}
        self._learnt: dict[str, int] = {}
        self._counts: dict[str, int] = {}
        self._done: set[Path] = set()
        self._manufacturer: str | None = None

    def add(self, path: str | Path) -> list[ScanVolume]:
        """Take one file; return the volumes it completes (often none, sometimes one)."""
        path = Path(path)
        if path in self._done or path.name.startswith(".") or path.suffix.lower() in _IGNORED_SUFFIXES:
            return []
        name = path.name.lower()
        if name.endswith((".nii", ".nii.gz")):
            number = _trailing_number(path)  # vol_00012.nii: the writer's own volume number
            vol = read_nifti_volume(path, number if number is not None else self._next("nifti"))
        elif name.endswith((".par", ".rec")):
            par = path.with_suffix(".par" if name.endswith(".par") else ".PAR")
            par = par if par.exists() else path.with_suffix(".par")
            rec = [p for p in (par.with_suffix(".rec"), par.with_suffix(".REC")) if p.exists()]
            if not par.exists() or not rec or par in self._done:
                return []
            number = _trailing_number(par)
            vol = read_parrec(par, number if number is not None else self._next("parrec"))
            self._done.update({par, *rec})
            return [vol]
        else:
            if _dicom_head(path) != b"DICM":
                self._done.add(path)  # not an export: a licence, a note, ...
                return []
            try:
                ds = read_dicom(path)
                out = self.add_dataset(ds, path)
            except NotAnImage:
                self._done.add(path)  # complete, and never usable: do not retry it
                raise
            self._done.add(path)
            return out
        self._done.add(path)
        return [vol]

    def add_dataset(self, ds, where: object = "dataset") -> list[ScanVolume]:
        """Take one complete DICOM dataset (from a file or a network push); return what it completes.

        Raises
        ------
        NotAnImage
            If it comes from another scanner than the session's first file.
        """
        self._check_manufacturer(where, ds)
        if is_mosaic(ds):
            return [read_siemens_mosaic(ds, where)]
        if is_multiframe(ds):
            return read_multiframe(ds, where)
        return self._add_slice(ds, where)

    def _check_manufacturer(self, path: object, ds) -> None:
        # One session comes from one scanner: another vendor's file is a stray copy, not a volume.
        maker = str(ds.get("Manufacturer", "")).strip() or None
        if maker is None:
            return
        if self._manufacturer is None:
            self._manufacturer = maker
        elif maker.split()[0].upper() != self._manufacturer.split()[0].upper():
            raise NotAnImage(
                f"{path}: from a {maker} scanner, this session's files come from {self._manufacturer}"
            )

    def _next(self, key: str) -> int:
        self._counts[key] = self._counts.get(key, -1) + 1
        return self._counts[key]

    def _add_slice(self, ds, where: object) -> list[ScanVolume]:
        n = slices_per_volume(ds)
        series, seq = slice_volume_key(ds, n)
        n = n or self._learnt.get(series)
        self._slices.setdefault((series, seq), {})[str(ds.get("SOPInstanceUID", where))] = ds
        if n is None:
            # A volume is whole once the next begins; its slice count then holds for the series.
            earlier = sorted(k for k in self._slices if k[0] == series and k[1] < seq)
            if not earlier:
                return []
            n = self._learnt[series] = len(self._slices[earlier[0]])
            return [self._complete(k) for k in earlier] + self._complete_full(series, n)
        return self._complete_full(series, n)

    def _complete_full(self, series: str, n: int) -> list[ScanVolume]:
        full = sorted(k for k, group in self._slices.items() if k[0] == series and len(group) >= n)
        return [self._complete(k) for k in full]

    def _complete(self, key: tuple[str, int]) -> ScanVolume:
        return read_slice_volume(list(self._slices.pop(key).values()))

    def finish(self) -> list[ScanVolume]:
        """At the end of an export: the last volume of each series whose slice count no header gave."""
        unknown = [
            k
            for k, group in sorted(self._slices.items())
            if k[0] not in self._learnt and slices_per_volume(next(iter(group.values()))) is None
        ]
        return [self._complete(k) for k in unknown]

    @property
    def pending(self) -> dict[tuple[str, int], int]:
        """Volumes still waiting for slices: ``{(series, index): slices so far}``."""
        return {k: len(v) for k, v in self._slices.items()}


def _dicom_head(path: Path) -> bytes:
    """The DICOM magic of a (possibly gzipped) file; raises VolumeError while it is too short."""
    try:
        with gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb") as f:
            head = f.read(132)
    except (OSError, EOFError) as err:  # a gzip stream cut short, or not gzip at all
        raise VolumeError(f"{path}: not readable yet ({type(err).__name__}: {err})") from err
    if len(head) < 132:
        raise VolumeError(f"{path}: only {len(head)} bytes so far")
    return head[128:132]


def read_folder(folder: str | Path) -> list[ScanVolume]:
    """Read every complete volume in an export folder, ordered by series and index.

    Raises
    ------
    VolumeError
        If a file is incomplete or a volume lacks slices.
    """
    asm = Assembler()
    volumes: list[ScanVolume] = []
    for path in sorted(p for p in Path(folder).iterdir() if p.is_file()):
        volumes.extend(asm.add(path))
    volumes.extend(asm.finish())
    if asm.pending:
        raise VolumeError(f"{folder}: volumes with missing slices: {asm.pending}")
    return sorted(volumes, key=lambda v: (v.series, v.seq))


def to_nifti(volumes: Iterable[ScanVolume], out: str | Path) -> nib.Nifti1Image:
    """Stack volumes of one series into a 4-D NIfTI (TR in the header) and save it.

    Raises
    ------
    VolumeError
        If the volumes differ in shape or geometry.
    """
    vols = list(volumes)
    if not vols:
        raise VolumeError("no volumes to convert")
    first = vols[0]
    for v in vols[1:]:
        if v.data.shape != first.data.shape or not np.allclose(v.affine, first.affine, atol=1e-3):
            raise VolumeError(
                f"volume {v.seq} of series {v.series!r} differs in shape or geometry from the first"
            )
    img = nib.Nifti1Image(np.stack([v.data for v in vols], axis=-1), first.affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = first.tr_s
    nib.save(img, str(out))
    return img
