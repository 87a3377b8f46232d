import numpy as np
import pytest

from rtdecode.numerics.rigid import (
    framewise_displacement,
    grid_centre_mm,
    params_from_matrix,
    rigid_matrix,
    rotation_matrix,
    to_afni,
    to_fsl,
    to_spm,
)


def test_rotation_is_orthonormal_and_in_degrees():
    r = rotation_matrix(0, 0, 90)
    np.testing.assert_allclose(r @ [1, 0, 0], [0, 1, 0], atol=1e-12)
    r = rotation_matrix(10, -20, 30)
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(r) == pytest.approx(1.0)


def test_rigid_matrix_rotates_about_the_grid_centre():
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    shape = (10, 12, 8)
    c = grid_centre_mm(affine, shape)
    m = rigid_matrix([1, 2, 3, 5, 6, 7], affine, shape)
    np.testing.assert_allclose(m[:3, :3] @ c + m[:3, 3], c + [1, 2, 3], atol=1e-12)


def test_framewise_displacement_power_2012():
    params = np.array([[0, 0, 0, 0, 0, 0], [1, -1, 0.5, 0, 0, 0], [1, -1, 0.5, 1, 0, -1]], dtype=float)
    fd = framewise_displacement(params)
    arc = np.deg2rad(1) * 50
    np.testing.assert_allclose(fd, [0, 2.5, 2 * arc])


def test_params_from_matrix_inverts_rigid_matrix():
    affine = np.array([[-3.0, 0.1, 0, 90], [0.05, 3, 0, -100], [0, 0, 4, -50], [0, 0, 0, 1]])
    p = np.array([1.0, -2.0, 0.5, 2.5, -1.7, 3.0])
    np.testing.assert_allclose(
        params_from_matrix(rigid_matrix(p, affine, (64, 64, 27)), affine, (64, 64, 27)), p
    )


def test_converters_to_other_packages_orders_and_units():
    p = np.array([[1.0, 2.0, 3.0, 10.0, 20.0, 30.0]])
    rad = np.deg2rad([10.0, 20.0, 30.0])
    np.testing.assert_allclose(to_spm(p), [[1, 2, 3, *rad]])
    np.testing.assert_allclose(to_fsl(p), [[*rad, 1, 2, 3]])
    np.testing.assert_allclose(to_afni(p), [[30, 10, 20, 3, -1, -2]])
    # FD is the same whichever order: sum of |translations| + 50 mm x |rotations in rad|
    assert framewise_displacement(np.vstack([np.zeros(6), p[0]]))[1] == pytest.approx(6 + 50 * rad.sum())
