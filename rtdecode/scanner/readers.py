"""A volume read from scanner files, and the readers of the non-DICOM exports.

* Philips: one PAR/REC pair per volume (``nibabel.parrec``); the first image type is used.
* NIfTI: one 3-D file per volume.

DICOM exports (Siemens mosaic and XA, GE, enhanced multi-frame) are read in
:mod:`rtdecode.scanner.dicom`. Every affine is RAS+ (NIfTI's, nibabel's).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from rtdecode.errors import VolumeError


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
        When the scanner started acquiring the volume, by the scanner's clock (Unix seconds), when
        the header has it.
    created_time_s : float or None
        When the scanner created the image (DICOM ContentTime), by the same clock: its
        reconstruction finished.
    slice_times_s : tuple of float or None
        When each slice along the third axis was acquired, seconds after the first (Siemens
        MosaicRefAcqTimes, or the frames' acquisition times of an enhanced image); None unknown.
    """

    data: np.ndarray
    affine: np.ndarray
    series: str
    seq: int
    tr_s: float
    acq_time_s: float | None
    created_time_s: float | None = None
    slice_times_s: tuple[float, ...] | None = None


class NotAnImage(VolumeError):
    """A complete scanner file that holds no usable image (a report, another vendor's file): skip it."""


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
