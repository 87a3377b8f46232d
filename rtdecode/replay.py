"""Replaying recorded sessions as a scanner would: over ZeroMQ, or as files into a watched folder.

Every replay paces against absolute target times (volume ``k`` is due ``k * TR / speed`` seconds
after the first), so a late volume does not delay the ones after it.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np

from rtdecode.errors import VolumeError
from rtdecode.nifti import iter_volumes
from rtdecode.scanner.readers import is_mosaic, read_dicom, volume_index_of_slice
from rtdecode.transport.zmq import VolumeSender
from rtdecode.volume import Stage, Volume


def paced(items: Iterable, tr_s: float, speed: float) -> Iterator[tuple[int, float]]:
    """Yield ``(k, offset_s)`` for each item when it is due; ``speed=inf`` does not wait."""
    t0 = time.monotonic()
    for k, _ in enumerate(items):
        offset = k * tr_s / speed
        wait = t0 + offset - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        yield k, offset


def send_volumes(volumes: Iterable[Volume], address: str, speed: float) -> int:
    """Send volumes over ZeroMQ at ``speed`` x their TR, then an end-of-series; return the count."""
    n, last = 0, None
    with VolumeSender(address) as tx:
        t0, wall0 = time.monotonic_ns(), time.time()
        for vol in volumes:
            offset = vol.seq * vol.tr_s / speed
            due = t0 + int(offset * 1e9)
            wait = (due - time.monotonic_ns()) / 1e9
            if wait > 0:
                time.sleep(wait)
            vol.acq_time_s = wall0 + offset
            vol.stamps[Stage.ACQUIRED] = due
            tx.send(vol)
            n, last = n + 1, vol
        if last is not None:
            tx.send_end(last.session, last.series, n)
    return n


def recording_volumes(path: str | Path, session: str = "replay", series: str = "run-01") -> Iterator[Volume]:
    """The input volumes stored in an rtdecode recording (``input/*``)."""
    with h5py.File(path, "r") as f:
        if "input/data" not in f:
            raise VolumeError(f"{path}: the recording holds no input volumes (record with --record-input)")
        data, affine, acq = f["input/data"], f["input/affine"], f["input/acq_time_s"]
        tr = float(np.median(np.diff(acq[:]))) if len(acq) > 1 else 1.0
        for k in range(data.shape[0]):
            yield Volume(data[k], affine[k], k, tr, float(acq[k]), session, series)


def volume_file_groups(folder: str | Path) -> list[list[Path]]:
    """The files of an export folder grouped by volume, in acquisition order.

    Siemens mosaics and NIfTI files are one file per volume, Philips PAR/REC two, GE one per slice
    (grouped by instance number and slices per volume).
    """
    groups: dict[tuple, list[Path]] = {}
    for p in sorted(Path(folder).iterdir()):
        name = p.name.lower()
        if not p.is_file() or name.startswith(".") or name in ("license", "readme.md"):
            continue
        if name.endswith((".nii", ".nii.gz")):
            groups[("nifti", p.name)] = [p]
        elif name.endswith((".par", ".rec")):
            groups.setdefault(("parrec", p.stem), []).append(p)
        elif name.endswith(".partial"):
            continue
        else:
            ds = read_dicom(p)
            key = (
                "dicom",
                int(ds.get("SeriesNumber") or 0),
                p.name if is_mosaic(ds) else volume_index_of_slice(ds),
            )
            groups.setdefault(key, []).append(p)
    # A PAR header is copied after its REC, so the pair is complete when the header appears.
    return [sorted(g, key=lambda p: p.suffix.lower() == ".par") for _, g in sorted(groups.items())]


def replay_folder(src: str | Path, dst: str | Path, tr_s: float, speed: float = 1.0) -> int:
    """Copy an export folder's files into ``dst`` volume by volume at ``speed`` x TR; return volumes."""
    groups = volume_file_groups(src)
    for k, _ in paced(groups, tr_s, speed):
        for p in groups[k]:
            shutil.copyfile(p, Path(dst) / p.name)
    return len(groups)


def replay_nifti_to_folder(bold: str | Path, dst: str | Path, speed: float = 1.0) -> int:
    """Write each volume of a 4-D NIfTI as a 3-D NIfTI file into ``dst`` at ``speed`` x TR."""
    vols = list(iter_volumes(bold))
    for k, _ in paced(vols, vols[0].tr_s if vols else 0.0, speed):
        v = vols[k]
        img = nib.Nifti1Image(v.data, v.affine)
        img.header.set_xyzt_units("mm", "sec")
        img.header.set_zooms((*img.header.get_zooms()[:3],))
        tmp = Path(dst) / f".vol_{k:05d}.nii"
        nib.save(img, tmp)
        tmp.rename(Path(dst) / f"vol_{k:05d}.nii")  # appear whole, as most exporters do
    return len(vols)
