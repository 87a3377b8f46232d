"""Scanner exports: readers against dcm2niix, truncated files, and the bridge as a real process."""

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from helpers import assert_slice_times_equal, free_address, wait_for_file

from rtdecode import wire
from rtdecode.apps.replay import replay_folder
from rtdecode.errors import ReceiveTimeout, VolumeError
from rtdecode.scanner.assemble import Assembler, read_folder, to_nifti
from rtdecode.scanner.readers import NotAnImage
from rtdecode.transport.zmq import Receiver
from rtdecode.volume import Stage

DATA = Path(__file__).parents[1] / "data"
VENDORS = {"siemens": 1.5, "ge": 1.0, "philips": 2.0}  # TR in seconds, from the data's READMEs


def _export(vendor, tmp_path):
    """A copy of a vendor's export without the truncated file."""
    dst = tmp_path / vendor
    dst.mkdir()
    for p in (DATA / vendor).iterdir():
        if not p.name.endswith(".partial"):
            shutil.copy(p, dst)
    return dst


@pytest.mark.parametrize("vendor", ["siemens", "ge"])
def test_volumes_and_affines_equal_dcm2niix(vendor, tmp_path):
    dcm2niix = shutil.which("dcm2niix") or str(Path(sys.executable).parent / "dcm2niix")
    if not Path(dcm2niix).exists():
        pytest.skip("dcm2niix (PyPI package dcm2niix) is not installed")
    src = _export(vendor, tmp_path)
    out = tmp_path / "d2n"
    out.mkdir()
    subprocess.run([dcm2niix, "-o", str(out), "-f", "ref", str(src)], check=True, capture_output=True)
    ref = nib.as_closest_canonical(nib.load(out / "ref.nii"))
    vols = read_folder(src)
    assert [v.seq for v in vols] == list(range(10))
    ours = nib.as_closest_canonical(to_nifti(vols, tmp_path / "ours.nii"))
    assert ours.shape == ref.shape
    np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(ref.dataobj))
    np.testing.assert_allclose(ours.affine, ref.affine, atol=1e-3)
    assert ours.header.get_zooms()[3] == pytest.approx(VENDORS[vendor])
    # Slice times: Siemens' MosaicRefAcqTimes as dcm2niix's BIDS SliceTiming (same slice order
    # once the slice axes agree); GE's per-slice files carry none, and rtdecode does not guess.
    reference = json.loads((out / "ref.json").read_text()).get("SliceTiming")
    if vendor == "ge":
        assert all(v.slice_times_s is None for v in vols)
    else:
        assert_slice_times_equal(vols, reference, nib.load(out / "ref.nii").affine, atol=1e-6)


@pytest.mark.filterwarnings("ignore::ResourceWarning")  # nibabel's loader, used here as the reference
def test_philips_parrec_volumes(tmp_path):
    # dcm2niix refuses these XTC files ("maxNumberOfMixes > 1", "Unknown type 17"), so the check is
    # against nibabel's own PAR/REC loader and the geometry written in the header.
    vols = read_folder(_export("philips", tmp_path))
    assert [v.seq for v in vols] == list(range(5))
    first = np.asarray(nib.load(DATA / "philips" / "Dump-0000.par", strict_sort=True, mmap=False).dataobj)
    np.testing.assert_array_equal(vols[0].data, first[..., 0])  # magnitude; the other frame is phase
    assert first[..., 1].min() < 0
    assert vols[0].data.shape == (80, 80, 30)
    assert nib.aff2axcodes(vols[0].affine) == ("L", "P", "S")
    np.testing.assert_allclose(np.linalg.norm(vols[0].affine[:3, :3], axis=0), [3.0, 3.0, 4.0], atol=1e-3)
    for v in vols[1:]:
        np.testing.assert_allclose(v.affine, vols[0].affine)


def test_siemens_acquisition_times_come_from_the_header(tmp_path):
    vols = read_folder(_export("siemens", tmp_path))
    times = np.array([v.acq_time_s for v in vols])
    np.testing.assert_allclose(np.diff(times), 1.5, atol=0.05)


def test_truncated_file_is_refused_clearly(tmp_path):
    path = tmp_path / "001_000013_000005.dcm"  # as the exporter names it while writing
    shutil.copy(DATA / "siemens" / "truncated_001_000013_000005.dcm.partial", path)
    with pytest.raises(VolumeError, match=r"001_000013_000005.dcm: not a complete DICOM file .*pixel data"):
        Assembler().add(path)
    assert Assembler().add(DATA / "siemens" / "truncated_001_000013_000005.dcm.partial") == []  # ignored


def test_a_slice_series_waits_for_every_slice(tmp_path):
    asm = Assembler()
    files = sorted((DATA / "ge").glob("*MRDC*"), key=lambda p: int(p.name.rsplit(".", 1)[1]))
    out = []
    for p in files[:17]:
        out += asm.add(p)
    assert out == [] and asm.pending == {("6", 0): 17}
    assert [v.seq for v in asm.add(files[17])] == [0]


@pytest.mark.parametrize("vendor", ["siemens", "ge", "philips"])
def test_bridge_process_sends_volumes_in_order(vendor, tmp_path):
    src = _export(vendor, tmp_path)
    watched = tmp_path / "watched"
    watched.mkdir()
    address = free_address()
    expected = read_folder(src)
    with Receiver(address) as rx:
        bridge = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rtdecode",
                "bridge",
                "--watch",
                str(watched),
                "--to",
                address,
                "--tr-s",
                str(VENDORS[vendor]),
                "--give-up-s",
                "1",
                "--idle-exit",
                "3",
                "--end-series",
                "--ready-file",
                str(tmp_path / "bridge.ready"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for_file(tmp_path / "bridge.ready", proc=bridge)
            copier = threading.Thread(target=replay_folder, args=(src, watched, VENDORS[vendor], 10.0))
            copier.start()
            if vendor == "siemens":  # a file that starts being written and never completes
                partial = (DATA / "siemens" / "truncated_001_000013_000005.dcm.partial").read_bytes()
                (watched / "001_000013_000011.dcm").write_bytes(partial)
            got = []
            while True:
                msg = rx.recv(30)
                if msg.topic == wire.END_TOPIC:
                    break
                got.append(wire.decode_volume(msg))
            copier.join()
            out, err = bridge.communicate(timeout=30)
        finally:
            if bridge.poll() is None:
                bridge.kill()
                bridge.communicate()
    assert [v.seq for v in got] == list(range(len(expected)))
    for v, e in zip(got, expected):
        np.testing.assert_array_equal(v.data, e.data)
        np.testing.assert_allclose(v.affine, e.affine)
        assert v.tr_s == VENDORS[vendor]
    if vendor == "siemens":  # the header's times, moved to this computer's clock by one offset
        offset = got[-1].clock_offset_s
        moved = [v.acq_time_s - offset for v in got[5:]]
        np.testing.assert_allclose(moved, [e.acq_time_s for e in expected[5:]])
        assert {v.acquired_from for v in got} == {"scanner clock, estimated offset"}
        assert "incomplete or unreadable: " in out and "001_000013_000011.dcm" in out
    else:  # no acquisition times in these headers: the file's completion is the first stamp
        assert {v.acquired_from for v in got} == {""}
        assert all(v.stamps[Stage.ACQUIRED] == -1 < v.stamps[Stage.FILE_COMPLETE] for v in got)
    assert bridge.returncode == 0, err


def test_missing_export_folder_is_a_clear_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "rtdecode", "bridge", "--watch", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_receiver_times_out_cleanly():
    with Receiver(free_address()) as rx, pytest.raises(ReceiveTimeout):
        rx.recv(0.1)


def test_a_new_series_number_starts_a_new_series(tmp_path):
    import pydicom

    src = _export("siemens", tmp_path)
    files = sorted(src.glob("*.dcm"))
    for p in files[5:]:  # the console starts series 14 after five volumes
        ds = pydicom.dcmread(p)
        ds.SeriesNumber = 14
        ds.AcquisitionNumber = int(ds.AcquisitionNumber) - 5
        ds.save_as(p.with_name(p.name.replace("000013", "000014")))
        p.unlink()
    vols = read_folder(src)
    assert [(v.series, v.seq) for v in vols] == [("13", i) for i in range(5)] + [("14", i) for i in range(5)]


def test_a_dicom_without_pixels_is_named_and_not_retried(tmp_path):
    import pydicom

    ds = pydicom.dcmread(DATA / "siemens" / "001_000013_000001.dcm")
    del ds.PixelData
    path = tmp_path / "001_000013_000001.dcm"
    ds.save_as(path)
    asm = Assembler()
    with pytest.raises(NotAnImage, match="001_000013_000001.dcm: a DICOM file without an image"):
        asm.add(path)
    assert asm.add(path) == []  # done with, not waited for


def test_a_file_from_another_vendor_is_refused_and_the_series_goes_on(tmp_path):
    asm = Assembler()
    assert len(asm.add(DATA / "siemens" / "001_000013_000001.dcm")) == 1
    ge = next((DATA / "ge").glob("*.MRDC.1"))
    with pytest.raises(
        NotAnImage, match=r"from a GE MEDICAL SYSTEMS scanner, this session's files come from SIEMENS"
    ):
        asm.add(ge)
    assert len(asm.add(DATA / "siemens" / "001_000013_000002.dcm")) == 1
    assert asm.pending == {}


def test_per_slice_images_numbered_by_temporal_position_need_no_slice_count(tmp_path):
    # Classic per-slice DICOM as Philips writes it: the volume in TemporalPositionIdentifier and
    # nothing that says how many slices a volume has (GE's files, rewritten so).
    files = sorted((DATA / "ge").glob("*MRDC*"), key=lambda p: int(p.name.rsplit(".", 1)[1]))
    for k, p in enumerate(files):
        ds = pydicom.dcmread(p)
        del ds.ImagesInAcquisition
        del ds.private_block(0x0021, "GEMS_RELA_01")[0x4F]
        ds.Manufacturer, ds.TemporalPositionIdentifier = "Philips Medical Systems", k // 18 + 1
        ds.save_as(tmp_path / p.name)
    got, expected = read_folder(tmp_path), read_folder(DATA / "ge")
    assert [v.seq for v in got] == list(range(10))
    for v, e in zip(got, expected):
        np.testing.assert_array_equal(v.data, e.data)
        np.testing.assert_array_equal(v.affine, e.affine)
