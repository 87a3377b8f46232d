"""Siemens XA exports (enhanced multi-frame and interoperability per-slice DICOM, gzipped or not),
the DICOM node they are pushed to, and the export delay measured per volume."""

import copy
import gzip
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from helpers import (
    EXE,
    assert_slice_times_equal,
    collect,
    free_address,
    is_end,
    small_config,
    stop,
    wait_for_file,
)

from rtdecode import wire
from rtdecode.apps.report import build_report
from rtdecode.errors import VolumeError
from rtdecode.io.recorder import Recorder
from rtdecode.io.recording import Recording
from rtdecode.models.bank import CandidateBank
from rtdecode.models.linear import LinearBundle
from rtdecode.scanner.assemble import Assembler, read_folder, to_nifti
from rtdecode.transport.zmq import Receiver, Subscriber
from rtdecode.volume import SeriesEnd, Stage

DATA = Path(__file__).parents[1] / "data"
ENHANCED, INTEROP = DATA / "siemens-xa30-enhanced", DATA / "siemens-xa30-interop"
SLICES = 33


def _plain(src, dst):
    """The interoperability export as a scanner writes it: the same files, not gzipped."""
    dst.mkdir()
    for p in sorted(src.glob("*.dcm.gz")):
        (dst / p.name.removesuffix(".gz")).write_bytes(gzip.decompress(p.read_bytes()))
    return dst


def _dcm2niix(folder, out):
    dcm2niix = shutil.which("dcm2niix") or str(Path(sys.executable).parent / "dcm2niix")
    if not Path(dcm2niix).exists():
        pytest.skip("dcm2niix (PyPI package dcm2niix) is not installed")
    out.mkdir()
    subprocess.run([dcm2niix, "-o", str(out), "-f", "ref", str(folder)], check=True, capture_output=True)
    return nib.as_closest_canonical(nib.load(out / "ref.nii"))


@pytest.mark.parametrize("layout", ["enhanced", "interop-gz", "interop-plain"])
def test_xa_exports_equal_dcm2niix_every_volume(layout, tmp_path):
    src = ENHANCED if layout == "enhanced" else INTEROP
    plain = src if layout == "enhanced" else _plain(INTEROP, tmp_path / "plain")
    ref = _dcm2niix(plain, tmp_path / "d2n")
    vols = read_folder(plain if layout == "interop-plain" else src)
    assert [(v.series, v.seq) for v in vols] == [("7", k) for k in range(10)]  # one series, 7001..7010
    ours = nib.as_closest_canonical(to_nifti(vols, tmp_path / "ours.nii"))
    assert ours.shape == ref.shape == (64, 64, SLICES, 10)
    np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(ref.dataobj))
    np.testing.assert_allclose(ours.affine, ref.affine, atol=1e-3)
    assert ours.header.get_zooms()[3] == pytest.approx(1.0)
    np.testing.assert_allclose(np.diff([v.acq_time_s for v in vols]), 1.0, atol=0.01)
    assert all(1.0 < v.created_time_s - v.acq_time_s < 2.5 for v in vols)  # reconstruction, by the scanner
    # Slice times (per frame or per slice file) as dcm2niix's SliceTiming, to its 2.5 ms rounding.
    reference = json.loads((tmp_path / "d2n" / "ref.json").read_text())["SliceTiming"]
    assert_slice_times_equal(vols, reference, nib.load(tmp_path / "d2n" / "ref.nii").affine, atol=0.003)


def test_without_a_slice_count_in_the_headers_the_first_volume_teaches_it(tmp_path):
    # The same export with the embedded protocol removed: nothing says 33 slices.
    src = tmp_path / "bare"
    src.mkdir()
    for p in sorted(INTEROP.glob("*.dcm.gz")):
        ds = pydicom.dcmread(gzip.open(p))
        del ds.private_block(0x0021, "SIEMENS MR SDS 01")[0x19]
        ds.save_as(src / p.name.removesuffix(".gz"))
    asm, out = Assembler(), []
    files = sorted(src.iterdir())
    for k, p in enumerate(files):
        got = asm.add(p)
        if k == SLICES:  # the first slice of volume 1 completes volume 0
            assert [v.seq for v in got] == [0]
        out += got
    out += asm.finish()
    expected = read_folder(INTEROP)
    assert [v.seq for v in out] == list(range(10))
    for v, e in zip(out, expected):
        np.testing.assert_array_equal(v.data, e.data)
        np.testing.assert_array_equal(v.affine, e.affine)


def test_an_enhanced_file_holding_two_volumes_gives_both():
    a, b = (pydicom.dcmread(p) for p in sorted(ENHANCED.glob("*.dcm"))[:2])
    both = copy.deepcopy(a)
    frames = [*a.PerFrameFunctionalGroupsSequence, *b.PerFrameFunctionalGroupsSequence]
    both.PerFrameFunctionalGroupsSequence = frames
    both.NumberOfFrames, both.PixelData = 2 * SLICES, a.PixelData + b.PixelData
    vols = Assembler().add_dataset(both)
    expected = read_folder(ENHANCED)[:2]
    assert [v.seq for v in vols] == [0, 1]
    for v, e in zip(vols, expected):
        np.testing.assert_array_equal(v.data, e.data)
        assert v.acq_time_s == e.acq_time_s


@pytest.mark.parametrize("name", ["enhanced", "slice.dcm.gz"])
def test_a_half_written_file_is_retried_then_read(name, tmp_path):
    full = sorted(ENHANCED.glob("*.dcm"))[0] if name == "enhanced" else sorted(INTEROP.glob("*.gz"))[0]
    path = tmp_path / full.name
    data = full.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    asm = Assembler()
    with pytest.raises(VolumeError, match="not a complete DICOM file|not readable yet"):
        asm.add(path)
    path.write_bytes(data)
    got = asm.add(path)
    assert got == [] if name != "enhanced" else [v.seq for v in got] == [0]


def _interleaved(folder):
    """The interoperability export as a scanner pushes it: slices of volume k+1 begin before k's end."""
    by_volume = [sorted(folder.glob(f"70{k:02d}*.dcm.gz")) for k in range(1, 11)]
    halves = [(v[: SLICES // 2], v[SLICES // 2 :]) for v in by_volume]
    order = list(halves[0][0])
    for k in range(10):
        order += halves[k][1] + (halves[k + 1][0] if k + 1 < 10 else [])
    return [pydicom.dcmread(gzip.open(p)) for p in order]


def _push(port, datasets, calling="SCANNER"):
    from pynetdicom import AE
    from pynetdicom.sop_class import EnhancedMRImageStorage, MRImageStorage, Verification

    ae = AE(ae_title=calling)
    ae.add_requested_context(MRImageStorage)
    ae.add_requested_context(EnhancedMRImageStorage)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="RTDECODE")
    if not assoc.is_established:
        return None
    assert assoc.send_c_echo().Status == 0  # how a scanner tests a node before sending
    statuses = [assoc.send_c_store(ds).Status for ds in datasets]
    assoc.release()
    return statuses


def _bridge(tmp_path, address, *args):
    ready = tmp_path / "bridge.ready"
    proc = subprocess.Popen(
        [*EXE, "bridge", "--to", address, "--idle-exit", "4", "--end-series", "--ready-file", str(ready),
         *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_for_file(ready, proc=proc)
    return proc


@pytest.mark.parametrize("layout", ["interop", "enhanced", "mosaic"])
def test_a_pushed_series_equals_the_folder_path_bit_for_bit(layout, tmp_path):
    port = int(free_address().rsplit(":", 1)[1])
    address = free_address()
    folder = {"interop": INTEROP, "enhanced": ENHANCED, "mosaic": DATA / "siemens"}[layout]
    expected = read_folder(folder)
    if layout == "interop":
        datasets = _interleaved(INTEROP)
    else:
        datasets = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    series = {"series-7"} if layout != "mosaic" else {"series-13"}
    with Receiver(address) as rx:
        node = ["--dicom-port", str(port), "--calling-ae", "SCANNER", "--save-dir", str(tmp_path / "got")]
        bridge = _bridge(tmp_path, address, *node)
        try:
            assert _push(port, datasets[:1], calling="INTRUDER") is None  # not on the list: refused
            assert set(_push(port, datasets)) == {0}
            got = []
            while not isinstance(item := rx.recv_volume(30), SeriesEnd):
                got.append(item)
            out, err = bridge.communicate(timeout=30)
        finally:
            stop(bridge)
    assert bridge.returncode == 0, err
    assert sorted(v.seq for v in got) == list(range(10)) and {v.series for v in got} == series
    for v in sorted(got, key=lambda v: v.seq):
        e = expected[v.seq]
        assert v.data.dtype == e.data.dtype
        np.testing.assert_array_equal(v.data, e.data)
        np.testing.assert_array_equal(v.affine, e.affine)
        assert v.stamps[Stage.FILE_COMPLETE] > 0 and v.acquired_from == "scanner clock, estimated offset"
    assert len(list((tmp_path / "got").glob("*.dcm"))) == len(datasets)
    assert "sent 10 volumes" in out


def _xa_decoder(root, export):
    """A decoder bundle on an export's grid (random weights) with a candidate bank: enough to run."""
    first = read_folder(export)[0]
    mask = first.data > np.percentile(first.data, 70)
    rng = np.random.default_rng(0)
    n = int(mask.sum())
    bundle = LinearBundle(
        mask, first.affine, {"VC": np.arange(n)}, ["fc"], [16],
        {"VC": rng.standard_normal((n, 16)).astype(np.float32) * 1e-3}, {"VC": np.zeros(16, np.float32)},
    )  # fmt: skip
    bundle.save(root)
    bank = CandidateBank([f"c{k}" for k in range(12)], {"fc": rng.standard_normal((12, 16))})
    bank.save(root / "candidates.npz")
    cfg = small_config()
    cfg.run.bundle = str(root)
    cfg.run.preprocess.baseline_volumes = 4
    cfg.run.input.address, cfg.run.output.address = free_address(), free_address()
    return cfg


@pytest.mark.parametrize("route", ["folder", "dicom-push"])
def test_an_xa_series_streams_through_bridge_and_run_whole_with_its_export_delays(
    route, tmp_path, run_decoder
):
    # The folder: an interoperability export replayed as the scanner wrote it (each volume at its
    # acquisition time plus the reconstruction time its header records). The push: enhanced files.
    export = INTEROP if route == "folder" else ENHANCED
    cfg = _xa_decoder(tmp_path / "decoder", export)
    expected = read_folder(export)
    decoder = run_decoder(cfg, "--exit-after-series")
    with Subscriber(cfg.run.output.address) as sub:
        collect(sub, lambda m: m.topic == "status", 60)
        if route == "folder":
            (tmp_path / "export").mkdir()
            bridge = _bridge(tmp_path, cfg.run.input.address, "--watch", str(tmp_path / "export"))
            cmd = [*EXE, "replay", str(export), "--folder", str(tmp_path / "export")]
        else:
            port = free_address().rsplit(":", 1)[1]
            bridge = _bridge(tmp_path, cfg.run.input.address, "--dicom-port", port)
            cmd = [sys.executable, "-c", PUSH, port, *map(str, sorted(export.glob("*.dcm")))]
        try:
            sender = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            assert sender.returncode == 0, sender.stderr
            msgs = collect(sub, is_end, 120)
            bridge.communicate(timeout=30)
        finally:
            stop(bridge)
    assert decoder.wait(30) == 0
    latency = [wire.parse(m) for m in msgs if m.topic == "latency"]
    assert [lt.seq for lt in latency] == list(range(10)) and {lt.series for lt in latency} == {"series-7"}
    end = wire.parse(msgs[-1])
    assert end.series == "series-7"
    assert end.series_counts["processed"] == 10 and end.series_counts["skipped"] == 0
    assert sum(m.topic == "ranking" and m.header["status"] == "ok" for m in msgs) == 6
    assert {lt.acquired_from for lt in latency} == {"scanner clock, estimated offset"}
    if route == "folder":  # a burst push of an old series has no export delay to measure
        recorded = np.array([v.created_time_s - v.acq_time_s for v in expected])  # Content - Acquisition
        np.testing.assert_allclose([lt.export_ms / 1000 for lt in latency], recorded, atol=0.25)
        assert all(lt.ms["rtdecode"] < lt.ms["end_to_end"] - 1000 for lt in latency)
        # What `rtdecode record` keeps of these messages, and the report made from it.
        with Recorder(tmp_path / "rec.h5") as rec:
            for msg in msgs:
                rec.publish(wire.parse(msg))
        kept = Recording.load(tmp_path / "rec.h5")
        export = (kept.stamps[:, Stage.FILE_COMPLETE] - kept.stamps[:, Stage.ACQUIRED]) / 1e6
        np.testing.assert_allclose(export, [lt.export_ms for lt in latency])
        assert list(kept.acquired_from) == ["scanner clock, estimated offset"] * 10
        html = build_report(tmp_path / "rec.h5")
        assert "Before rtdecode: scanner → file complete" in html
        median = re.search(r"<td>scanner → file complete</td><td>([0-9.]+)</td>", html).group(1)
        assert float(median) == pytest.approx(np.median(export), abs=0.01)


# A scanner's DICOM node settings, as a separate client: pynetdicom's SCU, one association.
PUSH = """
import sys
import pydicom
from pynetdicom import AE
from pynetdicom.sop_class import EnhancedMRImageStorage, MRImageStorage
ae = AE(ae_title="SCANNER")
ae.add_requested_context(MRImageStorage)
ae.add_requested_context(EnhancedMRImageStorage)
assoc = ae.associate("127.0.0.1", int(sys.argv[1]), ae_title="RTDECODE")
assert assoc.is_established
for path in sys.argv[2:]:
    assert assoc.send_c_store(pydicom.dcmread(path)).Status == 0
assoc.release()
"""


@pytest.mark.parametrize("export", [ENHANCED, INTEROP], ids=["enhanced", "interop"])
def test_convert_from_the_command_line(export, tmp_path):
    out = tmp_path / "bold.nii.gz"
    cmd = [*EXE, "convert", str(export), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "(64, 64, 33, 10) (10 volumes)" in proc.stdout
    np.testing.assert_array_equal(nib.load(out).get_fdata()[..., 3], read_folder(export)[3].data)
