"""Reading recorded sessions: 4-D NIfTI series as :class:`~rtdecode.volume.Volume` objects."""

from __future__ import annotations

import csv
import glob
import json
import re
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np

from rtdecode._typecheck import short
from rtdecode.errors import FileError, VolumeError
from rtdecode.numerics.grid import match_grid, reorient
from rtdecode.volume import Volume


def series_tr_s(img: nib.Nifti1Image) -> float:
    """Repetition time in seconds from a NIfTI header (pixdim[4], honouring xyzt_units)."""
    zooms = img.header.get_zooms()
    if len(zooms) < 4 or zooms[3] <= 0:
        raise VolumeError(f"{img.get_filename()}: no repetition time in the NIfTI header")
    unit = img.header.get_xyzt_units()[1]
    return float(zooms[3]) * {"msec": 1e-3, "usec": 1e-6}.get(unit, 1.0)


def iter_volumes(
    path: str | Path, session: str = "session", series: str = "series", start_time_s: float = 0.0
) -> Iterator[Volume]:
    """Yield the volumes of a 4-D NIfTI file, read lazily (memory-mapped where possible).

    Acquisition times are ``start_time_s + seq * TR``. Slice times come from the BIDS sidecar
    beside it (``NAME.json``'s ``SliceTiming``, seconds per slice along the third axis), if any.
    A BIDS multi-echo series is named by any of its echoes' files (``…_echo-1_bold.nii.gz``):
    its volumes hold every echo along a fourth axis, with the sidecars' ``EchoTime``.

    The data come in C order, as on the wire and as the pipeline's kernels read them (NIfTI stores
    Fortran order): one transposing copy here rather than one in every consumer (0.55 ms for a
    64x64x50 int16 volume, measured when a replay's sender did it for each volume as it sent it).
    """
    echoes = echo_files(path)
    imgs = [nib.load(str(p)) for p, _ in echoes] if echoes else [nib.load(str(path))]
    img = imgs[0]
    if img.ndim != 4 or any(other.shape != img.shape for other in imgs):
        raise VolumeError(f"{path}: expected 4-D images of one shape, got {[i.shape for i in imgs]}")
    tr = series_tr_s(img)
    times = slice_timing(path, img.shape[2])
    te = tuple(t for _, t in echoes) if echoes else None
    for k in range(img.shape[3]):
        data = (
            np.stack([np.asarray(i.dataobj[..., k]) for i in imgs], axis=-1)
            if te
            else np.ascontiguousarray(img.dataobj[..., k])
        )
        yield Volume(
            data,
            img.affine,
            k,
            tr,
            start_time_s + k * tr,
            session,
            series,
            slice_times_s=times,
            echo_times_ms=te,
        )


def session_bold(session_dir: str | Path) -> Path:
    """A session directory's series: ``bold.nii[.gz]``, or its first echo's (``*echo-1_bold.nii*``).

    Raises
    ------
    FileError
        Neither is there.
    """
    d = Path(session_dir)
    found = [*d.glob("bold.nii"), *d.glob("bold.nii.gz"), *sorted(d.glob("*echo-1_bold.nii*"))]
    if not found:
        raise FileError(f"{d}: no bold.nii[.gz] or *echo-1_bold.nii[.gz]")
    return found[0]


def echo_files(path: str | Path) -> list[tuple[Path, float]]:
    """A BIDS multi-echo series' files and echo times (ms), in echo order; [] for one echo.

    Raises
    ------
    VolumeError
        An echo's sidecar has no ``EchoTime``, or the echo times do not increase.
    """
    path = Path(path)
    match = re.fullmatch(r"(.*)echo-\d+(.*)", path.name)
    if match is None:
        return []
    files = sorted(
        path.parent.glob(f"{glob.escape(match[1])}echo-*{glob.escape(match[2])}"),
        key=lambda p: int(re.fullmatch(r".*echo-(\d+).*", p.name)[1]),
    )
    out = []
    for f in files:
        sidecar = f.with_name(f.name.split(".")[0] + ".json")
        try:
            out.append((f, float(json.loads(sidecar.read_text())["EchoTime"]) * 1000))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise VolumeError(f"{f}: no EchoTime in its sidecar {sidecar.name} ({err})") from err
    if len(out) > 1 and any(b[1] <= a[1] for a, b in zip(out, out[1:])):
        raise VolumeError(f"{path}: echo times {[t for _, t in out]} ms do not increase with the echo number")
    return out if len(out) > 1 else []


def slice_timing(path: str | Path, n_slices: int) -> tuple[float, ...] | None:
    """``SliceTiming`` from a NIfTI file's BIDS sidecar (``bold.nii[.gz]`` → ``bold.json``), or None.

    Raises
    ------
    VolumeError
        The sidecar's ``SliceTiming`` is not one number per slice.
    """
    name = Path(path).name.removesuffix(".gz").removesuffix(".nii")
    sidecar = Path(path).with_name(name + ".json")
    if not sidecar.exists():
        return None
    try:
        times = json.loads(sidecar.read_text()).get("SliceTiming")
    except (ValueError, AttributeError) as err:
        raise VolumeError(f"{sidecar}: not a JSON object ({err})") from err
    if times is None:
        return None
    if (
        not isinstance(times, list)
        or len(times) != n_slices
        or not all(isinstance(t, int | float) and not isinstance(t, bool) and t >= 0 for t in times)
    ):
        raise VolumeError(
            f"{sidecar}: SliceTiming must be {n_slices} numbers >= 0 (seconds), got {short(times)}"
        )
    return tuple(float(t) for t in times)


def load_volume(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Load a 3-D image (or the first volume of a 4-D one) as (float32 array, affine).

    Raises
    ------
    FileError
        If the file cannot be read as NIfTI.
    """
    try:
        img = nib.load(str(path))
    except (OSError, nib.filebasedimages.ImageFileError) as err:
        raise FileError(f"cannot read image {str(path)!r}: {err}") from err
    data = np.asarray(img.dataobj[..., 0] if img.ndim == 4 else img.dataobj, dtype=np.float32)
    return data, img.affine


def load_mask(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Load a mask image as (bool array, affine).

    Raises
    ------
    FileError
        Not a readable image.
    """
    try:
        img = nib.load(str(path))
        return np.asarray(img.dataobj) > 0, img.affine
    except Exception as err:  # nibabel raises many kinds for a missing, truncated or foreign file
        raise FileError(f"{path}: not a readable mask image ({err})") from err


def load_mask_on_grid(path: str | Path, affine: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    """Load a mask on the grid (``affine``, ``shape``); one in another voxel order is reoriented.

    Raises
    ------
    VolumeError
        The mask lies on another grid (both affines named, ``what`` says which mask).
    """
    data, mask_affine = load_mask(path)
    ornt = match_grid(mask_affine, data.shape, affine, shape, what)
    return data if ornt is None else reorient(data, ornt)


def read_events(path: str | Path) -> list[dict[str, str]]:
    """Read a BIDS ``events.tsv`` as a list of row dicts."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))
