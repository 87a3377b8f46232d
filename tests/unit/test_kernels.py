"""The numba kernels against scipy.ndimage, an independent implementation."""

import numpy as np
import pytest
from scipy.ndimage import map_coordinates, spline_filter

from rtdecode.numerics.kernels import grid_points, resample, sample, sample_gradient, spline_coefficients


@pytest.mark.parametrize("shape", [(17, 12, 9), (5, 1, 4), (64, 64, 36), (33, 40, 47), (3, 70, 1)])
@pytest.mark.parametrize("layout", ["float32", "int16, Fortran order"])
def test_prefilter_equals_scipy_mirror(shape, layout):
    # Lines shorter and longer than 30 (the two initial values), sizes that are not whole tiles of
    # the transposes, and an input of another type and memory order.
    img = np.random.default_rng(0).standard_normal(shape).astype(np.float32) * 100
    if layout != "float32":
        img = np.asfortranarray(img.astype(np.int16))
    expected = spline_filter(img.astype(float), 3, mode="mirror")
    # float32 coefficients: agreement to about 1e-5 of the range
    np.testing.assert_allclose(spline_coefficients(img), expected, atol=2e-5 * np.abs(expected).max())


def test_sampling_equals_scipy_inside_and_beyond_the_edges():
    rng = np.random.default_rng(1)
    img = rng.standard_normal((20, 16, 12)).astype(np.float32)
    pts = rng.uniform(-3, 23, (2000, 3)) * [1, 16 / 20, 12 / 20]
    mat = np.hstack([np.eye(3) * 0.97, [[0.3], [-0.2], [0.1]]])
    out = np.empty(len(pts), np.float32)
    sample(spline_coefficients(img), mat, pts, out)
    expected = map_coordinates(img.astype(float), (pts @ mat[:, :3].T + mat[:, 3]).T, order=3, mode="mirror")
    np.testing.assert_allclose(out, expected, atol=1e-4)


def test_gradient_equals_finite_differences_of_scipy():
    rng = np.random.default_rng(2)
    img = rng.standard_normal((15, 15, 15)).astype(np.float32)
    coef = spline_filter(img.astype(float), 3, mode="mirror")
    pts = rng.uniform(1, 13, (200, 3))
    grad = np.empty((200, 3))
    sample_gradient(spline_coefficients(img), pts, grad)
    h = 1e-4
    for d in range(3):
        step = h * np.eye(3)[d]
        num = (
            map_coordinates(coef, (pts + step).T, order=3, prefilter=False, mode="mirror")
            - map_coordinates(coef, (pts - step).T, order=3, prefilter=False, mode="mirror")
        ) / (2 * h)
        np.testing.assert_allclose(grad[:, d], num, atol=1e-3)


def test_identity_resample_reproduces_the_image():
    img = np.random.default_rng(3).standard_normal((9, 8, 7)).astype(np.float32)
    np.testing.assert_allclose(resample(img, np.eye(4)), img, atol=1e-4)
    assert grid_points((2, 3, 4))[5].tolist() == [0, 1, 1]
