import numpy as np
import pytest

from rtdecode.errors import DataError
from rtdecode.offline.train import block_average, fit_bundle, fit_selected_ridge, roi_positions


def _ridge(x, y, alpha):
    return np.linalg.solve(x.T @ x + alpha * np.eye(x.shape[1]), x.T @ y)


@pytest.mark.parametrize("n_samples", [40, 120])  # dual and primal branches
def test_selected_ridge_equals_independent_per_unit_solution(n_samples):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((n_samples, 90)), rng.standard_normal((n_samples, 5))
    w = fit_selected_ridge(x, y, 60, 7.0)
    for u in range(5):
        sel = np.argsort(-np.abs(x.T @ y[:, u]))[:60]
        np.testing.assert_allclose(w[sel, u], _ridge(x[:, sel], y[:, u], 7.0), rtol=2e-3, atol=1e-5)
        assert np.count_nonzero(w[:, u]) == 60


def test_all_voxels_when_the_roi_is_small():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((50, 20)), rng.standard_normal((50, 3))
    np.testing.assert_allclose(fit_selected_ridge(x, y, 500, 2.0), _ridge(x, y, 2.0))


def test_folded_map_equals_normalise_predict_denormalise():
    rng = np.random.default_rng(2)
    mask = np.zeros((4, 4, 4), bool)
    mask.ravel()[rng.choice(64, 30, replace=False)] = True
    x = rng.normal(5, 2, (60, 30))
    y = {"l1": rng.normal(1, 3, (60, 4)), "l2": rng.normal(-2, 1, (60, 3))}
    rois = {"A": np.arange(30), "B": np.arange(10, 25)}
    b = fit_bundle(x, y, mask, np.eye(4), rois, n_select=12, alpha=3.0)
    xt = rng.normal(5, 2, 30).astype(np.float32)
    pred = b.predict(xt)
    assert pred.shape == (2, 7)
    xs = x[:, 10:25]
    xz = (xt[10:25] - xs.mean(0)) / xs.std(0, ddof=1)
    for layer, sl in b.layer_slices.items():
        ym, ys = y[layer].mean(0), y[layer].std(0, ddof=1)
        w = fit_selected_ridge((xs - xs.mean(0)) / xs.std(0, ddof=1), (y[layer] - ym) / ys, 12, 3.0)
        np.testing.assert_allclose(pred[1, sl], ym + ys * (xz @ w), rtol=1e-3, atol=1e-3)


def test_block_average_shifts_and_skips_invalid_rows():
    x = np.arange(10, dtype=float)[:, None] * np.ones((1, 2))
    x[4] = np.nan
    avg, kept = block_average(x, np.arange(10) * 2.0, np.array([0.0, 8.0, 30.0]), 6.0, 4.0)
    # block 0: t in [4, 10) -> volumes 2, 3, (4 invalid); block 1: [12, 18) -> 6, 7, 8; block 2: none
    np.testing.assert_allclose(avg[:, 0], [2.5, 7.0])
    np.testing.assert_array_equal(kept, [0, 1])


def test_roi_positions_index_into_the_analysis_vector():
    mask = np.zeros((3, 3, 3), bool)
    mask.ravel()[[1, 5, 9, 20]] = True
    roi = np.zeros_like(mask)
    roi.ravel()[[5, 20]] = True
    np.testing.assert_array_equal(roi_positions(mask, {"r": roi})["r"], [1, 3])
    with pytest.raises(DataError, match="shape"):
        roi_positions(mask, {"r": np.zeros((2, 2, 2), bool)})


def test_roi_masks_in_another_voxel_order_are_reoriented_and_other_grids_refused(tmp_path):
    import nibabel as nib
    from nibabel.orientations import apply_orientation, inv_ornt_aff

    from rtdecode.errors import VolumeError
    from rtdecode.offline.train import load_roi_masks

    affine = np.diag([3.0, 3.0, 3.5, 1.0])
    mask = np.zeros((6, 5, 4), bool)
    mask[1:3, 2:4, 1] = True
    ornt = np.array([[2, -1], [0, 1], [1, -1]])  # an SPM-style reordering of the same grid
    stored = apply_orientation(mask, ornt).astype(np.uint8)
    nib.save(nib.Nifti1Image(stored, affine @ inv_ornt_aff(ornt, mask.shape)), tmp_path / "V1.nii.gz")
    got = load_roi_masks(tmp_path, {}, affine, mask.shape)
    np.testing.assert_array_equal(got["V1"], mask)
    shifted = affine.copy()
    shifted[0, 3] = 1.5
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), shifted), tmp_path / "V1.nii.gz")
    with pytest.raises(VolumeError, match=r"ROI mask V1.nii.gz is on another grid"):
        load_roi_masks(tmp_path, {}, affine, mask.shape)
