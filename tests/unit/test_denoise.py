"""Causal denoising: each step streamed equals its offline reference, and recovers a known truth."""

import numpy as np
import pytest

from rtdecode.config import PreprocessConfig
from rtdecode.pipeline.denoise import Denoiser, Despiker, NuisanceRegressor


def _series(n=80, v=300, seed=0):
    """Voxels = signal + drift + motion-driven artefact + noise, with the truth kept apart."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    white = rng.standard_normal((n + 2, v))
    signal = (white[:-2] + white[1:-1] + white[2:]) / np.sqrt(3)  # "neural" fluctuations, a few TRs long
    motion = np.column_stack([np.sin(t / 7.0 + k) * (0.3 + 0.1 * k) for k in range(6)]) + rng.normal(
        0, 0.02, (n, 6)
    )
    loadings = rng.normal(0, 2.0, (6, v))
    drift = np.outer(t / 30.0, rng.normal(0, 3.0, v))
    base = 1000 + rng.normal(0, 50, v)
    x = base + signal + drift + motion @ loadings + rng.normal(0, 0.3, (n, v))
    return x, signal, motion


def test_nuisance_regression_streamed_equals_a_ridge_refitted_on_every_prefix():
    x, _, motion = _series()
    tr = 2.0
    reg = NuisanceRegressor(["drift", "motion", "motion_derivatives", "global"], penalty=5.0)
    streamed = np.array([reg.update(x[t], motion[t], 100 + t, tr) for t in range(len(x))])
    # Independent: rebuild the design, and for each volume solve the penalised normal equations
    # on every volume so far.
    t = np.arange(len(x))
    deriv = np.vstack([np.zeros(6), np.diff(motion, axis=0)])
    glob = 100 * (x.mean(1) / x[0].mean() - 1)
    design = np.column_stack([np.ones(len(x)), t * tr / 60, motion, deriv, glob])
    penalty = np.diag([1e-8] + [5.0] * (design.shape[1] - 1))
    for k in (0, 1, 5, 20, 79):
        r = design[: k + 1]
        beta = np.linalg.solve(r.T @ r + penalty, r.T @ x[: k + 1])
        expected = x[k] - design[k, 1:] @ beta[1:]
        np.testing.assert_allclose(streamed[k], expected, rtol=1e-9, atol=1e-6)


def test_nuisance_regression_recovers_the_signal_under_motion_and_drift():
    x, signal, motion = _series(n=200)
    reg = NuisanceRegressor(["drift", "motion"])
    cleaned = np.array([reg.update(x[t], motion[t], t, 2.0) for t in range(len(x))])

    def corr(a, b):  # mean over voxels of the temporal correlation, after the first 40 volumes
        a, b = a[40:] - a[40:].mean(0), b[40:] - b[40:].mean(0)
        return float(np.mean((a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))))

    before, after = corr(x, signal), corr(cleaned, signal)
    assert after > 0.75 and after > before + 0.4, (before, after)


def test_despiking_replaces_spikes_only_and_counts_them():
    rng = np.random.default_rng(1)
    n, v = 120, 500
    clean = 1000 + rng.normal(0, 1.0, (n, v)).cumsum(0) * 0.1 + rng.normal(0, 1.0, (n, v))
    spiky = clean.copy()
    hits = rng.random((n, v)) < 0.01
    hits[:8] = False  # not in the warm-up
    spiky[hits] += rng.choice([-1, 1], hits.sum()) * rng.uniform(15, 40, hits.sum())
    d = Despiker(threshold=4.0, tau_s=30.0, warmup=8)
    out, counts = zip(*(d.update(spiky[t], 2.0) for t in range(n)))
    out = np.array(out)
    assert sum(counts) >= 0.95 * hits.sum() and sum(counts) <= 1.2 * hits.sum()
    # The spikes' error is cut by an order of magnitude; the rest is left nearly as it was.
    assert np.abs(out - clean)[hits].mean() < 0.1 * np.abs(spiky - clean)[hits].mean()
    assert np.abs(out - clean)[~hits].mean() < 0.01
    np.testing.assert_array_equal(out[:8], spiky[:8])


def test_despiker_streamed_equals_its_offline_definition():
    # Offline reference written from the definition (vectorised per volume, not the class).
    rng = np.random.default_rng(2)
    x = 500 + rng.normal(0, 1, (60, 40))
    x[30, 5] += 50
    d = Despiker(threshold=3.0, tau_s=20.0, warmup=6)
    streamed = np.array([d.update(x[t], 2.0)[0] for t in range(len(x))])
    level, var = x[:6].mean(0), x[:6].var(0, ddof=1)
    expected = list(x[:6])
    a = 2.0 / 20.0
    for t in range(6, len(x)):
        bound = 3.0 * np.sqrt(var)
        spike = np.abs(x[t] - level) > bound
        expected.append(np.where(spike, level, x[t]))
        dev = np.clip(x[t] - level, -bound, bound)
        level = level + a * dev
        var = (1 - a) * (var + a * dev**2)
    np.testing.assert_allclose(streamed, np.array(expected), rtol=1e-12)
    assert abs(streamed[30, 5] - 500) < 3


def test_a_denoiser_resumed_from_its_state_continues_exactly():
    x, _, motion = _series(n=40, v=50)
    pc = PreprocessConfig(baseline_volumes=5)
    pc.despike.enabled, pc.nuisance.regressors = True, ["drift", "motion", "global"]
    whole = Denoiser.from_config(pc, np.ones((50, 1, 1), bool), np.eye(4))
    first = Denoiser.from_config(pc, np.ones((50, 1, 1), bool), np.eye(4))
    out = [whole.update(x[t], motion[t], t, 2.0).values for t in range(40)]
    for t in range(20):
        first.update(x[t], motion[t], t, 2.0)
    resumed = Denoiser.from_config(pc, np.ones((50, 1, 1), bool), np.eye(4))
    resumed.set_state({k: np.array(v) for k, v in first.get_state().items()})
    again = [resumed.update(x[t], motion[t], t, 2.0).values for t in range(20, 40)]
    np.testing.assert_array_equal(np.array(again), np.array(out[20:]))


def test_denoising_is_off_by_default_and_refuses_bad_settings():
    assert Denoiser.from_config(PreprocessConfig(), np.ones((3, 1, 1), bool), np.eye(4)) is None
    with pytest.raises(ValueError, match="regressors must be some of"):
        NuisanceRegressor(["wobble"])
    with pytest.raises(ValueError, match="penalty > 0"):
        NuisanceRegressor(["drift"], penalty=0)
    with pytest.raises(ValueError, match="need motion correction"):
        NuisanceRegressor(["motion"]).update(np.ones(3), None, 0, 2.0)
    with pytest.raises(ValueError, match="threshold > 0"):
        Despiker(threshold=-1)


def test_smoothing_inside_the_mask_equals_an_explicit_normalised_convolution():
    from rtdecode.pipeline.denoise import MaskSmoother

    rng = np.random.default_rng(3)
    mask = rng.random((10, 9, 8)) < 0.5
    affine = np.diag([2.0, 3.0, 4.0, 1.0])  # anisotropic voxels, mm
    x = rng.normal(100, 10, mask.sum()).astype(np.float32)
    got = MaskSmoother(mask, affine, fwhm_mm=6.0).update(x)
    # Independent: every pair of mask voxels weighted by the Gaussian of their distance in mm,
    # cut at 3 sigma per axis as the separable filter is, normalised over the mask.
    sigma = 6.0 / np.sqrt(8 * np.log(2)) / np.array([2.0, 3.0, 4.0])
    radius = (3.0 * sigma + 0.5).astype(int)
    ijk = np.argwhere(mask)
    d = np.abs(ijk[:, None, :] - ijk[None, :, :])
    w = np.exp(-0.5 * ((d / sigma) ** 2).sum(-1)) * (d <= radius).all(-1)
    np.testing.assert_allclose(got, (w @ x) / w.sum(1), rtol=1e-5)
    # A level inside the mask stays that level, up to its edges.
    np.testing.assert_allclose(
        MaskSmoother(mask, affine, 6.0).update(np.full(mask.sum(), 7.0)), 7.0, rtol=1e-6
    )


def test_smoothing_a_small_mask_in_a_large_grid_equals_filtering_the_whole_grid():
    from scipy.ndimage import gaussian_filter

    from rtdecode.pipeline.denoise import MaskSmoother

    rng = np.random.default_rng(4)
    mask = np.zeros((40, 36, 30), bool)
    mask[12:20, 10:19, 8:14] = rng.random((8, 9, 6)) < 0.7  # the cropped box is far smaller
    x = rng.normal(50, 5, mask.sum()).astype(np.float32)
    affine = np.diag([3.0, 3.0, 3.5, 1.0])
    sigma = 8.0 / np.sqrt(8 * np.log(2)) / np.array([3.0, 3.0, 3.5])
    grid, ones = np.zeros(mask.shape, np.float32), mask.astype(np.float32)
    grid[mask] = x
    smooth, weight = (gaussian_filter(g, sigma, mode="constant", truncate=3.0)[mask] for g in (grid, ones))
    expected = smooth / weight
    np.testing.assert_allclose(MaskSmoother(mask, affine, 8.0).update(x), expected, rtol=1e-5)
