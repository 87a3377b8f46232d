import numpy as np
import pytest

from rtdecode.models.bank import CandidateBank
from rtdecode.offline.evaluate import block_truth, identification_table, per_category
from rtdecode.offline.semantic import superclass_rates
from rtdecode.offline.timecourse import peak_times, time_course


def test_superclass_rates_on_a_case_worked_by_hand():
    groups = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array(
        [
            [0.9, 0.8, 0.1, 0.7, 0.2, 0.3],  # true 0: best other 1 (same), top-2 {1, 3}
            [0.1, 0.2, 0.3, 0.9, 0.8, 0.7],  # true 3: best other 4 (same), top-2 {4, 5}
            [0.5, 0.1, 0.2, 0.9, 0.3, 0.1],  # true 1: best other 3 (other), top-2 {3, 0}
        ]
    )
    r = superclass_rates(scores, np.array([0, 3, 1]), groups, ks=(1, 2))
    assert r["top1_rate"] == pytest.approx(2 / 3)
    assert r["top2_rate"] == pytest.approx((1 / 2 + 2 / 2 + 1 / 2) / 3)
    assert r["chance"] == pytest.approx(2 / 5) and r["n"] == 3


def test_superclass_rates_match_a_brute_force_count():
    rng = np.random.default_rng(0)
    scores, truth, groups = rng.standard_normal((30, 40)), rng.integers(0, 40, 30), rng.integers(0, 6, 40)
    r = superclass_rates(scores, truth, groups)
    top5 = []
    for s, t in zip(scores, truth):
        ranked = sorted((c for c in range(40) if c != t), key=lambda c: -s[c])
        top5.append(np.mean([groups[c] == groups[t] for c in ranked[:5]]))
    assert r["top5_rate"] == pytest.approx(np.mean(top5))


def _bank(rng, n=12, units=8):
    return CandidateBank([f"c{i}" for i in range(n)], {"fc": rng.standard_normal((n, units))})


def test_time_course_equals_a_direct_computation():
    rng = np.random.default_rng(1)
    bank, tr = _bank(rng), 2.0
    f = rng.standard_normal((60, 8))
    f[[5, 17]] = np.nan  # volumes that were not decoded
    onsets, truth = np.array([4.0, 20.0, 40.0, 100.0]), np.array([3, 7, 3, 1])  # the last beyond the series
    lags = np.arange(-2.0, 12.0, tr)
    out = time_course({("VC", "fc"): f}, tr, onsets, truth, bank, lags)["VC"]["fc"]
    raw = bank.features["fc"]
    for j, lag in enumerate(lags):
        rs, ids = [], []
        for on, t in zip(onsets, truth):
            k = int(round((on + lag) / tr))
            if k >= len(f) or not np.isfinite(f[k]).all():
                continue
            r = np.array([np.corrcoef(f[k], c)[0, 1] for c in raw])
            rs.append(r[t])
            ids.append(np.mean([r[t] >= r[c] for c in range(len(raw)) if c != t]))
        assert out["n"][j] == len(rs)
        assert out["feature_correlation"][j] == pytest.approx(np.mean(rs), abs=1e-6)  # float32 bank
        assert out["identification"][j] == pytest.approx(np.mean(ids))
    above = np.clip(np.array(out["identification"]) - 0.5, 0, None)
    assert peak_times({"fc": out}, lags)["fc"] == pytest.approx((lags * above).sum() / above.sum())
    flat = {"fc": {"identification": [0.5, 0.6, 0.9, 0.9, 0.6, 0.4]}}  # a plateau: its centre
    centre = (3 * 0.1 + 6 * 0.4 + 9 * 0.4 + 12 * 0.1) / 1.0
    assert peak_times(flat, np.arange(6.0) * 3)["fc"] == pytest.approx(centre)


def test_a_categorys_blocks_are_averaged_before_identification():
    rng = np.random.default_rng(2)
    bank = _bank(rng)
    avg, cats = per_category(np.array([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]]), np.array([4, 2, 4]))
    np.testing.assert_array_equal(cats, [2, 4])
    np.testing.assert_array_equal(avg, [[3.0, 2.0], [3.0, 2.5]])
    # Two noisy blocks of one category: their average is identified, not each block.
    truth_feat = bank.features["fc"][5]
    f = np.vstack([truth_feat + rng.normal(0, 0.3, 8), truth_feat + rng.normal(0, 0.3, 8)])
    times, onsets = np.array([0.0, 3.0]), np.array([0.0, 3.0])
    by_block = identification_table({("VC", "fc"): f}, times, onsets, 3.0, 0.0, np.array([5, 5]), bank)
    by_cat = identification_table({("VC", "fc"): f}, times, onsets, 3.0, 0.0, np.array([5, 5]), bank, True)
    mean_pred = f.mean(0, keepdims=True)
    r = np.array([np.corrcoef(mean_pred[0], c)[0, 1] for c in bank.features["fc"]])
    assert by_cat["VC"]["fc"] == pytest.approx(np.mean([r[5] >= r[c] for c in range(12) if c != 5]))
    assert 0.5 < by_block["VC"]["fc"] <= 1.0


def test_cues_are_not_trials_and_training_categories_leave_the_candidates(tmp_path):
    bank = _bank(np.random.default_rng(3))
    (tmp_path / "events.tsv").write_text(
        "onset\tduration\ttrial_type\tcategory_label\n"
        "24\t3\tcue\tc4\n27\t15\timagery\tc4\n48\t3\tcue\tc9\n51\t15\timagery\tc9\n"
    )
    onsets, duration, truth = block_truth(tmp_path / "events.tsv", bank)
    np.testing.assert_array_equal(onsets, [27, 51])
    assert duration == 15 and list(truth) == [4, 9]
    smaller = bank.without({"c0", "c1"})
    assert smaller.labels == [f"c{i}" for i in range(2, 12)]
    np.testing.assert_array_equal(smaller.features["fc"], bank.features["fc"][2:])
