"""Every denoising step on the shared real scanner data: streamed equals an offline computation.

The Siemens mosaics, Siemens XA30 enhanced (multiband) files and GE slices (ten volumes each,
tests/data) go through the pipeline one by
one with motion correction, despiking, smoothing inside the mask and every nuisance regressor but
the physiological ones (no recordings come with these series; the physiological regressors are
checked live against offline on the simulator, test_record). The offline reference is written
from the definitions over the whole motion-corrected series: despiking as its recursion, the
smoothing as a whole-grid normalised Gaussian (scipy), aCompCor as scikit-learn's PCA of the
detrended baseline, and the regression as a ridge refitted on every prefix of the series.
Tissue masks: the series has none, so the brightest brain voxels stand in for CSF and the
30-50 % intensity band for white matter (the arithmetic does not care which voxels they are).
"""

from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from scipy.signal import detrend
from sklearn.decomposition import PCA

from rtdecode.config import PreprocessConfig
from rtdecode.pipeline.chain import Pipeline, sampled_index
from rtdecode.pipeline.denoise import Denoiser
from rtdecode.pipeline.motion import MotionCorrector
from rtdecode.pipeline.preprocess import Preprocessor
from rtdecode.scanner.assemble import read_folder
from rtdecode.volume import Volume

DATA = Path(__file__).parents[1] / "data"
WARM, FWHM, K = 4, 6.0, 2
REGRESSORS = ["drift", "motion", "motion_derivatives", "global", "wm", "csf", "acompcor"]


def _masks(first: np.ndarray):
    brain = first > 0.3 * np.percentile(first, 99)
    level = np.where(brain, first, np.nan)
    lo, hi, top = np.nanpercentile(level, [30, 50, 95])
    csf = brain & (first >= top)
    wm = brain & (first >= lo) & (first < hi)
    return brain & ~csf & ~wm, {"wm": wm, "csf": csf}


def _despike_reference(x, tr):
    level, var = x[:WARM].mean(0), x[:WARM].var(0, ddof=1)
    out, a = list(x[:WARM]), min(1.0, tr / 30.0)
    for t in range(WARM, len(x)):
        bound = 4.0 * np.sqrt(var)
        out.append(np.where(np.abs(x[t] - level) > bound, level, x[t]))
        dev = np.clip(x[t] - level, -bound, bound)
        level, var = level + a * dev, (1 - a) * (var + a * dev**2)
    return np.array(out)


def _smooth_reference(x, mask, affine):
    sigma = FWHM / np.sqrt(8 * np.log(2)) / np.linalg.norm(affine[:3, :3], axis=0)
    weight = gaussian_filter(mask.astype(np.float64), sigma, mode="constant", truncate=3.0)[mask]
    out = []
    for row in x:
        grid = np.zeros(mask.shape)
        grid[mask] = row
        out.append(gaussian_filter(grid, sigma, mode="constant", truncate=3.0)[mask] / weight)
    return np.array(out)


@pytest.mark.filterwarnings("ignore::UserWarning")  # nibabel's DICOM readers call themselves experimental
@pytest.mark.parametrize("vendor", ["siemens", "siemens-xa30-enhanced", "ge"])
def test_every_denoising_step_streamed_equals_offline_on_real_data(vendor):
    vols = [
        Volume(v.data, v.affine, v.seq, v.tr_s, 0.0, "real", v.series) for v in read_folder(DATA / vendor)
    ]
    assert len(vols) == 10
    mask, tissue = _masks(vols[0].data.astype(np.float64))
    affine, tr = vols[0].affine, vols[0].tr_s
    pc = PreprocessConfig(baseline_volumes=WARM, smoothing_fwhm_mm=FWHM)
    pc.despike.enabled = True
    pc.nuisance.regressors, pc.nuisance.compcor_components = REGRESSORS, K
    denoiser = Denoiser.from_config(pc, mask, affine, tissue)
    index = sampled_index(mask, denoiser)
    pipe = Pipeline(mask, Preprocessor.from_config(pc), MotionCorrector(index), denoiser=denoiser)
    streamed = np.array([pipe.process(v).values for v in vols], np.float64)

    # Offline: the same motion correction (its own instance), then the definitions over the series.
    mc = MotionCorrector(index)
    corrected, params = zip(*((v, e.params) for v, e in (mc.correct(v.data, v.affine) for v in vols)))
    corrected, motion = np.array(corrected, np.float64), np.array(params)
    n_a, n_wm = int(mask.sum()), int(tissue["wm"].sum())
    x = _smooth_reference(_despike_reference(corrected[:, :n_a], tr), mask, affine)
    wm, csf = corrected[:, n_a : n_a + n_wm], corrected[:, n_a + n_wm :]
    both = np.hstack([wm, csf])
    pca = PCA(K).fit(detrend(both[:WARM], axis=0))
    comps = (
        (both - both[:WARM].mean(0))
        @ pca.components_.T
        / np.sqrt(pca.explained_variance_ * (WARM - 1) / WARM)
    )
    comps[:WARM] = 0.0
    # Component signs are arbitrary: match the streamed run's (a sign flip does not change a fit).
    t = np.arange(len(vols))
    design = np.column_stack(
        [
            np.ones(len(t)),
            t * tr / 60,
            motion,
            np.vstack([np.zeros(6), np.diff(motion, axis=0)]),
            100 * (x.mean(1) / x[0].mean() - 1),
            100 * (wm.mean(1) / wm[0].mean() - 1),
            100 * (csf.mean(1) / csf[0].mean() - 1),
            comps,
        ]
    )
    penalty = np.diag([1e-8] + [1.0] * (design.shape[1] - 1))
    expected = np.array(
        [
            x[k]
            - design[k, 1:]
            @ np.linalg.solve(design[: k + 1].T @ design[: k + 1] + penalty, design[: k + 1].T @ x[: k + 1])[
                1:
            ]
            for k in range(len(t))
        ]
    )
    scale = np.abs(x).max()
    np.testing.assert_allclose(streamed, expected, rtol=1e-5, atol=1e-5 * scale)
    assert not np.allclose(streamed, corrected[:, :n_a], rtol=1e-3)  # the steps did something
