"""``brainalign run`` end to end on tiny trees in the published layouts (tests/published.py), no conversion step:
the Algonauts 2025 release (parcel HDF5 + Schaefer parcellation + per-TR transcripts + h264/mp3 .mkv, a
subject missing a run), its movie10 runs (task-figures01_run-1 / _run-2), and CNeuroMod's friends.fmriprep
(per-run brain masks and no study mask, confounds TSV, a run re-scanned in a later session) with
friends.stimuli and friends_annotations, in volume and fsLR 91k CIFTI space."""
import csv
import sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import yaml
from scipy import stats as sps

sys.path.insert(0, str(Path(__file__).parent))
import published as P  # noqa: E402

from brainalign.cli import main  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(tmp, data, name):
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["run", str(path)]) == 0
    return Path(data["output"])


def _csv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def _z(y):
    return sps.zscore(np.asarray(y, np.float64), axis=0)


# ---- Algonauts 2025 (Friends) ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def algonauts_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("alg")
    data = P.algonauts_tree(tmp / "algonauts_2025.competitors", n_trs=24)
    cfg = P.algonauts_config(tmp / "algonauts_2025.competitors", tmp / "results")
    return _run(tmp, cfg, "algonauts"), tmp / "algonauts_2025.competitors", data, cfg


def test_algonauts_missing_run_is_skipped_for_that_subject_only(algonauts_run):
    out, root, data, cfg = algonauts_run
    trim, eps = cfg["align"]["trim"], cfg["data"]["episodes"]
    with h5py.File(out / "bold.h5") as f:
        ds = f["bold/sub-02"]
        assert list(ds.attrs["runs_present"]) == [0, 1, 3]
        # independent: the published datasets, z-scored per run (scipy), trimmed, concatenated
        expect = np.concatenate([_z(data[("02", ep)])[trim:-trim] for ep in ("s01e01a", "s01e01b", "s02e01a")])
        np.testing.assert_allclose(ds[()], expect, atol=1e-5)
        assert f["bold/sub-01"].shape[0] == len(eps) * (24 - 2 * trim)
    with h5py.File(out / "scores.h5") as f:
        r = f["r"][()]
        fold = eps.index("s01e02a")
        assert np.isnan(r[1, :, :, fold]).all()                     # sub-02 has no held-out data there
        assert np.isfinite(np.delete(r[1], fold, axis=2)).all() and np.isfinite(r[[0, 2]]).all()
        assert np.isfinite(f["r_mean"][()]).all()
    rows = _csv(out / "roi_stats.csv")
    assert {r["n_subjects"] for r in rows} == {"3"}                  # every cell still has the 3 subjects


def test_algonauts_network_stats_from_the_schaefer_lut(algonauts_run):
    """ROIs per network (data.bold.roi_groups: networks): each network's mean r is the mean over its
    parcels (names parsed here from the LUT text) of the subjects' parcel r."""
    out, root, _, _ = algonauts_run
    lut = [line.split("\t") for line in (root / "Schaefer2018_28Parcels_7Networks_order.txt").read_text().splitlines()]
    network = np.array([name.split("_")[2] for _, name, *_ in lut])     # column j = label j + 1
    rows = _csv(out / "roi_stats.csv")
    assert [r["roi"] for r in rows[:7]] == list(P.NETWORKS)
    with h5py.File(out / "scores.h5") as f, h5py.File(out / "stats.h5") as g:
        r_mean = f["r_mean"][()]
        roi_r = g["roi/mean_r"][()]
    for ni, net in enumerate(P.NETWORKS):
        np.testing.assert_allclose(roi_r[..., ni], r_mean[..., network == net].astype(np.float64).mean(-1), atol=1e-7)


def test_algonauts_maps_are_written_into_the_parcellation(algonauts_run):
    from nilearn.maskers import NiftiLabelsMasker

    out, root, _, _ = algonauts_run
    atlas = nib.load(str(root / f"fmri/sub-01/atlas/sub-01_{P.ALG_TAIL}_desc-dseg_parcellation.nii.gz"))
    masker = NiftiLabelsMasker(atlas).fit()
    with h5py.File(out / "stats.h5") as g, h5py.File(out / "scores.h5") as f:
        group = g["voxel/mean_r"][0]                                   # (layers, parcels) of 'joint'
        sub3 = f["r_mean"][2, 0]
    inside = atlas.get_fdata() > 0
    img = nib.load(str(out / "maps/group/group_feat-joint_stat-r_bold.nii.gz"))
    assert img.shape == atlas.shape + (2,)
    np.testing.assert_allclose(img.affine, atlas.affine)
    np.testing.assert_allclose(img.get_fdata()[inside], masker.inverse_transform(group).get_fdata()[inside],
                               rtol=1e-5)
    sub = nib.load(str(out / "maps/sub-03/sub-03_feat-joint_stat-r_bold.nii.gz")).get_fdata()
    np.testing.assert_allclose(sub[inside], masker.inverse_transform(sub3).get_fdata()[inside], rtol=1e-5)
    rep = out / "report"
    assert (rep / "glass_mean-r_joint.png").is_file() and (rep / "map_mean-r_joint.png").is_file()
    html = (rep / "index.html").read_text()
    assert "28 parcels" in html and "sub-02 3/4" in html


# ---- Algonauts 2025 movie10 ----------------------------------------------------------------------------

def test_movie10_runs_end_to_end(tmp_path):
    root = tmp_path / "algonauts_2025.competitors"
    runs = ("figures01_run-1", "figures01_run-2", "figures02_run-1")
    data = P.algonauts_tree(root, subjects=("01", "02"), runs=(), movie10=runs, n_trs=20, missing=())
    cfg = P.algonauts_config(root, tmp_path / "results", **{
        "data.episodes": list(runs), "data.bold.subjects": ["01", "02"],
        "data.stimuli.video": "{root}/stimuli/movies/movie10/{movie}/{task}.mkv",
        "data.stimuli.transcript": "{root}/stimuli/transcripts/movie10/{movie}/movie10_{task}.tsv",
        "data.bold.dir": ("{root}/fmri/sub-{subject}/func/sub-{subject}_task-movie10_space-MNI152NLin2009cAsym_"
                          "atlas-Schaefer18_parcel-1000Par7Net_bold.h5")})
    out = _run(tmp_path, cfg, "movie10")
    trim = cfg["align"]["trim"]
    with h5py.File(out / "features.h5") as f:       # the two viewings of figures01 get the same features
        np.testing.assert_array_equal(f["joint/figures01_run-1"][()], f["joint/figures01_run-2"][()])
    with h5py.File(out / "bold.h5") as f:           # ... and each its own BOLD (ses-004_task-figures01_run-2)
        n = 20 - 2 * trim
        np.testing.assert_allclose(f["bold/sub-01"][n:2 * n], _z(data[("01", "figures01_run-2")])[trim:-trim],
                                   atol=1e-5)
    assert (out / "report" / "index.html").is_file()


# ---- CNeuroMod friends.fmriprep ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def fmriprep_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cnm")
    bold, masks = P.fmriprep_tree(tmp / "cneuromod", n_trs=30, cifti=True)
    cfg = P.fmriprep_config(tmp / "cneuromod", tmp / "results")
    return _run(tmp, cfg, "fmriprep"), tmp, bold, masks, cfg


def test_fmriprep_mask_rescan_and_confounds(fmriprep_run):
    from sklearn.linear_model import LinearRegression

    out, tmp, bold, masks, cfg = fmriprep_run
    used = {k: m for k, m in masks.items() if k != ("02", "s01e02a", "004")}      # ses-041 re-scan replaces it
    mask = np.logical_and.reduce(list(used.values()))
    trim = cfg["align"]["trim"]
    with h5py.File(out / "bold.h5") as f:
        np.testing.assert_array_equal(f["mask"][()].astype(bool), mask)
        got = f["bold/sub-02"][2 * (30 - 2 * trim):]                              # its third run, s01e02a
    func = tmp / "cneuromod/friends.fmriprep/sub-02/ses-041/func"
    with open(func / "sub-02_ses-041_task-s01e02a_desc-confounds_timeseries.tsv") as fh:
        conf = np.array([[float(r[c]) for c in cfg["data"]["bold"]["confounds"]] for r in csv.DictReader(fh, delimiter="\t")])
    y = bold[("02", "s01e02a", "041")][mask].T.astype(np.float64)
    resid = y - LinearRegression().fit(conf, y).predict(conf)                 # confounds regressed out
    np.testing.assert_allclose(got, _z(resid)[trim:-trim], atol=2e-4)
    rows = _csv(out / "roi_stats.csv")
    assert {r["roi"] for r in rows} == {"left_inferior", "right_inferior", "left_superior", "right_superior"}
    img = nib.load(str(out / "maps/group/group_feat-joint_stat-r_bold.nii.gz"))
    assert img.shape == mask.shape + (2,)


def test_cifti_results_are_dscalar_on_the_input_grayordinates(fmriprep_run, tmp_path):
    _, tmp, _, _, _ = fmriprep_run
    cfg = P.fmriprep_config(tmp / "cneuromod", tmp_path / "results", **{
        "data.bold.format": "cifti", "data.bold.space": "fsLR", "data.bold.rois": None,
        "data.bold.roi_names": None, "data.bold.confounds": None})
    out = _run(tmp_path, cfg, "cifti")
    path = out / "maps/group/group_feat-joint_stat-r.dscalar.nii"
    img = nib.load(str(path))
    assert isinstance(img, nib.Cifti2Image)
    axis = img.header.get_axis(1)
    assert axis == P.brain_models()
    assert list(img.header.get_axis(0).name) == ["layer 0", "layer 1"]
    with h5py.File(out / "stats.h5") as g:
        np.testing.assert_allclose(img.get_fdata(), g["voxel/mean_r"][0], rtol=1e-6, equal_nan=True)
    sub = nib.load(str(out / "maps/sub-01/sub-01_feat-joint_stat-r.dscalar.nii"))
    assert sub.shape == (2, len(P.brain_models()))
    assert not list((out / "maps").rglob("*.nii.gz"))                  # no (91282, 1, 1, L) NIfTI any more
    with h5py.File(out / "scores.h5") as f:
        assert f["mask"].attrs["space"] == "grayordinates" and "cifti" in f
