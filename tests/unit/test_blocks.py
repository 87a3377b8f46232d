"""Block decoding: running rankings during a block and per-condition windows, against numpy."""

import numpy as np

from rtdecode.models.bank import CandidateBank
from rtdecode.pipeline.blocks import BlockDecoder
from rtdecode.pipeline.chain import Result
from rtdecode.pipeline.ranking import Identifier
from rtdecode.volume import Stage, Volume
from rtdecode.wire.markers import Marker

TR = 2.0
T0 = 10**12  # monotonic ns of volume 0's acquisition


def _setup(rng, **kwargs):
    bank = CandidateBank([f"c{i}" for i in range(10)], {"fc": rng.standard_normal((10, 6))})
    ident = Identifier(bank, {"fc": slice(0, 6)}, k=3, precision="float32")
    return bank, BlockDecoder(ident, hrf_shift_s=0.0, **kwargs)


def _result(seq, pred):
    vol = Volume(np.zeros((2, 2, 2)), np.eye(4), seq, TR, 0.0)
    vol.stamps[Stage.ACQUIRED] = T0 + int(seq * TR * 1e9)
    return Result(vol, "ok", predictions=pred[None, :], x=np.zeros(3))


def _rank(bank, mean_pred, label):
    r = np.array([np.corrcoef(mean_pred, c)[0, 1] for c in bank.features["fc"]])
    return 1 + int((r > r[bank.labels.index(label)]).sum())


def test_a_running_block_is_ranked_after_each_volume_then_once_final():
    rng = np.random.default_rng(0)
    bank, dec = _setup(rng)
    preds = rng.standard_normal((8, 6))
    dec.add(_result(0, preds[0]), False)  # the clock starts
    dec.add_marker(Marker("start", T0 + int(1.9 * TR * 1e9), "c3", "imagery"))  # block = volumes 2..4
    dec.add_marker(Marker("end", T0 + int(5.0 * TR * 1e9)))
    out = {seq: dec.add(_result(seq, preds[seq]), False) for seq in range(1, 8)}
    assert out[1] == [] and out[5] == [] and out[6] == []
    for seq in (2, 3):  # in progress: the volumes so far, ranked
        (running,) = out[seq]
        assert running.running and running.seqs == list(range(2, seq + 1))
        expected = _rank(bank, preds[2 : seq + 1].mean(0), "c3")
        assert running.label_rank[0, 0] == expected
    (final,) = out[4]  # the last volume completes it: one final result, no running one
    assert not final.running and final.seqs == [2, 3, 4]
    np.testing.assert_allclose(final.predictions[0], preds[2:5].mean(0), rtol=1e-6)
    assert final.label_rank[0, 0] == _rank(bank, preds[2:5].mean(0), "c3")


def test_a_condition_window_takes_the_trial_after_its_cue():
    rng = np.random.default_rng(1)
    bank, dec = _setup(rng, windows={"imagery": (2 * TR, 5 * TR)}, running=False)
    preds = rng.standard_normal((12, 6))
    dec.add(_result(0, preds[0]), False)
    dec.add_marker(Marker("start", T0 + int(1.0 * TR * 1e9), "c5", "imagery"))  # the cue, volume 1
    dec.add_marker(Marker("end", T0 + int(9.0 * TR * 1e9)))  # the trial's end, after rating and rest
    finals = [b for seq in range(1, 12) for b in dec.add(_result(seq, preds[seq]), False)]
    (block,) = finals
    assert block.seqs == [3, 4, 5]  # 2 TR to 5 TR after the cue, not to the end marker
    assert block.label_rank[0, 0] == _rank(bank, preds[3:6].mean(0), "c5")
