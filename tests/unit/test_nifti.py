"""Reading a 4-D NIfTI series volume by volume."""

import nibabel as nib
import numpy as np

from rtdecode.io.nifti import iter_volumes


def test_volumes_come_in_c_order_with_the_files_values_affine_and_tr(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(-500, 3000, size=(6, 5, 4, 3), dtype=np.int16)
    affine = np.diag([3.0, 3.0, 3.5, 1.0])
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = 2.0
    nib.save(img, tmp_path / "bold.nii")
    vols = list(iter_volumes(tmp_path / "bold.nii", series="run-1"))
    assert [v.seq for v in vols] == [0, 1, 2]
    for k, v in enumerate(vols):
        assert v.data.flags.c_contiguous  # the wire's order: a sender need not transpose it
        np.testing.assert_array_equal(v.data, data[..., k])
        np.testing.assert_array_equal(v.affine, affine)
        assert v.tr_s == 2.0 and v.acq_time_s == 2.0 * k and v.series == "run-1"
