"""Replaying recorded sessions as a scanner would: over ZeroMQ, or as files into a watched folder.

Every replay paces against absolute target times (volume ``k`` is due ``k * TR / speed`` seconds
after the first), so a late volume does not delay the ones after it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

from rtdecode.io.nifti import iter_volumes
from rtdecode.progress import progress
from rtdecode.scanner.dicom import (
    acquisition_time,
    creation_time,
    is_mosaic,
    is_multiframe,
    read_dicom,
    slice_volume_key,
    slices_per_volume,
)
from rtdecode.transport.zmq import VolumeSender
from rtdecode.volume import Stage, Volume

if TYPE_CHECKING:
    from rtdecode.transport.lsl import MarkerOutlet, VolumeOutlet
    from rtdecode.transport.lsl_physio import PhysioOutlet

log = logging.getLogger(__name__)


def paced(items: Iterable, tr_s: float, speed: float) -> Iterator[tuple[int, float]]:
    """Yield ``(k, offset_s)`` for each item when it is due; ``speed=inf`` does not wait."""
    t0 = time.monotonic()
    for k, _ in enumerate(items):
        offset = k * tr_s / speed
        wait = t0 + offset - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        yield k, offset


def open_sender(to: str, n_volumes: int = 0, speed: float = 1.0) -> VolumeSender | VolumeOutlet:
    """A volume sender for ``to``: a ZeroMQ address, or ``lsl`` / ``lsl:<stream name>``."""
    if to == "lsl" or to.startswith("lsl:"):
        from rtdecode.transport.lsl import VolumeOutlet

        return VolumeOutlet(to[4:] or "rtdecode-scanner", n_volumes, speed)
    if math.isfinite(speed):
        return VolumeSender(to)
    # Unpaced, the queues stay full: libzmq lets a blocked sender go on only once the decoder has
    # taken half a queue (500 volumes), and at exit up to 1,000 volumes are still queued. Neither
    # wait means a missing decoder; a 5 s linger would drop them.
    return VolumeSender(to, linger_ms=600_000, send_timeout_s=600.0)


def events_to_markers(events: Sequence[dict[str, str]]) -> list[tuple[float, str]]:
    """Stimulus markers ``(scan time s, text)`` for the blocks of a BIDS events table.

    Each block gives a JSON ``start`` marker with its ``category_label`` (or ``trial_type``) and
    condition at its onset and an ``end`` marker at onset + duration (see :mod:`rtdecode.pipeline.blocks`).
    """
    out = []
    for e in events:
        on = float(e["onset"])
        label = e.get("category_label") or e.get("trial_type", "")
        start = {"event": "start", "label": label, "condition": e.get("trial_type", "")}
        out += [(on, json.dumps(start)), (on + float(e["duration"]), json.dumps({"event": "end"}))]
    return sorted(out, key=lambda m: m[0])


def send_volumes(
    volumes: Iterable[Volume],
    to: str,
    speed: float,
    n_volumes: int = 0,
    markers: Sequence[tuple[float, str]] = (),
    lead_s: float | None = None,
    physio: dict[str, np.ndarray] | None = None,
) -> int:
    """Send volumes at ``speed`` x their TR, then an end-of-series; return the count.

    Parameters
    ----------
    volumes : iterable of Volume
    to : str
        A ZeroMQ address, or ``lsl`` / ``lsl:<name>`` for an LSL stream of type ``fMRI``.
    speed : float
        1 for real time, N for N times faster, ``inf`` for unpaced.
    n_volumes : int
        Volumes in the series if known (put in the LSL stream description).
    markers : sequence of (float, str)
        Stimulus markers at scan times (s), sent on an LSL marker stream at their due times, as
        stimulus software would (see :func:`events_to_markers`).
    lead_s : float, optional
        Seconds between opening the streams and volume 0, for receivers to connect (LSL delivers
        only to connected inlets). Default 5 s when LSL is involved, else 0.
    physio : dict, optional
        A physiological recording (:func:`rtdecode.io.physio.read_physio`: times from volume 0),
        sent as an LSL stream of type ``physio`` on the volumes' clock (volume ``k`` at ``t0 + k
        TR`` whatever the speed); each volume's samples go out with it, as a real volume arrives
        after its acquisition has ended.
    """
    volumes = iter(volumes)
    first = next(volumes, None)
    if first is None:
        return 0
    uses_lsl = to.startswith("lsl") or bool(markers) or physio is not None
    lead = (5.0 if uses_lsl else 0.0) if lead_s is None else lead_s
    n, last = 0, None
    with contextlib.ExitStack() as stack:
        tx = stack.enter_context(open_sender(to, n_volumes, speed))
        # The bar is set up before the clock starts: that takes ~9 ms (measured), which volume 0
        # would otherwise carry as the sender's lateness (``acquired->sent``).
        total = n_volumes or None
        volumes = stack.enter_context(
            progress(itertools.chain([first], volumes), "sending volumes", total=total, unit="vol")
        )
        t0 = time.monotonic_ns() + int(lead * 1e9)
        wall0 = time.time() + lead
        # Every stream opens now, so receivers have the whole lead to connect to each.
        stim, pulse = None, None
        if markers:
            from rtdecode.transport.lsl import MarkerOutlet

            stim = MarkerOutlet()
        if physio is not None:
            from rtdecode.transport.lsl_physio import PhysioOutlet

            rate = 1 / float(np.median(np.diff(physio["time"])))
            pulse = stack.enter_context(contextlib.closing(PhysioOutlet("rtdecode-replay", rate)))
            sent = 0
        if hasattr(tx, "prepare"):
            tx.prepare(first, t0)
        for outlet in (stim, pulse):
            if outlet is not None and not outlet.wait_for_consumer(
                max((t0 - time.monotonic_ns()) / 1e9, 0.0)
            ):
                log.warning("no receiver has connected to the %s stream yet", type(outlet).__name__)
        pending = list(markers)
        for vol in volumes:
            offset = vol.seq * vol.tr_s / speed
            due = t0 + int(offset * 1e9)
            while pending and t0 + int(pending[0][0] / speed * 1e9) <= due:
                _send_marker(stim, t0, speed, *pending.pop(0))
            _sleep_until(due)
            if pulse is not None:  # the recording up to this volume's end
                upto = int(np.searchsorted(physio["time"], (vol.seq + 1) * vol.tr_s, side="right"))
                _push_physio(pulse, physio, sent, upto, t0)
                sent = max(sent, upto)
            vol.acq_time_s = wall0 + offset
            vol.stamps[Stage.ACQUIRED], vol.acquired_from = due, "sender"
            tx.send(vol)
            n, last = n + 1, vol
        for at_s, text in pending:
            _send_marker(stim, t0, speed, at_s, text)
        if pulse is not None:
            _push_physio(pulse, physio, sent, physio["time"].size, t0)
        tx.send_end(last.session, last.series, n)
    return n


def _push_physio(pulse: PhysioOutlet, physio: dict[str, np.ndarray], a: int, b: int, t0_ns: int) -> None:
    if b > a:
        pulse.push(t0_ns / 1e9 + physio["time"][a:b], physio["cardiac"][a:b], physio["respiratory"][a:b])


def _sleep_until(t_ns: int) -> None:
    wait = (t_ns - time.monotonic_ns()) / 1e9
    if wait > 0:
        time.sleep(wait)


def _send_marker(stim: MarkerOutlet, t0: int, speed: float, at_s: float, text: str) -> None:
    from rtdecode.transport.lsl import monotonic_ns_to_lsl

    at = t0 + int(at_s / speed * 1e9)
    _sleep_until(at)
    stim.send(text, monotonic_ns_to_lsl(at))


@dataclass
class ExportedVolume:
    """The files of one volume in an export folder, and the scanner's times for it.

    Parameters
    ----------
    files : list of Path
        In the order a scanner writes them (a PAR header after its REC).
    acquired_s, created_s : float or None
        Acquisition start and image creation (ContentTime), scanner clock, Unix seconds.
    """

    files: list[Path]
    acquired_s: float | None = None
    created_s: float | None = None


def volume_file_groups(folder: str | Path) -> list[ExportedVolume]:
    """The files of an export folder grouped by volume, in acquisition order.

    Siemens mosaics, enhanced multi-frame DICOM and NIfTI files are one file per volume, Philips
    PAR/REC two, GE and Siemens XA interoperability exports one per slice (plain or gzipped).
    """
    groups: dict[tuple, ExportedVolume] = {}
    for p in sorted(Path(folder).iterdir()):
        name = p.name.lower()
        if not p.is_file() or name.startswith(".") or name in ("license", "readme.md"):
            continue
        if name.endswith((".nii", ".nii.gz")):
            groups[("nifti", p.name)] = ExportedVolume([p])
        elif name.endswith((".par", ".rec")):
            groups.setdefault(("parrec", p.stem), ExportedVolume([])).files.append(p)
        elif name.endswith(".partial"):
            continue
        else:
            ds = read_dicom(p)
            if is_mosaic(ds) or is_multiframe(ds):
                key = ("dicom", str(ds.get("SeriesNumber", "")), p.name)
            else:
                key = ("dicom", *slice_volume_key(ds, slices_per_volume(ds)))
            group = groups.setdefault(key, ExportedVolume([]))
            group.files.append(p)
            # A volume began with its first slice and was whole once its last was created.
            group.acquired_s = _pick(min, group.acquired_s, acquisition_time(ds))
            group.created_s = _pick(max, group.created_s, creation_time(ds))
    for g in groups.values():
        # A PAR header is copied after its REC, so the pair is complete when the header appears.
        g.files.sort(key=lambda p: p.suffix.lower() == ".par")
    return [g for _, g in sorted(groups.items())]


def _pick(choose, a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else choose(a, b)


MAX_EXPORT_DELAY_S = 60.0  # a longer "delay" between header times is a clock or header error


def export_schedule(volumes: Sequence[ExportedVolume], tr_s: float) -> list[float]:
    """When each volume's files appeared at the scanner's export, in seconds after the first began.

    A volume is due its acquisition start after the first's plus the delay the scanner recorded
    between acquiring and creating the image (ContentTime - AcquisitionTime): the replayed export
    delays are the recorded ones. Without times in the headers, volume ``k`` is due at
    ``k * tr_s``; without a creation time, once its acquisition has ended (one TR).
    """
    if not volumes or any(v.acquired_s is None for v in volumes):
        return [k * tr_s for k in range(len(volumes))]
    t0 = min(v.acquired_s for v in volumes)
    out = []
    for v in volumes:
        delay = v.created_s - v.acquired_s if v.created_s is not None else tr_s
        out.append(v.acquired_s - t0 + (delay if 0.0 <= delay <= MAX_EXPORT_DELAY_S else tr_s))
    return out


def replay_folder(src: str | Path, dst: str | Path, tr_s: float, speed: float = 1.0) -> int:
    """Copy an export folder's files into ``dst`` as the scanner wrote them; return the volumes.

    Each volume's files appear when :func:`export_schedule` says, divided by ``speed``.
    """
    groups = volume_file_groups(src)
    due = sorted(zip(export_schedule(groups, tr_s), range(len(groups))))
    t0 = time.monotonic()
    for at, k in due:
        wait = t0 + at / speed - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        for p in groups[k].files:
            shutil.copyfile(p, Path(dst) / p.name)
    return len(groups)


def replay_nifti_to_folder(bold: str | Path, dst: str | Path, speed: float = 1.0) -> int:
    """Write each volume of a 4-D NIfTI as a 3-D NIfTI file into ``dst`` at ``speed`` x TR."""
    vols = list(iter_volumes(bold))
    for k, _ in paced(vols, vols[0].tr_s if vols else 0.0, speed):
        v = vols[k]
        img = nib.Nifti1Image(v.data, v.affine)
        img.header.set_xyzt_units("mm", "sec")
        img.header["pixdim"][4] = v.tr_s  # the series' TR travels with each 3-D file
        tmp = Path(dst) / f".vol_{k:05d}.nii"
        nib.save(img, tmp)
        tmp.rename(Path(dst) / f"vol_{k:05d}.nii")  # appear whole, as most exporters do
    return len(vols)
