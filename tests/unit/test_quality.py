"""Per-volume quality: each figure streamed equals the same figure computed offline with numpy."""

import numpy as np
import pytest

from rtdecode.pipeline.quality import QualityMonitor


def test_quality_streamed_equals_numpy_over_the_volumes_so_far():
    rng = np.random.default_rng(0)
    n, v = 30, 200
    x = 800 + rng.normal(0, 1, v) * 100 + rng.normal(0, 5, (n, v))
    fd = np.abs(rng.normal(0, 0.3, n))
    fd[0] = 0.0
    censored = fd > 0.4
    rois = {"A": np.arange(0, 120), "B": np.arange(100, 200)}
    q = QualityMonitor(rois, expected_volumes=50)
    got = [q.update(x[t], fd[t], bool(censored[t]), 2.0) for t in range(n)]
    for t in (0, 1, 2, 10, n - 1):
        g, seen = got[t], x[: t + 1]
        assert g.global_signal == pytest.approx(x[t].mean())
        if t == 0:
            assert g.dvars_pct is None
        else:
            dvars = 100 * np.sqrt(np.mean((x[t] - x[t - 1]) ** 2)) / x[t].mean()
            assert g.dvars_pct == pytest.approx(dvars, rel=1e-12)
        for name, index in rois.items():
            if t < 2:
                assert g.tsnr[name] is None
            else:
                tsnr = np.median(seen.mean(0)[index] / seen.std(0, ddof=1)[index])
                assert g.tsnr[name] == pytest.approx(tsnr, rel=1e-9)
        for level in (0.2, 0.3, 0.5):
            assert g.frames_under[f"{level:g}"] == pytest.approx(np.mean(fd[: t + 1] <= level))
        clean = (~censored[: t + 1]).sum() * 2.0 / 60
        assert g.clean_minutes == pytest.approx(clean)
        assert g.projected_clean_minutes == pytest.approx(clean + (50 - t - 1) * clean / (t + 1))
    assert QualityMonitor(rois).update(x[0], None, False, 2.0).projected_clean_minutes is None


def test_quality_resumed_from_its_state_continues_exactly():
    rng = np.random.default_rng(1)
    x = 100 + rng.normal(0, 1, (12, 20))
    rois = {"A": np.arange(20)}
    whole, first = QualityMonitor(rois, 12), QualityMonitor(rois, 12)
    expected = [whole.update(x[t], 0.1, False, 2.0) for t in range(12)]
    for t in range(6):
        first.update(x[t], 0.1, False, 2.0)
    resumed = QualityMonitor(rois, 12)
    resumed.set_state({k: np.array(v) for k, v in first.get_state().items()})
    assert [resumed.update(x[t], 0.1, False, 2.0) for t in range(6, 12)] == expected[6:]
