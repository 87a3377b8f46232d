"""Checkpoint: states kept atomically, the reference written once, other files refused by name."""

import numpy as np
import pytest

from rtdecode.errors import CheckpointError
from rtdecode.io.checkpoint import Checkpoint


def _state(seq, reference):
    return {
        "series": np.array('["s", "r"]'),
        "last_seq": np.array(seq),
        "pre/mean": np.arange(3.0) + seq,
        "reference/image": reference,
        "reference/affine": np.eye(4),
    }


def test_the_last_state_comes_back_with_its_reference(tmp_path):
    ck = Checkpoint(tmp_path / "ck")
    assert ck.restore() is None
    ck.save(None)  # nothing yet
    assert not (tmp_path / "ck").exists()
    ref = np.random.default_rng(0).normal(size=(4, 4, 3))
    for seq in range(3):
        ck.save(_state(seq, ref))
    back = Checkpoint(tmp_path / "ck").restore()
    assert int(back["last_seq"]) == 2 and str(back["series"]) == '["s", "r"]'
    np.testing.assert_array_equal(back["pre/mean"], [2.0, 3.0, 4.0])
    np.testing.assert_array_equal(back["reference/image"], ref)
    assert not list((tmp_path / "ck").glob("*.tmp"))


def test_the_reference_is_written_only_when_it_changes(tmp_path):
    ck = Checkpoint(tmp_path)
    ref = np.ones((2, 2, 2))
    ck.save(_state(0, ref))
    written = (tmp_path / "reference.npz").stat().st_mtime_ns
    (tmp_path / "reference.npz").write_bytes((tmp_path / "reference.npz").read_bytes())  # same bytes
    touched = (tmp_path / "reference.npz").stat().st_mtime_ns
    ck.save(_state(1, ref))
    assert (tmp_path / "reference.npz").stat().st_mtime_ns == touched >= written
    ck.save(_state(2, np.zeros((2, 2, 2))))
    np.testing.assert_array_equal(Checkpoint(tmp_path).restore()["reference/image"], 0)


def test_a_file_of_another_kind_is_refused_by_name(tmp_path):
    np.savez(tmp_path / "state.npz", meta=np.array('{"format": "other", "version": 7}'))
    with pytest.raises(
        CheckpointError, match="expected rtdecode-checkpoint version 2, got 'other' version 7"
    ):
        Checkpoint(tmp_path).restore()
    (tmp_path / "state.npz").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="cannot read the checkpoint"):
        Checkpoint(tmp_path).restore()
