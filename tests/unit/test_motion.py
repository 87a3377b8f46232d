"""Motion correction against known transforms, an independent scipy estimate and the simulator."""

import dataclasses
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import map_coordinates
from scipy.optimize import least_squares

from rtdecode.errors import NotFittedError, VolumeError
from rtdecode.numerics.rigid import framewise_displacement, rigid_matrix
from rtdecode.pipeline.motion import MotionCorrector
from rtdecode.sim.phantom import make_phantom
from rtdecode.sim.session import SimParams, apply_motion, simulate_session

DATA = Path(__file__).parents[1] / "data"


@pytest.fixture(scope="module")
def phantom():
    ph = make_phantom()
    return ph.baseline, ph.affine


@pytest.fixture(scope="module")
def epi():
    """A real Siemens EPI volume (64x64x27, 3x3x4 mm, oblique)."""
    pytest.importorskip("pydicom", reason="pydicom reads the Siemens mosaic")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The DICOM readers are highly experimental")
        from nibabel.nicom import dicomwrappers

        w = dicomwrappers.wrapper_from_file(DATA / "siemens" / "001_000013_000001.dcm")
        return w.get_data().astype(np.float32), w.affine


def _draws(n, seed):
    rng = np.random.default_rng(seed)
    return [np.concatenate([rng.uniform(-3, 3, 3), rng.uniform(-3, 3, 3)]) for _ in range(n)]


def _moved(img, affine, truth, rng):
    noise = np.percentile(img, 99) / 120  # tSNR about 60 in average brain voxels
    return (apply_motion(img, affine, truth) + rng.normal(0, noise, img.shape)).astype(np.float32)


def _fd_error(truth, est):
    return framewise_displacement(np.stack([truth, est]))[1]


@pytest.mark.parametrize("volume", ["phantom", "epi"])
def test_recovers_known_transforms_up_to_3mm_3deg(volume, request):
    img, affine = request.getfixturevalue(volume)
    rng = np.random.default_rng(1)
    mc = MotionCorrector(np.arange(10)).set_reference(img, affine)
    errors = []
    for truth in _draws(20, seed=2):
        mc.pose_ = np.eye(4)  # each draw from the reference pose: no help from a warm start
        est, _ = mc.estimate(_moved(img, affine, truth, rng))
        errors.append(_fd_error(truth, est))
    assert np.median(errors) <= 0.06, np.round(errors, 3)
    assert np.max(errors) <= 0.2, np.round(errors, 3)


def test_independent_scipy_estimate_agrees(epi):
    img, affine = epi
    truth = np.array([1.5, -2.0, 1.0, 2.0, -1.0, 2.5])
    moved = _moved(img, affine, truth, np.random.default_rng(3))
    fast, _ = MotionCorrector(np.arange(10)).set_reference(img, affine).estimate(moved)
    # Slow reference: scipy's cubic spline interpolation and a generic least-squares solver.
    inside = img > 0.25 * np.percentile(img, 99)
    inside[:2] = inside[-2:] = inside[:, :2] = inside[:, -2:] = inside[..., :2] = inside[..., -2:] = False
    vox = np.argwhere(inside)[::3].T.astype(float)
    ref = img[tuple(vox.astype(int))]
    inv = np.linalg.inv(affine)

    def residual(p):
        m = inv @ rigid_matrix(p, affine, img.shape) @ affine
        return map_coordinates(moved, m[:3, :3] @ vox + m[:3, 3:], order=3, mode="nearest") - ref

    slow = least_squares(residual, np.zeros(6), x_scale=1.0).x
    assert _fd_error(truth, slow) < 0.2
    assert _fd_error(slow, fast) < 0.1, (slow, fast)


def test_recovered_time_courses_follow_the_truth():
    p = SimParams(
        n_train_categories=20,
        n_units=20,
        n_categories=100,
        noiseless=True,
        drift_pct=0.0,
        max_translation_mm=2.0,
        max_rotation_deg=2.0,
    )
    sim = simulate_session(p)
    ph = sim["subject"].phantom
    vc = sim["subject"].voxel_index
    truth = ph.baseline.ravel()[vc] * (1 + sim["signal_pct"] / 100.0)  # no motion, no noise
    mc = MotionCorrector(vc)
    corrected = np.array(
        [mc.correct(sim["bold"][..., k], ph.affine)[0] for k in range(sim["bold"].shape[-1])]
    )
    raw = sim["bold"].reshape(-1, sim["bold"].shape[-1])[vc].T.astype(float)

    def corr(a, b):
        a, b = a - a.mean(0), b - b.mean(0)
        return (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))

    tuned = sim["subject"].voxel_gain_pct > 1.0
    r_corrected, r_raw = corr(corrected, truth)[tuned], corr(raw, truth)[tuned]
    assert np.median(r_corrected) > 0.9, np.median(r_corrected)
    assert np.median(r_corrected) > np.median(r_raw) + 0.1, (np.median(r_corrected), np.median(r_raw))


def test_warm_start_follows_a_moving_head(phantom):
    img, affine = phantom
    rng = np.random.default_rng(4)
    mc = MotionCorrector(np.arange(0, img.size, 97))
    helped = MotionCorrector(mc.analysis_index, threads=2)  # coefficients on a second thread
    path = np.cumsum(rng.normal(0, 0.1, (15, 6)), axis=0)
    path[0] = 0
    iterations, errors = [], []
    for truth in path:
        moved = _moved(img, affine, truth, rng)
        values, est = mc.correct(moved, affine)
        values2, est2 = helped.correct(moved, affine)
        np.testing.assert_array_equal(values2, values)
        np.testing.assert_array_equal(est2.params, est.params)
        iterations.append(est.iterations)
        errors.append(_fd_error(truth, est.params))
    helped.close()
    helped.close()
    assert max(errors) < 0.1 and np.median(iterations[1:]) <= 3
    fd = framewise_displacement(path)
    assert abs(est.fd_mm - fd[-1]) < 0.1


def test_censoring_flags_large_framewise_displacement(phantom):
    img, affine = phantom
    mc = MotionCorrector(np.arange(10), fd_threshold_mm=0.5)
    assert not mc.correct(img, affine)[1].censored
    moved = apply_motion(img, affine, np.array([0.8, 0, 0, 0, 0, 0]))
    est = mc.correct(moved, affine)[1]
    assert est.censored and est.fd_mm == pytest.approx(0.8, abs=0.05)


def test_mean_reference_and_nifti_reference(phantom, tmp_path):
    img, affine = phantom
    rng = np.random.default_rng(5)
    mc = MotionCorrector(np.arange(10), n_reference=3)
    first_ref = None
    for truth in ([0, 0, 0, 0, 0, 0], [0.3, 0, 0, 0, 0, 0], [0.6, 0, 0, 0, 0, 0]):
        mc.correct(_moved(img, affine, np.array(truth, float), rng), affine)
        first_ref = mc.reference_ if first_ref is None else first_ref
    # The reference is now the mean of the three realigned volumes, on the first volume's grid:
    # less noisy, and poses stay relative to the first volume.
    est, _ = mc.estimate(_moved(img, affine, np.array([1.0, 0, 0, 0, 0, 0]), rng))
    assert mc.reference_ is not first_ref
    np.testing.assert_allclose(est, [1.0, 0, 0, 0, 0, 0], atol=0.06)
    nib.save(nib.Nifti1Image(img, affine), tmp_path / "ref.nii")
    ref = nib.load(tmp_path / "ref.nii")
    mc = MotionCorrector(np.arange(10)).set_reference(np.asarray(ref.dataobj), ref.affine)
    est, _ = mc.estimate(apply_motion(img, affine, np.array([0, 0.5, 0, 1.0, 0, 0])))
    np.testing.assert_allclose(est, [0, 0.5, 0, 1.0, 0, 0], atol=0.05)


def test_corrected_values_match_the_unmoved_image(phantom):
    img, affine = phantom
    interior = np.zeros(img.shape, bool)
    interior[8:-8, 8:-8, 4:-4] = True  # analysis voxels lie inside the head, away from the edge
    idx = np.flatnonzero((img > np.percentile(img, 70)) & interior)
    mc = MotionCorrector(idx)
    ref_vals, first = mc.correct(img, affine)
    assert first.fd_mm == 0 and not first.censored
    np.testing.assert_allclose(ref_vals, img.ravel()[idx], rtol=1e-4)
    moved = apply_motion(img, affine, np.array([1.5, -1.0, 0.5, 1.0, -1.5, 0.5]))
    vals, _ = mc.correct(moved, affine)
    raw_err = np.abs(moved.ravel()[idx] - ref_vals).mean()
    # what is left is the interpolation error of moving the sharp phantom there and back
    assert np.abs(vals - ref_vals).mean() < 0.2 * raw_err


def test_errors_are_clear():
    with pytest.raises(NotFittedError, match="no reference"):
        MotionCorrector(np.arange(3)).estimate(np.zeros((4, 4, 4)))
    mc = MotionCorrector(np.arange(3)).set_reference(make_phantom().baseline, np.eye(4))
    with pytest.raises(VolumeError, match=r"shape \(4, 4, 4\) differs"):
        mc.estimate(np.zeros((4, 4, 4)))
    with pytest.raises(VolumeError, match="only 0 voxels"):
        MotionCorrector(np.arange(3)).set_reference(np.zeros((8, 8, 8)), np.eye(4))


@pytest.mark.parametrize("threads", [1, 2])
def test_a_first_volume_refused_as_reference_leaves_the_next_to_be_it(phantom, threads):
    img, affine = phantom
    mc = MotionCorrector(np.arange(10), threads=threads)
    with pytest.raises(VolumeError, match="only 0 voxels"):
        mc.correct(np.zeros(img.shape, np.float32), affine)
    values, est = mc.correct(img, affine)
    np.testing.assert_array_equal(mc.reference_, img.astype(np.float32))
    assert np.abs(est.params).max() < 1e-3 and est.fd_mm == 0.0
    np.testing.assert_allclose(values, img.ravel()[:10], rtol=1e-4, atol=1e-3 * np.abs(img).max())
    mc.close()


@pytest.mark.parametrize("threads", [1, 2])
def test_a_reference_with_nothing_to_align_on_is_given_up_for_the_next_volume(phantom, threads):
    img, affine = phantom
    mc = MotionCorrector(np.arange(10), threads=threads)
    # A flat volume passes the brightness check, but has no gradient: its solver is singular.
    mc.correct(np.full(img.shape, 100.0, np.float32), affine)
    with pytest.raises(VolumeError, match="cannot be aligned to"):
        mc.correct(img, affine)
    assert mc.get_state() is None
    mc.correct(img, affine)
    np.testing.assert_array_equal(mc.reference_, img.astype(np.float32))
    est = mc.correct(apply_motion(img, affine, np.array([0.5, 0, 0, 0, 1.0, 0])), affine)[1]
    np.testing.assert_allclose(est.params, [0.5, 0, 0, 0, 1.0, 0], atol=0.05)
    assert est.fd_mm > 0
    mc.close()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_reference": 0}, "n_reference"),
        ({"fd_threshold_mm": 0}, "fd_threshold_mm"),
        ({"max_points": 5}, "max_points"),
        ({"threads": 3}, "threads"),
    ],
)
def test_parameters_are_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MotionCorrector(np.arange(3), **kwargs)


def test_simulated_session_motion_is_recovered():
    p = dataclasses.replace(
        SimParams(n_train_categories=15, n_units=20, n_categories=100), max_translation_mm=2.0
    )
    sim = simulate_session(p)
    ph = sim["subject"].phantom
    mc = MotionCorrector(sim["subject"].voxel_index)
    est = np.array(
        [mc.correct(sim["bold"][..., k], ph.affine)[1].params for k in range(sim["bold"].shape[-1])]
    )
    err = [_fd_error(t, e) for t, e in zip(sim["motion"], est)]
    assert np.median(err) < 0.06 and np.max(err) < 0.2, (np.median(err), np.max(err))
