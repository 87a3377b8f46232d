import numpy as np
import pytest

from rtdecode.pipeline.preprocess import Preprocessor


def test_baseline_then_zscore_against_baseline_statistics():
    rng = np.random.default_rng(0)
    base = rng.normal(100, 5, (8, 20))
    pre = Preprocessor(baseline_volumes=8, detrend_tau_s=1e9)
    assert all(pre.update(b, 2.0) is None for b in base)
    assert pre.ready
    x = rng.normal(100, 5, 20)
    z = pre.update(x, 2.0)
    np.testing.assert_allclose(z, (x - base.mean(0)) / base.std(0, ddof=1), rtol=1e-5)


def test_moving_average_removes_a_slow_drift():
    t = np.arange(300) * 2.0
    x = (1000 + 0.5 * t)[:, None] + np.random.default_rng(1).normal(0, 1, (300, 3))
    pre = Preprocessor(baseline_volumes=10, detrend_tau_s=20.0)
    z = np.array([pre.update(v, 2.0) for v in x][100:])
    base = x[:10]
    undetrended = (x[100:] - base.mean(0)) / base.std(0, ddof=1)
    # a linear drift leaves only a constant lag of slope * tau behind the moving average
    assert np.abs(z.mean()) < 0.1 * np.abs(undetrended.mean())


def test_output_is_causal():
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, (40, 5))
    y = x.copy()
    y[30:] += 100  # change the future only
    a, b = Preprocessor(5, 30.0), Preprocessor(5, 30.0)
    za = [a.update(v, 1.0) for v in x]
    zb = [b.update(v, 1.0) for v in y]
    for k in range(5, 30):
        np.testing.assert_array_equal(za[k], zb[k])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"baseline_volumes": 1}, "baseline_volumes"), ({"detrend_tau_s": 0}, "detrend_tau_s")],
)
def test_parameters_are_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Preprocessor(**kwargs)


def test_the_labs_per_run_zscore_and_training_statistics_modes():
    rng = np.random.default_rng(4)
    x = rng.normal(100, 5, (20, 30)) + np.linspace(0, 10, 20)[:, None]  # a drifting run
    per_run = Preprocessor(6, normalise="baseline")
    out = [per_run.update(v, 2.0) for v in x]
    assert all(o is None for o in out[:6])
    mean, sd = x[:6].mean(0), x[:6].std(0, ddof=1)
    np.testing.assert_allclose(np.array(out[6:]), (x[6:] - mean) / sd, rtol=1e-5)  # no detrending
    as_trained = Preprocessor(6, normalise="training")
    assert as_trained.ready
    np.testing.assert_array_equal(as_trained.update(x[0], 2.0), x[0].astype(np.float32))
    with pytest.raises(ValueError, match="normalise must be one of"):
        Preprocessor(6, normalise="zscore")
