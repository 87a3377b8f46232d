"""DICOM scanner files as volumes, through pydicom and ``nibabel.nicom``.

* Siemens up to software VE: one mosaic per volume (slice count and order from the CSA header).
* Enhanced multi-frame MR (Siemens XA, Philips): one file holds a volume, or several; frames are
  placed by their per-frame functional groups, and each volume's time is its first frame's.
* Per-slice images: GE (``ImagesInAcquisition`` slices make a volume, counted by instance number)
  and Siemens XA interoperability export (volume = AcquisitionNumber; the slice count from the
  protocol the scanner embeds in every file, else learnt from the first volume by
  :class:`~rtdecode.scanner.assemble.Assembler`).

On interoperability export, Siemens XA gives each volume its own series number,
``1000 × series + volume``; :func:`series_of` undoes it so a run stays one series. Files may be
gzipped (``.dcm.gz``). DICOM geometry is LPS; every affine returned here is RAS+.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import re
import warnings
from pathlib import Path

import numpy as np

from rtdecode.errors import VolumeError
from rtdecode.scanner.readers import NotAnImage, ScanVolume

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_SLICES_IN_PROTOCOL = re.compile(rb"^\s*sSliceArray\.lSize\s*=\s*(\d+)", re.M)


def _nicom():
    # nibabel warns on import that its DICOM readers are experimental; we test ours against dcm2niix.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The DICOM readers are highly experimental")
        from nibabel.nicom import csareader, dicomwrappers

    return dicomwrappers, csareader


def _pixels(wrapper) -> np.ndarray:
    with warnings.catch_warnings():
        # Philips scale factors matter across series only; a volume is compared within its series.
        warnings.filterwarnings("ignore", message="Unable to find Philips private scale factor")
        return wrapper.get_data()


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


def dicom_datetime(value: str | None) -> float | None:
    """Unix seconds from a DICOM DT (YYYYMMDDHHMMSS.frac, any UTC offset ignored); None if absent."""
    if not value:
        return None
    text = re.split(r"[+-]", str(value).strip())[0]
    return dicom_time(text[:8], text[8:] or None)


def acquisition_time(ds) -> float | None:
    """When the scanner started acquiring this image, by its own clock (Unix seconds), if recorded."""
    return dicom_datetime(ds.get("AcquisitionDateTime")) or dicom_time(
        ds.get("AcquisitionDate") or ds.get("ContentDate") or ds.get("SeriesDate"), ds.get("AcquisitionTime")
    )


def creation_time(ds) -> float | None:
    """When the scanner created this image (ContentDate/Time), by its own clock, if recorded."""
    return dicom_time(ds.get("ContentDate") or ds.get("AcquisitionDate"), ds.get("ContentTime"))


def read_dicom(path: str | Path):
    """Read one DICOM file (plain or gzipped) completely, pixels included.

    Raises
    ------
    VolumeError
        If the file is not (yet) a complete DICOM file.
    NotAnImage
        If it is complete but holds no image.
    """
    import pydicom

    try:
        if str(path).lower().endswith(".gz"):
            with gzip.open(path, "rb") as f:
                ds = pydicom.dcmread(io.BytesIO(f.read()))
        else:
            ds = pydicom.dcmread(str(path))
    except Exception as err:  # pydicom and gzip raise many types for a truncated file
        raise VolumeError(f"{path}: not a complete DICOM file ({type(err).__name__}: {err})") from err
    return check_image(ds, path)


def check_image(ds, where: object):
    """Return ``ds`` if it holds a complete image.

    Raises
    ------
    NotAnImage
        If it has no pixel data (a report, a presentation state).
    VolumeError
        If its pixel data are shorter than its header says.
    """
    if "PixelData" not in ds:
        raise NotAnImage(
            f"{where}: a DICOM file without an image ({ds.get('SOPClassUID', 'unknown SOP class')}); ignored"
        )
    try:
        ds.pixel_array  # noqa: B018 - forces the pixel data to be read and checked for length
    except Exception as err:
        raise VolumeError(f"{where}: not a complete DICOM file ({type(err).__name__}: {err})") from err
    return ds


def _tr(ds) -> float:
    tr = ds.get("RepetitionTime")
    if tr in (None, "") and "SharedFunctionalGroupsSequence" in ds:
        timing = ds.SharedFunctionalGroupsSequence[0].get("MRTimingAndRelatedParametersSequence")
        tr = timing[0].get("RepetitionTime") if timing else None
    return float(tr) / 1000.0 if tr not in (None, "") else 0.0


def _is_siemens(ds) -> bool:
    return str(ds.get("Manufacturer", "")).upper().startswith("SIEMENS")


def series_of(ds, volume_number: int) -> str:
    """The series a Siemens or other image belongs to, from its SeriesNumber.

    On interoperability export Siemens XA numbers each volume's series ``1000 × series +
    volume``; such a number (over 1000, ending in the volume number) names series ``// 1000``.
    """
    raw = ds.get("SeriesNumber")
    if raw in (None, ""):
        return ""
    number = int(raw)
    if _is_siemens(ds) and number > 1000 and number % 1000 == volume_number % 1000:
        return str(number // 1000)
    return str(number)


def is_mosaic(ds) -> bool:
    """True for a Siemens mosaic image."""
    return "MOSAIC" in [str(v).upper() for v in (ds.get("ImageType") or [])]


def is_multiframe(ds) -> bool:
    """True for an enhanced (multi-frame) image: frames described by per-frame functional groups."""
    return "PerFrameFunctionalGroupsSequence" in ds


def read_siemens_mosaic(ds, where: object = "mosaic") -> ScanVolume:
    """Read a Siemens mosaic DICOM dataset as one volume."""
    w = _nicom()[0].wrapper_from_data(ds)
    try:
        data = w.get_data()
        affine = _LPS_TO_RAS @ w.affine
    except Exception as err:
        raise VolumeError(f"{where}: cannot unpack the mosaic ({type(err).__name__}: {err})") from err
    number = int(ds.get("AcquisitionNumber") or ds.get("InstanceNumber") or 1)
    return ScanVolume(
        data, affine, series_of(ds, number), number - 1, _tr(ds), acquisition_time(ds), creation_time(ds),
        _mosaic_slice_times(ds, data.shape[2]),
    )  # fmt: skip


def _mosaic_slice_times(ds, n_slices: int) -> tuple[float, ...] | None:
    # The CSA image header's MosaicRefAcqTimes: ms after the volume began, in the mosaic's slice
    # order, which nibabel keeps along the third axis (multiband: equal times repeat).
    try:
        times = _nicom()[1].get_csa_header(ds, "image")["tags"]["MosaicRefAcqTimes"]["items"]
    except (KeyError, IndexError, TypeError, ValueError, _nicom()[1].CSAReadError):
        return None
    return _slice_times([float(t) / 1000 for t in times], n_slices)


def _slice_times(times: list[float], n_slices: int) -> tuple[float, ...] | None:
    # A header that does not describe every slice is not used.
    if len(times) != n_slices or not all(np.isfinite(times)):
        return None
    first = min(times)
    return tuple(float(t - first) for t in times)


def read_multiframe(ds, where: object = "multi-frame image") -> list[ScanVolume]:
    """Read an enhanced multi-frame MR dataset as its volumes (usually one).

    Frames are placed by nibabel from the dimension index values and per-frame plane positions;
    a volume's number is its frames' TemporalPositionIndex (else the AcquisitionNumber), its
    acquisition time the earliest FrameAcquisitionDateTime among its frames, and each slice's time
    its frame's, the frame placed by its ImagePositionPatient.
    """
    w = _nicom()[0].wrapper_from_data(ds)
    try:
        data = _pixels(w)
        affine = _LPS_TO_RAS @ w.affine
    except Exception as err:
        raise VolumeError(f"{where}: cannot place the frames ({type(err).__name__}: {err})") from err
    times: dict[int, list[float]] = {}
    slices: dict[int, list[int | None]] = {}  # each frame's index along the third axis
    to_index = np.linalg.inv(w.affine)  # LPS mm -> voxel indices, as nibabel placed the frames
    for frame in ds.PerFrameFunctionalGroupsSequence:
        content = (frame.get("FrameContentSequence") or [{}])[0]
        t = dicom_datetime(content.get("FrameAcquisitionDateTime"))
        number = int(content.get("TemporalPositionIndex") or 0)
        times.setdefault(number, []).append(t)
        position = (frame.get("PlanePositionSequence") or [{}])[0].get("ImagePositionPatient")
        k = None if position is None else int(round((to_index @ [*map(float, position), 1.0])[2]))
        slices.setdefault(number, []).append(k)
    numbers = sorted(times)
    if numbers == [0]:  # no temporal positions: the file is one volume
        numbers = [int(ds.get("AcquisitionNumber") or ds.get("InstanceNumber") or 1)]
        times, slices = {numbers[0]: times[0]}, {numbers[0]: slices[0]}
    data = data[..., np.newaxis] if data.ndim == 3 else data
    if data.ndim != 4 or data.shape[3] != len(numbers):
        raise VolumeError(f"{where}: {len(numbers)} temporal positions but frames of shape {data.shape}")
    tr, created = _tr(ds), creation_time(ds)
    out = []
    for k, number in enumerate(numbers):
        known = [t for t in times[number] if t is not None]
        acq = min(known) if known else acquisition_time(ds)
        sv = ScanVolume(data[..., k], affine, series_of(ds, number), number - 1, tr, acq, created)
        sv.slice_times_s = _frame_slice_times(times[number], slices[number], data.shape[2])
        out.append(sv)
    return out


def _frame_slice_times(times: list, slices: list, n_slices: int) -> tuple[float, ...] | None:
    # Each slice's time from its frame's FrameAcquisitionDateTime, when every slice has one frame.
    if None in times or None in slices or sorted(slices) != list(range(n_slices)):
        return None
    by_slice = dict(zip(slices, times))
    return _slice_times([by_slice[k] for k in range(n_slices)], n_slices)


def _siemens_protocol(ds) -> bytes | None:
    # XA keeps the protocol (ASCCONV text) in a private block; VB/VE in the CSA series header.
    try:
        return bytes(ds.private_block(0x0021, "SIEMENS MR SDS 01")[0x19].value)
    except (KeyError, TypeError, ValueError):
        pass
    try:
        csa = _nicom()[1].get_csa_header(ds, "series")
        return str(csa["tags"]["MrPhoenixProtocol"]["items"][0]).encode("latin-1", "replace")
    except (KeyError, IndexError, TypeError, ValueError, _nicom()[1].CSAReadError):
        return None


def slices_per_volume(ds) -> int | None:
    """Slices per volume of a per-slice series, from its headers; None if no header says.

    ``ImagesInAcquisition``, GE's "locations in acquisition", or ``sSliceArray.lSize`` of the
    Siemens protocol.
    """
    value = ds.get("ImagesInAcquisition")
    if value not in (None, "") and int(value) > 0:
        return int(value)
    try:
        value = ds.private_block(0x0021, "GEMS_RELA_01")[0x4F].value
        if int(value) > 0:
            return int(value)
    except (KeyError, TypeError, ValueError):
        pass
    protocol = _siemens_protocol(ds) if _is_siemens(ds) else None
    match = _SLICES_IN_PROTOCOL.search(protocol) if protocol else None
    return int(match.group(1)) if match and int(match.group(1)) > 0 else None


def slice_volume_key(ds, n_slices: int | None) -> tuple[str, int]:
    """``(series, seq)`` of the volume a per-slice image belongs to.

    Siemens numbers volumes by AcquisitionNumber, Philips by TemporalPositionIdentifier; other
    vendors' images (GE) are counted by InstanceNumber in runs of ``n_slices``.

    Raises
    ------
    VolumeError
        If neither tells the volume.
    """
    acq = ds.get("AcquisitionNumber")
    if _is_siemens(ds) and acq not in (None, ""):
        return series_of(ds, int(acq)), int(acq) - 1
    temporal = ds.get("TemporalPositionIdentifier")
    if temporal not in (None, "") and int(temporal) > 0:
        return series_of(ds, int(temporal)), int(temporal) - 1
    if n_slices is None:
        raise VolumeError("per-slice DICOM without ImagesInAcquisition: cannot tell the slices per volume")
    return series_of(ds, 0), (int(ds.InstanceNumber) - 1) // n_slices


def read_slice_volume(datasets: list) -> ScanVolume:
    """Assemble one volume from the per-slice DICOM datasets of one volume (any order)."""
    dicomwrappers = _nicom()[0]
    wrappers = [dicomwrappers.wrapper_from_data(ds) for ds in datasets]
    normal = np.asarray(wrappers[0].slice_normal)
    positions = np.array(
        [np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=float)) for ds in datasets]
    )
    order = np.argsort(positions)
    if np.any(np.diff(positions[order]) <= 1e-3):
        raise VolumeError("two slices of one volume share a position")
    data = np.stack([_pixels(wrappers[i]) for i in order], axis=2)
    affine = wrappers[order[0]].affine.copy()
    if len(order) > 1:
        first = np.asarray(datasets[order[0]].ImagePositionPatient, dtype=float)
        last = np.asarray(datasets[order[-1]].ImagePositionPatient, dtype=float)
        affine[:3, 2] = (last - first) / (len(order) - 1)
    series, seq = slice_volume_key(datasets[0], len(datasets))
    acquired = [t for t in map(acquisition_time, datasets) if t is not None]
    created = [t for t in map(creation_time, datasets) if t is not None]
    tr = _tr(datasets[0])
    # Each slice's own acquisition time (Siemens XA's interoperability files have them; GE's
    # per-slice files here do not), used when they spread over less than a TR.
    times = [acquisition_time(datasets[i]) for i in order]
    slice_times = None
    if len(acquired) == len(datasets) and 0 < max(acquired) - min(acquired) < (tr or np.inf):
        slice_times = _slice_times(times, len(order))
    return ScanVolume(
        data,
        _LPS_TO_RAS @ affine,
        series,
        seq,
        tr,
        min(acquired) if acquired else None,  # the volume began with its first slice
        max(created) if created else None,  # and was whole once its last slice was made
        slice_times,
    )
