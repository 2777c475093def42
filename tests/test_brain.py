"""BIDS lookup, NIfTI/HDF5 BOLD readers, masks, ROI atlases and NIfTI writing on small images written here."""
import logging

import h5py
import nibabel as nib
import numpy as np
import pytest

from brainalign.brain import (Mask, find_bold, find_hdf5_dataset, load_mask, load_rois, read_bold_run,
                              read_hdf5_bold, write_volume)
from brainalign.errors import DataError

SHAPE = (6, 5, 4)
AFF = np.array([[3.0, 0, 0, -9], [0, 3, 0, -6], [0, 0, 3, -3], [0, 0, 0, 1]])


def save(path, data, affine=AFF, tr=None):
    img = nib.Nifti1Image(np.asarray(data), affine)
    img.header.set_xyzt_units("mm", "sec")
    if tr is not None:
        img.header.set_zooms((3.0, 3.0, 3.0, tr))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def make_mask(tmp_path):
    m = np.zeros(SHAPE, np.uint8)
    m[1:5, 1:4, 1:3] = 1
    return load_mask(save(tmp_path / "mask.nii.gz", m))


def bold_data(n=7, seed=0):
    return np.random.default_rng(seed).normal(100, 5, size=SHAPE + (n,)).astype(np.float32)


# ---- masks and BOLD -------------------------------------------------------------------------------

def test_mask_apply_unmask_roundtrip(tmp_path):
    mask = make_mask(tmp_path)
    assert mask.n_voxels == 4 * 3 * 2 and mask.shape == SHAPE
    data = bold_data()
    x = mask.apply(data)
    assert x.shape == (7, 24)
    np.testing.assert_array_equal(x, np.stack([data[..., t][mask.data] for t in range(7)]))
    back = mask.unmask(x.T)
    assert back.shape == SHAPE + (7,) and back.dtype == np.float32
    np.testing.assert_array_equal(back[mask.data], x.T)
    assert (back[~mask.data] == 0).all()
    assert mask.unmask(x[0]).shape == SHAPE
    with pytest.raises(DataError, match=r"values of shape \(5,\) do not fit mask .*mask.nii.gz \(24 voxels"):
        mask.unmask(np.zeros(5))


def test_read_bold_run_matches_masked_data(tmp_path):
    mask = make_mask(tmp_path)
    data = bold_data(n=150)
    p = save(tmp_path / "bold.nii.gz", data, tr=1.49)
    got = read_bold_run(p, mask, tr=1.49, chunk=64)          # three chunks
    assert got.dtype == np.float32 and got.shape == (150, 24)
    np.testing.assert_array_equal(got, data[mask.data].T)


def test_read_bold_run_errors(tmp_path):
    mask = make_mask(tmp_path)
    p = save(tmp_path / "bold.nii.gz", bold_data(), tr=2.0)
    with pytest.raises(DataError, match=r"bold.nii.gz: header TR 2 s differs from data.bold.tr 1.49 s"):
        read_bold_run(p, mask, tr=1.49)
    bad = bold_data()
    bad[2, 2, 1, 3] = np.nan
    bad[3, 2, 1, :] = np.inf
    bad[0, 0, 0, 0] = np.nan                                   # outside the mask: ignored
    with pytest.raises(DataError, match=r"nan.nii.gz: 2 voxel\(s\) contain NaN/inf"):
        read_bold_run(save(tmp_path / "nan.nii.gz", bad, tr=1.49), mask)
    other = AFF.copy()
    other[0, 3] += 3
    with pytest.raises(DataError, match=r"BOLD run .*shift.nii.gz .* is not on the grid of mask .*mask.nii.gz"):
        read_bold_run(save(tmp_path / "shift.nii.gz", bold_data(), affine=other, tr=1.49), mask)
    with pytest.raises(DataError, match=r"BOLD run .*small.nii.gz \(shape \(6, 5, 3\)\) is not on the grid"):
        read_bold_run(save(tmp_path / "small.nii.gz", bold_data()[:, :, :3], tr=1.49), mask)
    with pytest.raises(DataError, match=r"3d.nii.gz: expected a 4D image"):
        read_bold_run(save(tmp_path / "3d.nii.gz", bold_data()[..., 0]), mask)
    with pytest.raises(DataError, match=r"BOLD run not found: .*missing.nii.gz"):
        read_bold_run(tmp_path / "missing.nii.gz", mask)
    (tmp_path / "junk.nii.gz").write_bytes(b"\x1f\x8bjunk")
    with pytest.raises(DataError, match=r"junk.nii.gz is not a readable NIfTI"):
        read_bold_run(tmp_path / "junk.nii.gz", mask)


def test_constant_voxels_are_returned_with_a_warning(tmp_path, caplog):
    mask = make_mask(tmp_path)
    data = bold_data()
    data[2, 2, 1, :] = 7.0
    with caplog.at_level(logging.WARNING, logger="brainalign"):
        got = read_bold_run(save(tmp_path / "c.nii.gz", data, tr=1.0), mask, tr=1.0)
    assert (got.std(0) == 0).sum() == 1
    assert "1 constant voxel(s)" in caplog.text


def test_load_mask_errors(tmp_path):
    with pytest.raises(DataError, match=r"empty.nii.gz: no voxel is non-zero"):
        load_mask(save(tmp_path / "empty.nii.gz", np.zeros(SHAPE, np.uint8)))
    with pytest.raises(DataError, match=r"4d.nii.gz: expected a 3D image"):
        load_mask(save(tmp_path / "4d.nii.gz", np.ones(SHAPE + (2,), np.uint8)))


# ---- BIDS -----------------------------------------------------------------------------------------

def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_find_bold_with_and_without_sessions(tmp_path):
    a = touch(tmp_path / "sub-01/ses-002/func/sub-01_ses-002_task-s01e02a_space-MNI_desc-preproc_bold.nii.gz")
    touch(tmp_path / "sub-01/ses-002/func/sub-01_ses-002_task-s01e02a_space-MNI_desc-brain_mask.nii.gz")
    touch(tmp_path / "sub-01/ses-002/func/sub-01_ses-002_task-s01e02b_space-MNI_desc-preproc_bold.nii.gz")
    b = touch(tmp_path / "sub-02/func/sub-02_task-s01e02a_space-MNI_desc-preproc_bold.nii.gz")
    assert find_bold(tmp_path, "01", "s01e02a", "MNI") == a
    assert find_bold(tmp_path, "02", "s01e02a", "MNI") == b


def test_find_bold_errors(tmp_path):
    touch(tmp_path / "sub-01/ses-001/func/sub-01_ses-001_task-s01e02a_space-T1w_desc-preproc_bold.nii.gz")
    touch(tmp_path / "sub-01/ses-002/func/sub-01_ses-002_task-s01e02a_space-MNI_desc-smoothed_bold.nii.gz")
    with pytest.raises(DataError, match=r"no BOLD run for sub-01 task-s01e02a space-MNI desc-preproc under .*; "
                                        r"that run exists in space\(s\): MNI desc-smoothed, T1w desc-preproc"):
        find_bold(tmp_path, "01", "s01e02a", "MNI")
    with pytest.raises(DataError, match=r"no BOLD run for sub-01 task-s01e09a space-MNI under .*expected e.g."):
        find_bold(tmp_path, "01", "s01e09a", "MNI")
    touch(tmp_path / "sub-01/ses-003/func/sub-01_ses-003_task-s01e02a_space-T1w_desc-preproc_bold.nii.gz")
    with pytest.raises(DataError, match=r"several BOLD runs for sub-01 task-s01e02a space-T1w desc-preproc under "
                                        r".*: sub-01/ses-001/.*, sub-01/ses-003/"):
        find_bold(tmp_path, "01", "s01e02a", "T1w")
    with pytest.raises(DataError, match=r"no sub-07 under .* \(subjects there: sub-01\)"):
        find_bold(tmp_path, "07", "s01e02a", "T1w")
    with pytest.raises(DataError, match=r"BOLD derivatives directory not found: .*nowhere \(data.bold.dir\)"):
        find_bold(tmp_path / "nowhere", "01", "s01e02a", "T1w")


# ---- ROIs -----------------------------------------------------------------------------------------

def write_tsv(path, rows, header="index\tname"):
    path.write_text(header + "\n" + "".join(f"{i}\t{n}\n" for i, n in rows))
    return path


def test_load_rois_on_grid(tmp_path):
    mask = make_mask(tmp_path)
    lab = np.zeros(SHAPE, np.int16)
    lab[1:3, 1:4, 1:3] = 1
    lab[3, 1, 1] = 2
    lab[0, 0, 0] = 2                     # outside the mask: not counted
    tsv = write_tsv(tmp_path / "dseg.tsv", [(0, "background"), (1, "vision"), (2, "language"), (3, "gone")])
    labels, names = load_rois(save(tmp_path / "lab.nii.gz", lab), tsv, mask)
    assert labels.dtype == np.int32 and labels.shape == (24,)
    np.testing.assert_array_equal(labels, lab[mask.data])
    assert names == {1: "vision", 2: "language", 3: "gone"}
    assert np.bincount(labels).tolist() == [11, 12, 1]


def test_load_rois_resamples_a_finer_label_image(tmp_path):
    mask = make_mask(tmp_path)
    fine_aff = AFF.copy()
    fine_aff[:3, :3] /= 3                # 1 mm voxels, same corner: voxel (i, j, k) of the mask = 3i..3i+2
    fine_aff[:3, 3] -= 1                 # centre-aligned: fine voxel 3i+1 sits on coarse voxel i's centre
    idx = np.indices((18, 15, 12))
    fine = ((idx[0] // 3) >= 3).astype(np.int16) + 1     # label 2 for coarse x >= 3, else 1
    tsv = write_tsv(tmp_path / "dseg.tsv", [(1, "left"), (2, "right")])
    labels, names = load_rois(save(tmp_path / "fine.nii.gz", fine, affine=fine_aff), tsv, mask)
    expected = np.where(np.indices(SHAPE)[0] >= 3, 2, 1)[mask.data]
    np.testing.assert_array_equal(labels, expected)


def test_load_rois_errors(tmp_path):
    mask = make_mask(tmp_path)
    lab = np.zeros(SHAPE, np.int16)
    lab[2, 2, 1] = 5
    img = save(tmp_path / "lab.nii.gz", lab)
    with pytest.raises(DataError, match=r"label\(s\) \[5\] have no row in .*dseg.tsv"):
        load_rois(img, write_tsv(tmp_path / "dseg.tsv", [(1, "a")]), mask)
    with pytest.raises(DataError, match=r"bad.tsv line 1: needs tab-separated columns 'index' and 'name'"):
        load_rois(img, write_tsv(tmp_path / "bad.tsv", [(1, "a")], header="label\tname"), mask)
    with pytest.raises(DataError, match=r"dup.tsv line 3: duplicate index 1"):
        load_rois(img, write_tsv(tmp_path / "dup.tsv", [(1, "a"), (1, "b")]), mask)
    with pytest.raises(DataError, match=r"frac.nii.gz: labels must be integers"):
        load_rois(save(tmp_path / "frac.nii.gz", lab.astype(np.float32) + 0.5), tmp_path / "dseg.tsv", mask)


# ---- writing and HDF5 -----------------------------------------------------------------------------

def test_write_volume_3d_and_4d(tmp_path):
    mask = make_mask(tmp_path)
    v = np.arange(24, dtype=np.float64) / 7
    p = write_volume(tmp_path / "maps" / "r.nii.gz", v, mask, extra_header={"descrip": b"held-out r"})
    img = nib.load(str(p))
    assert img.get_data_dtype() == np.float32 and img.shape == SHAPE
    np.testing.assert_allclose(img.affine, AFF)
    np.testing.assert_allclose(np.asarray(img.dataobj)[mask.data], v, rtol=1e-6)
    assert img.header["descrip"].tobytes().startswith(b"held-out r")
    p4 = write_volume(tmp_path / "maps" / "k.nii", np.stack([v, -v], 1), mask)
    assert nib.load(str(p4)).shape == SHAPE + (2,)
    assert open(p, "rb").read(2) == b"\x1f\x8b" and open(p4, "rb").read(2) != b"\x1f\x8b"   # gz by suffix
    assert sorted(f.name for f in (tmp_path / "maps").iterdir()) == ["k.nii", "r.nii.gz"]  # no temp left


def test_read_hdf5_bold(tmp_path, caplog):
    p = tmp_path / "bold.h5"
    x = np.random.default_rng(1).normal(size=(20, 10)).astype(np.float32)
    with h5py.File(p, "w") as f:
        f["ses-001_task-s01e02a"] = x
        f["ses-001_task-s01e02b"] = x[:, :3].copy()
        bad = x.copy()
        bad[3, 4] = np.nan
        f["ses-002_task-s01e03a"] = bad
        f["flat"] = x[0]
    assert find_hdf5_dataset(p, "s01e02a") == "ses-001_task-s01e02a"
    np.testing.assert_array_equal(read_hdf5_bold(p, "ses-001_task-s01e02a"), x)
    with pytest.raises(DataError, match=r"bold.h5:ses-002_task-s01e03a: 1 voxel\(s\) contain NaN/inf"):
        read_hdf5_bold(p, "ses-002_task-s01e03a")
    with pytest.raises(DataError, match=r"bold.h5: no dataset 'run-9' \(has: flat, ses-001_task-s01e02a"):
        read_hdf5_bold(p, "run-9")
    with pytest.raises(DataError, match=r"bold.h5:flat: expected 2D \(TRs, parcels\), got shape \(10,\)"):
        read_hdf5_bold(p, "flat")
    with pytest.raises(DataError, match=r"bold.h5: no dataset for task-s01e09a"):
        find_hdf5_dataset(p, "s01e09a")


def test_mask_dataclass_direct():
    m = Mask(np.ones((2, 2, 2), bool), np.eye(4))
    assert m.n_voxels == 8 and m.apply(np.zeros((2, 2, 2, 3))).shape == (3, 8)
