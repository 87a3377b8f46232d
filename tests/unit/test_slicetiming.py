"""Slice-timing correction: streamed equals the same interpolation over the whole series, on the
shared Siemens data; slice times travel on the wire and come from BIDS sidecars."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from rtdecode import wire
from rtdecode.errors import ProtocolError, VolumeError
from rtdecode.io.nifti import iter_volumes
from rtdecode.pipeline.slicetiming import SliceTimer
from rtdecode.scanner.assemble import read_folder
from rtdecode.volume import Volume

SIEMENS = Path(__file__).parents[1] / "data" / "siemens"


@pytest.mark.filterwarnings("ignore::UserWarning")  # nibabel's DICOM readers call themselves experimental
def test_streamed_equals_the_series_interpolated_at_once_on_siemens_mosaics():
    vols = [v for v in read_folder(SIEMENS) if v.seq != 6]  # one volume lost: a gap of two TRs
    times = np.array(vols[0].slice_times_s)
    assert times.shape == (27,) and times.min() == 0 and times.max() < vols[0].tr_s
    timer = SliceTimer()
    streamed = np.array([timer.update(v.data, v.slice_times_s, v.seq, v.tr_s) for v in vols])
    # Offline, vectorised over the series: each slice at its volume's start, linearly between its
    # previous acquisition and its current one.
    x = np.array([v.data for v in vols], dtype=np.float64)
    steps = np.diff([v.seq for v in vols]).astype(float)[:, None, None, None]
    expected = x.copy()
    expected[1:] = x[1:] + times / (steps * vols[0].tr_s) * (x[:-1] - x[1:])
    np.testing.assert_allclose(streamed, expected, rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(streamed[0], x[0])  # the first volume has no past
    assert not np.allclose(streamed[1], x[1])
    # A resumed timer goes on exactly.
    resumed = SliceTimer()
    first = SliceTimer()
    for v in vols[:4]:
        first.update(v.data, v.slice_times_s, v.seq, v.tr_s)
    resumed.set_state(first.get_state())
    np.testing.assert_array_equal(resumed.update(vols[4].data, times, vols[4].seq, vols[4].tr_s), streamed[4])


def test_a_volume_without_slice_times_passes_as_it_is():
    timer = SliceTimer()
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    for seq in range(3):
        np.testing.assert_array_equal(timer.update(data + seq, None, seq, 2.0), data + seq)


def test_slice_times_travel_on_the_wire_and_bad_ones_are_refused():
    data = np.zeros((4, 4, 3), np.float32)
    vol = Volume(data, np.eye(4), 0, 2.0, 1e9, "s", "r", slice_times_s=(0.0, 1.0, 0.5))
    back = wire.decode_volume(wire.decode(wire.encode_volume(vol)))
    assert back.slice_times_s == (0.0, 1.0, 0.5)
    assert (
        wire.decode_volume(
            wire.decode(wire.encode_volume(Volume(data, np.eye(4), 0, 2.0, 1e9)))
        ).slice_times_s
        is None
    )
    header = json.loads(bytes(wire.encode_volume(vol)[1]))
    for bad in ([0.0, 1.0], [0.0, -1.0, 0.5], [0.0, "1", 0.5], [0.0, True, 0.5], [0.0, 25.0, 0.5]):
        frames = wire.encode_volume(vol)
        frames[1] = json.dumps({**header, "slice_times_s": bad}).encode()
        with pytest.raises(ProtocolError, match="slice_times_s"):
            wire.decode_volume(wire.decode(frames))


def test_slice_times_come_from_a_bids_sidecar(tmp_path):
    img = nib.Nifti1Image(np.zeros((2, 2, 3, 2), np.int16), np.eye(4))
    img.header["pixdim"][4] = 2.0
    nib.save(img, tmp_path / "bold.nii.gz")
    assert next(iter_volumes(tmp_path / "bold.nii.gz")).slice_times_s is None
    (tmp_path / "bold.json").write_text(json.dumps({"SliceTiming": [0, 1.0, 0.5], "RepetitionTime": 2.0}))
    assert [v.slice_times_s for v in iter_volumes(tmp_path / "bold.nii.gz")] == [(0.0, 1.0, 0.5)] * 2
    (tmp_path / "bold.json").write_text(json.dumps({"SliceTiming": [0, 1.0]}))
    with pytest.raises(VolumeError, match="SliceTiming must be 3 numbers"):
        next(iter_volumes(tmp_path / "bold.nii.gz"))
