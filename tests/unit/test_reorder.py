"""ReorderBuffer: volumes of a series back in index order within a short wait, gaps given up on."""

import numpy as np
import pytest

from rtdecode.pipeline.reorder import ReorderBuffer
from rtdecode.volume import Volume


def _vol(seq, series="run-1"):
    return Volume(np.zeros((2, 2, 2), np.int16), np.eye(4), seq, 1.0, 0.0, "s", series)


def _seqs(vols):
    return [v.seq for v in vols]


def test_in_order_volumes_pass_at_once_and_a_swapped_pair_is_put_back_in_order():
    buf = ReorderBuffer(0.1)
    assert _seqs(buf.push(_vol(0), 0.0)) == [0]
    assert _seqs(buf.push(_vol(1), 0.0)) == [1]
    assert buf.push(_vol(3), 0.01) == [] and buf.next_deadline() == pytest.approx(0.11)
    assert _seqs(buf.push(_vol(2), 0.02)) == [2, 3]
    assert buf.next_deadline() is None


def test_a_real_gap_is_given_up_after_the_wait_and_late_volumes_go_on_to_be_refused():
    buf = ReorderBuffer(0.1)
    buf.push(_vol(0), 0.0)
    assert buf.push(_vol(2), 1.0) == [] and buf.push(_vol(4), 1.05) == []
    assert buf.due(1.09) == []
    assert _seqs(buf.due(1.1)) == [2]  # 1 never came; 3 may still come for 4
    assert _seqs(buf.push(_vol(3), 1.12)) == [3, 4]
    assert _seqs(buf.push(_vol(1), 1.2)) == [1]  # too late: passed on, the pipeline refuses it by name
    assert _seqs(buf.push(_vol(5), 1.3)) == [5]


def test_a_new_series_or_a_restart_releases_what_was_held_first():
    buf = ReorderBuffer(10.0)
    buf.push(_vol(0), 0.0)
    buf.push(_vol(5), 0.1)
    assert _seqs(buf.push(_vol(0, "run-2"), 0.2)) == [5, 0]
    buf.push(_vol(3, "run-2"), 0.3)
    assert _seqs(buf.push(_vol(0, "run-2"), 0.4)) == [3, 0]  # the scanner restarted the series
    buf.push(_vol(2, "run-2"), 0.5)
    assert _seqs(buf.flush()) == [2] and buf.flush() == []


def test_no_wait_passes_everything_through_and_bad_waits_are_refused():
    buf = ReorderBuffer(0.0)
    assert [_seqs(buf.push(_vol(s), 0.0)) for s in (0, 2, 1)] == [[0], [2], [1]]
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="wait_s must be >= 0"):
            ReorderBuffer(bad)
