import numpy as np
import pytest

from rtdecode.errors import NotFittedError
from rtdecode.motion import MotionCorrector
from rtdecode.rigid import framewise_displacement
from rtdecode.sim.phantom import make_phantom
from rtdecode.sim.session import apply_motion


@pytest.fixture(scope="module")
def phantom():
    return make_phantom()


def test_recovers_known_rigid_transforms(phantom):
    rng = np.random.default_rng(3)
    idx = np.flatnonzero(phantom.roi_mask("VC"))
    mc = MotionCorrector(idx).set_reference(phantom.baseline, phantom.affine)
    errors = []
    for _ in range(6):
        truth = np.concatenate([rng.uniform(-2, 2, 3), rng.uniform(-2, 2, 3)])
        mc.pose_ = np.eye(4)  # each draw from scratch, no warm start
        est, _, _ = mc.estimate(apply_motion(phantom.baseline, phantom.affine, truth))
        errors.append(framewise_displacement(np.stack([truth, est]))[1])
    assert np.median(errors) < 0.06, errors
    assert np.max(errors) < 0.2, errors


def test_corrected_values_match_the_unmoved_image(phantom):
    idx = np.flatnonzero(phantom.roi_mask("VC"))
    mc = MotionCorrector(idx)
    ref_vals, first = mc.correct(phantom.baseline, phantom.affine)
    assert first.fd_mm == 0 and not first.censored
    np.testing.assert_allclose(ref_vals, phantom.baseline.ravel()[idx], rtol=1e-4)
    moved = apply_motion(phantom.baseline, phantom.affine, np.array([1.5, -1.0, 0.5, 1.0, -1.5, 0.5]))
    vals, est = mc.correct(moved, phantom.affine)
    raw_err = np.abs(moved.ravel()[idx] - ref_vals).mean()
    assert np.abs(vals - ref_vals).mean() < 0.1 * raw_err
    assert est.censored and est.fd_mm > 0.5


def test_estimate_before_reference_is_a_clear_error():
    with pytest.raises(NotFittedError, match="no reference"):
        MotionCorrector(np.arange(3)).estimate(np.zeros((4, 4, 4)))


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"n_reference": 0}, "n_reference"), ({"fd_threshold_mm": 0}, "fd_threshold_mm")]
)
def test_parameters_are_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MotionCorrector(np.arange(3), **kwargs)
