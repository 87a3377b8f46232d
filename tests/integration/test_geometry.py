"""Where two images meet: the same grid in another voxel order is reoriented, any other is refused."""

import dataclasses
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from helpers import free_address, small_config, wait_for_file
from nibabel.orientations import apply_orientation, inv_ornt_aff

from rtdecode.apps.setup import build_pipeline
from rtdecode.errors import ConfigError, VolumeError
from rtdecode.io.nifti import iter_volumes
from rtdecode.transport.zmq import Receiver
from rtdecode.volume import SeriesEnd

# x flipped, y and z swapped: how an LPS-ordered or re-sliced export stores the same head.
ORNT = np.array([[0, -1], [2, 1], [1, 1]])


def _reordered(data, affine):
    return apply_orientation(data, ORNT), affine @ inv_ornt_aff(ORNT, data.shape)


def _run(experiment, reference="", n=12, reorder_volumes=False):
    cfg = small_config().run
    cfg = dataclasses.replace(
        cfg, bundle=str(experiment / "decoder"), motion=dataclasses.replace(cfg.motion, reference=reference)
    )
    pipe = build_pipeline(cfg)
    out = []
    for k, vol in enumerate(iter_volumes(experiment / "test" / "bold.nii")):
        if k == n:
            break
        if reorder_volumes:
            data, affine = _reordered(vol.data, vol.affine)
            vol = dataclasses.replace(vol, data=np.ascontiguousarray(data), affine=affine)
        out.append(pipe.process(vol))
    return out


def _reference(experiment, tmp_path, reorder=False, shift_mm=0.0):
    img = nib.load(experiment / "test" / "bold.nii")
    data, affine = np.asarray(img.dataobj[..., 0], np.float32), img.affine.copy()
    if reorder:
        data, affine = _reordered(data, affine)
    affine[:3, 3] += shift_mm
    path = tmp_path / f"ref-{reorder}-{shift_mm}.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    return str(path)


def test_a_reference_in_another_voxel_order_gives_the_same_motion(experiment, tmp_path):
    same = _run(experiment, _reference(experiment, tmp_path))
    other = _run(experiment, _reference(experiment, tmp_path, reorder=True))
    for a, b in zip(same, other):
        np.testing.assert_array_equal(a.motion.params, b.motion.params)
        assert a.motion.fd_mm == b.motion.fd_mm


def test_a_reference_on_another_grid_is_refused_naming_both_affines(experiment, tmp_path):
    path = _reference(experiment, tmp_path, shift_mm=4.5)
    with pytest.raises(ConfigError, match=r"run.motion.reference: .*another grid.*affine.*against shape"):
        _run(experiment, path)


def test_volumes_in_another_voxel_order_are_decoded_as_the_originals(experiment):
    plain = _run(experiment)
    reordered = _run(experiment, reorder_volumes=True)
    for a, b in zip(plain, reordered):
        np.testing.assert_allclose(a.motion.params, b.motion.params, atol=1e-9)
        if a.predictions is not None:
            np.testing.assert_array_equal(a.predictions, b.predictions)


def test_volumes_on_another_grid_are_refused_before_the_series_starts(experiment):
    cfg = dataclasses.replace(small_config().run, bundle=str(experiment / "decoder"))
    pipe = build_pipeline(cfg)
    vol = next(iter_volumes(experiment / "test" / "bold.nii"))
    shifted = dataclasses.replace(vol, affine=vol.affine.copy())
    shifted.affine[:3, 3] += 6.0
    with pytest.raises(VolumeError, match=r"volume 0 is on another grid than the decoders: shape"):
        pipe.process(shifted)
    assert pipe.process(vol).status == "baseline"  # the series starts with a volume on the grid


def test_a_polled_burst_of_files_arrives_in_header_order(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.uniform(100, 200, (8, 8, 4, 50)).astype(np.float32)
    img = nib.Nifti1Image(data, np.diag([3.0, 3.0, 3.0, 1.0]))
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = 2.0
    nib.save(img, tmp_path / "bold.nii")
    watched = tmp_path / "export"
    watched.mkdir()
    address = free_address()
    exe = [sys.executable, "-m", "rtdecode"]
    with Receiver(address) as rx:
        bridge = subprocess.Popen(
            [*exe, "bridge", "--watch", str(watched), "--to", address, "--poll", "--idle-exit", "3",
             "--end-series", "--ready-file", str(tmp_path / "ready")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            wait_for_file(tmp_path / "ready", proc=bridge)
            replay = subprocess.run(
                [*exe, "replay", str(tmp_path / "bold.nii"), "--folder", str(watched), "--speed", "inf"],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert replay.returncode == 0, replay.stderr
            got = []
            while True:
                item = rx.recv_volume(30)
                if isinstance(item, SeriesEnd):
                    break
                got.append(item)
            assert bridge.wait(30) == 0, bridge.stderr.read()
        finally:
            if bridge.poll() is None:
                bridge.kill()
            bridge.wait()
            bridge.stderr.close()
    assert [v.seq for v in got] == list(range(50))
    assert all(v.tr_s == 2.0 for v in got)  # the replayed files carry their TR
    for v in got:
        np.testing.assert_array_equal(v.data, data[..., v.seq])


def test_a_bridge_without_a_repetition_time_stops_with_a_clear_error(tmp_path):
    img = nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4))
    watched = tmp_path / "export"
    watched.mkdir()
    nib.save(img, watched / "vol_00000.nii")
    proc = subprocess.run(
        [sys.executable, "-m", "rtdecode", "bridge", "--watch", str(watched), "--to", free_address(),
         "--include-existing", "--idle-exit", "2"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "no usable repetition time" in proc.stderr and "--tr-s" in proc.stderr
    assert "Traceback" not in proc.stderr
