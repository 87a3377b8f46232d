"""Pipeline: the stage chain on small synthetic volumes, against computations done here."""

import numpy as np
import pytest

from rtdecode.errors import VolumeError
from rtdecode.models.bank import CandidateBank
from rtdecode.models.linear import LinearBundle
from rtdecode.pipeline.chain import Pipeline
from rtdecode.pipeline.preprocess import Preprocessor
from rtdecode.pipeline.ranking import Identifier
from rtdecode.volume import NOT_REACHED, Stage, Volume

SHAPE = (6, 5, 4)
BASELINE = 3


def _parts(rng):
    mask = np.zeros(SHAPE, bool)
    mask.flat[rng.choice(mask.size, 40, replace=False)] = True
    rois = {"A": np.arange(0, 25), "B": np.arange(15, 40)}
    weights = {r: rng.normal(0, 1, (25, 7)).astype(np.float32) for r in rois}
    weights["A"] *= rng.permuted(np.arange(25) < 5 * np.ones((7, 1)), axis=1).T  # 5 voxels a unit: sparse
    intercepts = {r: rng.normal(0, 1, 7).astype(np.float32) for r in rois}
    bundle = LinearBundle(mask, np.eye(4), rois, ["l1", "l2"], [3, 4], weights, intercepts)
    assert list(bundle.sparse) == ["A"]
    bank = CandidateBank(
        [f"c{i}" for i in range(12)], {"l1": rng.normal(size=(12, 3)), "l2": rng.normal(size=(12, 4))}
    )
    return bundle, bank


def _pipeline(bundle, bank):
    ident = Identifier(bank, bundle.layer_slices, k=4, precision="float32")
    return Pipeline(bundle.mask, Preprocessor(BASELINE, 30.0), None, bundle, ident)


def _volumes(rng, n, series="r", start=0):
    base = rng.uniform(500, 1500, SHAPE)
    return [
        Volume(base + rng.normal(0, 20, SHAPE), np.eye(4), start + k, 2.0, 1e9 + 2 * k, "s", series)
        for k in range(n)
    ]


def test_each_stage_runs_in_order_and_the_outputs_are_the_bundle_and_the_ranking_of_x():
    rng = np.random.default_rng(0)
    bundle, bank = _parts(rng)
    pipe = _pipeline(bundle, bank)
    results = [pipe.process(v) for v in _volumes(rng, 8)]
    assert [r.status for r in results] == ["baseline"] * BASELINE + ["ok"] * 5
    for r in results[BASELINE:]:
        s = r.volume.stamps
        assert NOT_REACHED not in s[[Stage.MOTION, Stage.PREPROCESSED, Stage.DECODED, Stage.IDENTIFIED]]
        assert s[Stage.MOTION] <= s[Stage.PREPROCESSED] <= s[Stage.DECODED] <= s[Stage.IDENTIFIED]
        np.testing.assert_array_equal(r.values, r.volume.data[bundle.mask].astype(np.float32))
        for i, roi in enumerate(bundle.roi_names):
            expected = r.x[bundle.rois[roi]] @ bundle.weights[roi] + bundle.intercepts[roi]
            np.testing.assert_allclose(r.predictions[i], expected, rtol=1e-5, atol=1e-5)
            for j, (layer, sl) in enumerate(bundle.layer_slices.items()):
                raw = np.array([np.corrcoef(r.predictions[i, sl], f)[0, 1] for f in bank.features[layer]])
                np.testing.assert_array_equal(r.top_indices[i, j], np.argsort(-raw)[:4])
                np.testing.assert_allclose(r.top_scores[i, j], np.sort(raw)[::-1][:4], atol=1e-5)


@pytest.mark.parametrize("precision", ["int8", "float32"])
def test_volumes_ranked_together_get_the_results_of_volumes_processed_one_by_one(precision):
    rng = np.random.default_rng(2)
    bundle, bank = _parts(rng)
    vols = _volumes(rng, 12)
    pipes = [
        Pipeline(
            bundle.mask,
            Preprocessor(BASELINE, 30.0),
            None,
            bundle,
            Identifier(bank, bundle.layer_slices, 4, precision),
        )
        for _ in range(2)
    ]
    alone = [pipes[0].process(v) for v in vols]
    together = []
    for part in (vols[:2], vols[2:7], vols[7:]):  # the baseline and decoded volumes mixed
        batch = [pipes[1].prepare(v) for v in part]
        pipes[1].decode_and_rank(batch)
        together += batch
    assert [r.status for r in together] == [r.status for r in alone]
    for a, b in zip(alone, together):
        for name in ("predictions", "top_indices", "top_scores"):
            x, y = getattr(a, name), getattr(b, name)
            assert (x is None) == (y is None)
            if x is not None:
                np.testing.assert_array_equal(x, y)
        if b.top_indices is not None:
            assert b.volume.stamps[Stage.IDENTIFIED] >= b.volume.stamps[Stage.DECODED]
    # The second batch's first decoded volume is ranked once the batch's last one is decoded.
    assert together[BASELINE].volume.stamps[Stage.IDENTIFIED] >= together[6].volume.stamps[Stage.DECODED]


def test_refused_volumes_leave_the_state_alone_and_gaps_are_counted():
    rng = np.random.default_rng(1)
    pipe = _pipeline(*_parts(rng))
    vols = _volumes(rng, 6)
    pipe.process(vols[0])
    bad = [
        Volume(np.full(SHAPE, np.nan), np.eye(4), 1, 2.0, 0.0, "s", "r"),
        Volume(np.zeros(SHAPE), np.eye(4), 1, 2.0, 0.0, "s", "r"),
        Volume(np.ones((6, 5, 3)), np.eye(4), 1, 2.0, 0.0, "s", "r"),
        Volume(vols[1].data, np.diag([2.0, 2, 2, 1]), 1, 2.0, 0.0, "s", "r"),
        vols[0],
    ]
    for vol, match in zip(bad, ["non-finite", "every voxel is zero", "shape", "affine differs", "repeats"]):
        with pytest.raises(VolumeError, match=match):
            pipe.process(vol)
    assert pipe.process(vols[1]).dropped_before == 0
    assert pipe.process(vols[4]).dropped_before == 2


def test_a_new_series_restarts_preprocessing_and_counts_as_a_series():
    rng = np.random.default_rng(2)
    pipe = _pipeline(*_parts(rng))
    first = [pipe.process(v) for v in _volumes(rng, 5, "r1")]
    second = [pipe.process(v) for v in _volumes(rng, 5, "r2")]
    assert {r.series_index for r in first} == {1} and {r.series_index for r in second} == {2}
    assert [r.status for r in second] == ["baseline"] * BASELINE + ["ok"] * 2


def test_a_restored_state_continues_exactly_where_the_first_pipeline_was():
    rng = np.random.default_rng(3)
    bundle, bank = _parts(rng)
    vols = _volumes(rng, 10)
    whole = _pipeline(bundle, bank)
    expected = [whole.process(v) for v in vols]
    first = _pipeline(bundle, bank)
    assert first.get_state() is None
    for v in vols[:6]:
        first.process(v)
    second = _pipeline(bundle, bank)
    assert second.set_state(first.get_state()) == {"session": "s", "series": "r", "last_seq": 5}
    for v, exp in zip(vols[6:], expected[6:]):
        got = second.process(v)
        assert got.dropped_before == 0
        np.testing.assert_array_equal(got.predictions, exp.predictions)
