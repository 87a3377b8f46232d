"""Statistics against scipy and numpy's own implementations."""

import numpy as np
from scipy import stats

from rtdecode.numerics.stats import correlations, mean_column_correlation, normalise_rows, zscore


def test_zscore_uses_sample_statistics_and_leaves_constant_columns_finite():
    rng = np.random.default_rng(0)
    a = rng.normal(3, 2, (30, 5))
    a[:, 4] = 1.0
    z, mean, sd = zscore(a)
    np.testing.assert_allclose(z[:, :4], stats.zscore(a[:, :4], ddof=1))
    np.testing.assert_allclose(mean, a.mean(0))
    assert sd[4] == 1.0 and np.all(z[:, 4] == 0)


def test_correlations_are_pearson_r_with_every_candidate():
    rng = np.random.default_rng(1)
    pred, cand = rng.normal(size=(4, 50)), rng.normal(size=(9, 50))
    got = correlations(pred, normalise_rows(cand).astype(np.float32))
    expected = np.corrcoef(pred, cand)[:4, 4:]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.all(normalise_rows(np.ones((2, 5))) == 0)  # no variation: correlation 0


def test_mean_column_correlation_is_the_mean_of_per_column_pearson_r():
    rng = np.random.default_rng(2)
    true = rng.normal(size=(40, 6))
    pred = true + rng.normal(0, 1.0, true.shape)
    pred[:, 5] = 2.0  # constant: left out
    expected = np.mean([stats.pearsonr(pred[:, j], true[:, j])[0] for j in range(5)])
    np.testing.assert_allclose(mean_column_correlation(pred, true), expected)
    assert np.isnan(mean_column_correlation(np.ones((3, 2)), true[:3, :2]))
