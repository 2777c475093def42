"""CIFTI-2 dtseries reading: a file written here with nibabel (surface vertices + subcortical voxels),
TR from the series axis, one-line errors for wrong file types, TR mismatch and NaNs; dscalar writing."""
import nibabel as nib
import numpy as np
import pytest

from brainalign.brain.cifti import cifti_info, read_cifti_bold, write_cifti_dscalar
from brainalign.errors import DataError

TR = 1.49


def brain_models():
    left = np.zeros(40, bool)
    left[[1, 3, 5, 7, 11, 13, 17, 19, 23, 29]] = True                 # 10 of 40 vertices (medial wall out)
    right = np.ones(30, bool)
    right[:12] = False                                                  # 18 of 30 vertices
    vol = np.zeros((5, 6, 4), bool)
    vol[1:3, 2:4, 1:3] = True                                           # 8 voxels
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-5, -6, -4]
    bm = (nib.cifti2.BrainModelAxis.from_mask(left, name="CortexLeft")
          + nib.cifti2.BrainModelAxis.from_mask(right, name="CortexRight")
          + nib.cifti2.BrainModelAxis.from_mask(vol, affine=affine, name="thalamus_left"))
    return bm, affine


def write_dtseries(path, data, tr=TR, unit="SECOND"):
    bm, _ = brain_models()
    series = nib.cifti2.SeriesAxis(start=0.0, step=tr, size=data.shape[0], unit=unit)
    nib.save(nib.Cifti2Image(data.astype(np.float32), header=(series, bm)), str(path))
    return path


@pytest.fixture
def dtseries(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.standard_normal((25, 36)).astype(np.float32)
    return write_dtseries(tmp_path / "sub-01_task-x_space-fsLR_den-91k_bold.dtseries.nii", data), data


def test_read_dtseries_values_tr_and_structures(dtseries):
    path, data = dtseries
    got = read_cifti_bold(path, tr=TR)
    assert got.dtype == np.float32 and got.shape == (25, 36)
    np.testing.assert_array_equal(got, data)
    info = cifti_info(path)
    assert info.tr == pytest.approx(TR) and info.n_trs == 25 and info.n_grayordinates == 36
    assert info.n_vertices == 28 and info.n_voxels == 8
    assert [(n, k, a, b) for n, k, a, b in info.structures] == [
        ("CORTEX_LEFT", "surface", 0, 10), ("CORTEX_RIGHT", "surface", 10, 28),
        ("THALAMUS_LEFT", "volume", 28, 36)]
    assert info.volume_shape == (5, 6, 4)
    np.testing.assert_allclose(info.affine, brain_models()[1])


def test_wrong_file_types_give_one_line_errors(tmp_path, dtseries):
    nii = tmp_path / "plain_bold.nii"
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3, 4), np.float32), np.eye(4)), str(nii))
    with pytest.raises(DataError, match=r"plain_bold.nii is not a CIFTI-2 file \(nibabel reads it as Nifti1Image"):
        read_cifti_bold(nii)
    bm, _ = brain_models()
    dscalar = tmp_path / "x.dscalar.nii"
    nib.save(nib.Cifti2Image(np.zeros((2, 36), np.float32), header=(nib.cifti2.ScalarAxis(["a", "b"]), bm)),
             str(dscalar))
    with pytest.raises(DataError, match=r"is not a dense time series: axes are \(ScalarAxis, BrainModelAxis\)"):
        read_cifti_bold(dscalar)
    garbage = tmp_path / "bad.dtseries.nii"
    garbage.write_bytes(b"not a nifti at all" * 10)
    with pytest.raises(DataError, match="bad.dtseries.nii is not a readable CIFTI-2 file"):
        read_cifti_bold(garbage)
    with pytest.raises(DataError, match="CIFTI BOLD file not found"):
        read_cifti_bold(tmp_path / "missing.dtseries.nii")
    hz = write_dtseries(tmp_path / "hz.dtseries.nii", np.zeros((5, 36)), tr=0.5, unit="HERTZ")
    with pytest.raises(DataError, match="series axis unit is HERTZ, expected SECOND"):
        read_cifti_bold(hz)


def test_tr_mismatch_and_nan(tmp_path, dtseries):
    path, data = dtseries
    with pytest.raises(DataError, match=r"series step \(TR\) 1.49 s differs from data.bold.tr 2 s"):
        read_cifti_bold(path, tr=2.0)
    read_cifti_bold(path, tr=1.4905)                                    # within 1e-3 s
    bad = data.copy()
    bad[3, 30] = np.nan
    bad[0, 2] = np.inf
    p = write_dtseries(tmp_path / "nan.dtseries.nii", bad)
    with pytest.raises(DataError, match=r"nan.dtseries.nii: 2 grayordinate\(s\) contain NaN/inf values \(first: "
                                        r"column 2\)"):
        read_cifti_bold(p)


def test_write_dscalar_round_trip(tmp_path, dtseries):
    path, _ = dtseries
    vals = np.arange(72, dtype=np.float32).reshape(2, 36)
    out = write_cifti_dscalar(tmp_path / "maps" / "r.dscalar.nii", vals, path, names=["joint", "no_vision"])
    img = nib.load(str(out))
    np.testing.assert_array_equal(np.asarray(img.dataobj), vals)
    assert list(img.header.get_axis(0).name) == ["joint", "no_vision"]
    assert img.header.get_axis(1) == brain_models()[0]
    with pytest.raises(DataError, match=r"do not fit .* \(36 grayordinates\)"):
        write_cifti_dscalar(tmp_path / "x.dscalar.nii", np.zeros(35), path)


def test_structure_labels_and_bids_lookup(tmp_path, dtseries):
    from brainalign.brain.cifti import find_cifti_bold, structure_labels

    path, _ = dtseries
    labels, names = structure_labels(cifti_info(path))
    assert names == {1: "CORTEX_LEFT", 2: "CORTEX_RIGHT", 3: "THALAMUS_LEFT"}
    np.testing.assert_array_equal(np.bincount(labels), [0, 10, 18, 8])
    func = tmp_path / "deriv" / "sub-01" / "ses-002" / "func"
    func.mkdir(parents=True)
    target = func / "sub-01_ses-002_task-s01e01a_space-fsLR_den-91k_bold.dtseries.nii"
    target.write_bytes(path.read_bytes())
    assert find_cifti_bold(tmp_path / "deriv", "01", "s01e01a") == target
    with pytest.raises(DataError, match=r"no CIFTI run for sub-01 task-s01e02a space-fsLR den-91k"):
        find_cifti_bold(tmp_path / "deriv", "01", "s01e02a")
    (tmp_path / "deriv" / "sub-01" / "func").mkdir()
    (tmp_path / "deriv" / "sub-01" / "func" / "sub-01_task-s01e01a_space-fsLR_den-91k_bold.dtseries.nii").touch()
    with pytest.raises(DataError, match="several CIFTI runs for sub-01 task-s01e01a"):
        find_cifti_bold(tmp_path / "deriv", "01", "s01e01a")
