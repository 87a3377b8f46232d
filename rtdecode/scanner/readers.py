"""Reading scanner exports into volumes with RAS+ affines, through nibabel and pydicom.

* Siemens: one DICOM mosaic per volume (slice count and order from the CSA header, via
  ``nibabel.nicom``).
* GE: one DICOM per slice; ``ImagesInAcquisition`` (or GE's "locations in acquisition") slices
  make a volume, ordered along the slice normal.
* Philips: one PAR/REC pair per volume (``nibabel.parrec``); the first image type is used.
* NIfTI: one 3-D file per volume.

DICOM geometry is DICOM's LPS; every affine returned here is RAS+ (NIfTI's, nibabel's).
"""

from __future__ import annotations

import datetime as dt
import warnings
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from rtdecode.errors import VolumeError

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_GE_LOCATIONS = (0x0021, 0x104F)


@dataclass
class ScanVolume:
    """A volume read from scanner files.

    Parameters
    ----------
    data : numpy.ndarray
        Shape (nx, ny, nz).
    affine : numpy.ndarray
        Shape (4, 4), voxel to RAS+ mm.
    series : str
        Series identifier from the header (series number).
    seq : int
        Volume index within the series, from 0 (as a volume's ``seq`` on the wire).
    tr_s : float
        Repetition time, seconds (0 when the header has none).
    acq_time_s : float or None
        Acquisition time, Unix seconds, when the header has one.
    """

    data: np.ndarray
    affine: np.ndarray
    series: str
    seq: int
    tr_s: float
    acq_time_s: float | None


def _nicom():
    # nibabel warns on import that its DICOM readers are experimental; we test ours against dcm2niix.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The DICOM readers are highly experimental")
        from nibabel.nicom import dicomwrappers

    return dicomwrappers


def dicom_time(date: str | None, time_str: str | None) -> float | None:
    """Unix seconds from DICOM DA (YYYYMMDD) and TM (HHMMSS.frac) strings, local time; None if absent."""
    if not date or not time_str:
        return None
    t = str(time_str).strip()
    try:
        day = dt.datetime.strptime(str(date).strip(), "%Y%m%d")
        seconds = int(t[0:2]) * 3600 + int(t[2:4]) * 60 + float(t[4:] or 0)
    except ValueError:
        return None
    return (day + dt.timedelta(seconds=seconds)).timestamp()


def read_dicom(path: str | Path):
    """Read one DICOM file completely (pixels included).

    Raises
    ------
    VolumeError
        If the file is not (yet) a complete DICOM file.
    """
    import pydicom

    try:
        ds = pydicom.dcmread(str(path))
    except Exception as err:  # pydicom raises many types for a truncated file
        raise VolumeError(f"{path}: not a complete DICOM file ({type(err).__name__}: {err})") from err
    if "PixelData" not in ds:
        raise NotAnImage(
            f"{path}: a DICOM file without an image ({ds.get('SOPClassUID', 'unknown SOP class')}); ignored"
        )
    try:
        ds.pixel_array  # noqa: B018 - forces the pixel data to be read and checked for length
    except Exception as err:
        raise VolumeError(f"{path}: not a complete DICOM file ({type(err).__name__}: {err})") from err
    return ds


class NotAnImage(VolumeError):
    """A complete scanner file that holds no usable image (a report, another vendor's file): skip it."""


def is_mosaic(ds) -> bool:
    """True for a Siemens mosaic image."""
    return "MOSAIC" in [str(v).upper() for v in (ds.get("ImageType") or [])]


def read_siemens_mosaic(path: str | Path, ds=None) -> ScanVolume:
    """Read a Siemens mosaic DICOM file as one volume."""
    ds = ds if ds is not None else read_dicom(path)
    w = _nicom().wrapper_from_data(ds)
    try:
        data = w.get_data()
        affine = _LPS_TO_RAS @ w.affine
    except Exception as err:
        raise VolumeError(f"{path}: cannot unpack the mosaic ({type(err).__name__}: {err})") from err
    index = int(ds.get("AcquisitionNumber") or ds.get("InstanceNumber") or 1) - 1
    return ScanVolume(
        data,
        affine,
        str(ds.get("SeriesNumber", "")),
        index,
        _tr(ds),
        dicom_time(ds.get("AcquisitionDate") or ds.get("ContentDate"), ds.get("AcquisitionTime")),
    )


def _tr(ds) -> float:
    tr = ds.get("RepetitionTime")
    return float(tr) / 1000.0 if tr not in (None, "") else 0.0


def slices_per_volume(ds) -> int:
    """Slices per volume of a per-slice DICOM series (GE)."""
    for value in (
        ds.get("ImagesInAcquisition"),
        ds.get(_GE_LOCATIONS).value if _GE_LOCATIONS in ds else None,
    ):
        if value not in (None, "") and int(value) > 0:
            return int(value)
    raise VolumeError("per-slice DICOM without ImagesInAcquisition: cannot tell the slices per volume")


def volume_index_of_slice(ds) -> int:
    """Volume index (from 0) of a per-slice DICOM image, from its instance number."""
    return (int(ds.InstanceNumber) - 1) // slices_per_volume(ds)


def read_slice_volume(datasets: list) -> ScanVolume:
    """Assemble one volume from the per-slice DICOM datasets of one volume (any order)."""
    nicom = _nicom()
    wrappers = [nicom.wrapper_from_data(ds) for ds in datasets]
    normal = np.asarray(wrappers[0].slice_normal)
    positions = np.array(
        [np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=float)) for ds in datasets]
    )
    order = np.argsort(positions)
    if np.any(np.diff(positions[order]) <= 1e-3):
        raise VolumeError("two slices of one volume share a position")
    data = np.stack([wrappers[i].get_data() for i in order], axis=2)
    affine = wrappers[order[0]].affine.copy()
    if len(order) > 1:
        first = np.asarray(datasets[order[0]].ImagePositionPatient, dtype=float)
        last = np.asarray(datasets[order[-1]].ImagePositionPatient, dtype=float)
        affine[:3, 2] = (last - first) / (len(order) - 1)
    ds = datasets[order[0]]
    return ScanVolume(
        data,
        _LPS_TO_RAS @ affine,
        str(ds.get("SeriesNumber", "")),
        volume_index_of_slice(ds),
        _tr(ds),
        dicom_time(ds.get("AcquisitionDate") or ds.get("ContentDate"), ds.get("AcquisitionTime")),
    )


def read_parrec(par_path: str | Path, seq: int = 0) -> ScanVolume:
    """Read a Philips PAR/REC pair as one volume.

    XTC exports hold two image types per pair (magnitude and phase); the magnitude (the first
    type whose values are all non-negative) is kept.

    Raises
    ------
    VolumeError
        If the header or the REC file is incomplete.
    """
    from nibabel.parrec import PARRECImage

    par = Path(par_path)
    rec = next((p for p in (par.with_suffix(".rec"), par.with_suffix(".REC")) if p.exists()), None)
    if rec is None:
        raise VolumeError(f"{par}: no REC file beside it")
    try:
        # Our own file objects: nibabel's PAR/REC loader leaves the REC file open otherwise.
        with open(par) as fh, open(rec, "rb") as fr:
            img = PARRECImage.from_file_map(
                PARRECImage.make_file_map({"header": fh, "image": fr}), strict_sort=True, mmap=False
            )
            data = np.asarray(img.dataobj)
            affine, info = img.affine, img.header.general_info
    except Exception as err:
        raise VolumeError(f"{par}: not a complete PAR/REC pair ({type(err).__name__}: {err})") from err
    if data.ndim == 4:
        frames = [data[..., k] for k in range(data.shape[3])]
        data = next((f for f in frames if f.min() >= 0), frames[0])
    tr_ms = np.atleast_1d(info.get("repetition_time", [0.0]))[0]
    return ScanVolume(data, affine, str(info.get("acq_nr", "")), seq, float(tr_ms) / 1000.0, None)


def read_nifti_volume(path: str | Path, seq: int = 0) -> ScanVolume:
    """Read a 3-D NIfTI file as one volume."""
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except Exception as err:
        raise VolumeError(f"{path}: not a complete NIfTI file ({type(err).__name__}: {err})") from err
    if data.ndim != 3:
        raise VolumeError(f"{path}: expected a 3-D volume, got shape {data.shape}")
    # The TR is pixdim[4] (a 3-D file keeps it there when its writer put it, as rtdecode replay
    # does), in the header's time unit; with no unit it is nibabel's default 1, not a TR.
    scale = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}.get(img.header.get_xyzt_units()[1], 0.0)
    tr = float(img.header["pixdim"][4]) * scale
    return ScanVolume(data, img.affine, "nifti", seq, tr if tr > 0 else 0.0, None)
