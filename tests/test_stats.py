"""Group statistics: array functions against scipy, the stats stage on planted and null scores.h5."""
import csv
import warnings
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import yaml
from scipy import stats as sps

from brainalign import h5io
from brainalign.config import parse_config
from brainalign.errors import ConfigError, DataError
from brainalign.fdr import fdr_bh
from brainalign.stats import (CSV_COLUMNS, fisher_z, one_sample_t, roi_means, run_stats)

FEATURE_SETS = ["joint", "no_vision", "no_language"]
ROI_NAMES = ["planted", "null", "reverse"]
ROI_IDS = [3, 7, 9]          # non-contiguous on purpose


# ---- fixtures ------------------------------------------------------------------------------------

def make_config(out, contrasts=None, q=0.05, conditions=FEATURE_SETS, report=None):
    data = {"name": "t", "output": str(out),
            "data": {"episodes": ["e1", "e2", "e3", "e4"], "bold": {"subjects": ["01", "02"]}},
            "model": {"conditions": list(conditions)},
            "stats": {"q": q, "contrasts": contrasts if contrasts is not None else [
                {"name": "joint-vs-novision", "a": "joint", "b": "no_vision"},
                {"name": "joint-vs-zero", "a": "joint", "b": None}]}}
    if report:
        data["report"] = report
    text = yaml.safe_dump(data, sort_keys=False)
    return parse_config(data, source="test.yaml", text=text)


def make_scores(out, seed=0, n_subjects=5, layers=(0, 1, 2), n_folds=4, grid=(8, 8, 6),
                feature_sets=FEATURE_SETS, effect=0.15, noise=0.03, nan_voxels=3, config_text="x: 1\n", rois=True):
    """Write {out}/scores.h5 in the fit stage's layout with planted effects; return the arrays.

    ROI 'planted': joint > no_vision by ``effect`` in every subject at every layer (strongest at the
    last layer); 'reverse': joint < no_vision; 'null': identical distributions. no_language = no_vision.
    """
    rng = np.random.default_rng(seed)
    mask = np.zeros(grid, dtype=np.uint8)
    mask[1:-1, 1:-1, 1:-1] = 1
    mask[2, 2, 2] = 0                                 # a hole: voxel order must follow the mask
    V = int(mask.sum())
    labels = np.zeros(V, dtype=np.int32)
    if rois:
        labels[0:20], labels[20:40], labels[40:60] = ROI_IDS
    S, F, L = n_subjects, len(feature_sets), len(layers)
    base = 0.1 + 0.05 * rng.standard_normal((S, 1, 1, 1, V))
    r = base + noise * rng.standard_normal((S, F, L, n_folds, V))
    layer_gain = np.linspace(0.5, 1.0, L)[None, :, None, None]
    ij = feature_sets.index("joint")
    r[:, ij, :, :, 0:20] += effect * layer_gain
    r[:, ij, :, :, 40:60] -= effect * layer_gain
    r[:, :, :, :, 60:60 + nan_voxels] = np.nan          # constant voxels
    if nan_voxels > 1:
        r[0, :, :, 1, 61] = 0.2                           # one fold finite for one subject
    r = r.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        r_mean = np.nanmean(r, axis=3).astype(np.float32)
    affine = np.diag([2.0, 2.0, 2.5, 1.0])
    affine[:3, 3] = [-10, -12, -8]
    path = Path(out) / "scores.h5"
    with h5io.atomic_h5(path, "fit", config_text) as f:
        f.create_dataset("r", data=r)
        f.create_dataset("alpha", data=np.full(r.shape, 10.0, dtype=np.float32))
        f.create_dataset("r_mean", data=r_mean)
        f.create_dataset("mask", data=mask)
        f["mask"].attrs["affine"] = affine
        f.create_dataset("roi_labels", data=labels)
        f.attrs["subjects"] = h5io.str_attr([f"{i + 1:02d}" for i in range(S)])
        f.attrs["feature_sets"] = h5io.str_attr(feature_sets)
        f.attrs["layers"] = np.asarray(layers, dtype=np.int64)
        f.attrs["folds"] = h5io.str_attr([f"run{i}" for i in range(n_folds)])
        f.attrs["roi_names"] = h5io.str_attr(ROI_NAMES if rois else [])
        f.attrs["roi_ids"] = np.asarray(ROI_IDS if rois else [], dtype=np.int32)
    return dict(path=path, r=r, r_mean=r_mean, mask=mask.astype(bool), affine=affine, labels=labels)


# ---- pure functions ------------------------------------------------------------------------------

def test_fisher_z_matches_arctanh_and_clips():
    r = np.array([-0.9, -0.3, 0.0, 0.5, 0.99, np.nan])
    np.testing.assert_allclose(fisher_z(r)[:5], np.arctanh(r[:5]), rtol=1e-12)
    assert np.isnan(fisher_z(r)[5])
    z = fisher_z(np.array([1.0, -1.0, 1.5], dtype=np.float32))
    assert np.all(np.isfinite(z)) and z.dtype == np.float64
    assert z[0] == -z[1] == z[2] and 8 < z[0] < 9


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_one_sample_t_matches_scipy_with_nans(axis):
    rng = np.random.default_rng(1)
    x = rng.normal(0.3, 1.0, (8, 5, 6))
    x[rng.random(x.shape) < 0.15] = np.nan
    res = one_sample_t(x, axis=axis)
    ref = sps.ttest_1samp(x, 0.0, axis=axis, nan_policy="omit")
    np.testing.assert_allclose(res["t"], np.asarray(ref.statistic), rtol=1e-10)
    np.testing.assert_allclose(res["p"], np.asarray(ref.pvalue), rtol=1e-9)
    xm = np.moveaxis(x, axis, 0)
    for idx in np.ndindex(xm.shape[1:]):
        col = xm[(slice(None),) + idx]
        col = col[np.isfinite(col)]
        one = sps.ttest_1samp(col, 0.0)
        lo, hi = one.confidence_interval(0.95)
        assert res["n"][idx] == col.size and res["df"][idx] == one.df
        np.testing.assert_allclose([res["ci_low"][idx], res["ci_high"][idx]], [lo, hi], rtol=1e-10)
        np.testing.assert_allclose(res["mean"][idx], col.mean(), rtol=1e-12)
        np.testing.assert_allclose(res["cohen_d"][idx], col.mean() / col.std(ddof=1), rtol=1e-10)


def test_one_sample_t_edge_cases():
    x = np.array([[1.0, 0.0, 2.0, np.nan, 0.4],
                  [1.0, 0.0, np.nan, np.nan, -0.1],
                  [1.0, 0.0, np.nan, np.nan, 0.7]])
    res = one_sample_t(x)
    assert res["t"][0] == np.inf and res["p"][0] == 0.0             # constant, nonzero: like scipy
    assert np.isnan(res["t"][1]) and np.isnan(res["p"][1])          # constant zero
    for k in ("t", "p", "mean", "ci_low", "ci_high", "df", "cohen_d"):
        assert np.isnan(res[k][2]) and np.isnan(res[k][3]), k       # fewer than 2 finite subjects
    assert list(res["n"]) == [3, 3, 1, 0, 3]
    ref = sps.ttest_1samp(x[:, 4], 0.0)
    np.testing.assert_allclose(res["t"][4], ref.statistic)


@pytest.mark.parametrize("axis", [0, -1])
def test_fdr_bh_matches_scipy_ignoring_nan(axis):
    rng = np.random.default_rng(2)
    p = np.concatenate([rng.uniform(0, 1, (40, 6)), rng.uniform(0, 0.01, (10, 6))])
    p[rng.random(p.shape) < 0.2] = np.nan
    p[3, :] = p[4, :]                                            # ties
    p = p if axis == 0 else p.T
    q = fdr_bh(p, axis=axis)
    pm, qm = np.moveaxis(p, axis, -1), np.moveaxis(q, axis, -1)
    for i in range(pm.shape[0]):
        ok = np.isfinite(pm[i])
        np.testing.assert_allclose(qm[i][ok], sps.false_discovery_control(pm[i][ok]), rtol=1e-12)
        assert np.all(np.isnan(qm[i][~ok]))
    assert np.all(np.isnan(fdr_bh(np.full(4, np.nan))))
    np.testing.assert_allclose(fdr_bh(np.array(0.2)), 0.2)
    with pytest.raises(ValueError):
        fdr_bh(np.array([0.1, 1.5]))


def test_roi_means_against_loop():
    rng = np.random.default_rng(3)
    r = rng.standard_normal((2, 3, 50))
    r[rng.random(r.shape) < 0.1] = np.nan
    labels = rng.choice([0, 2, 5, 8], size=50)
    r[..., labels == 8] = np.nan                                  # all-NaN ROI
    ids = np.array([5, 2, 8, 11])                                 # 11: no voxel
    got = roi_means(r, labels, ids)
    assert got.shape == (2, 3, 4)
    for idx in np.ndindex(2, 3):
        for j, rid in enumerate(ids):
            vals = [v for v, lab in zip(r[idx], labels) if lab == rid and not np.isnan(v)]
            if vals:
                assert got[idx + (j,)] == pytest.approx(sum(vals) / len(vals), rel=1e-12)
            else:
                assert np.isnan(got[idx + (j,)])


# ---- the stage -----------------------------------------------------------------------------------

@pytest.fixture
def planted(tmp_path):
    # seed 1: the null ROI's p-values are 0.87, 0.12, 0.68 (seed 0 draws a p = 0.02, a 5 % event)
    arrays = make_scores(tmp_path, seed=1)
    cfg = make_config(tmp_path)
    return cfg, arrays, run_stats(cfg)


def _csv_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_run_stats_detects_planted_effects(planted):
    cfg, arrays, path = planted
    with h5py.File(path, "r") as f:
        g = f["roi/joint-vs-novision"]
        sig, t, mean = g["significant"][()], g["t"][()], g["mean"][()]
        assert sig.shape == (3, 3)
        assert np.all(sig[:, 0] == 1) and np.all(t[:, 0] > 0) and np.all(mean[:, 0] > 0)   # planted
        assert np.all(sig[:, 1] == 0)                                                     # null
        assert np.all(sig[:, 2] == 1) and np.all(t[:, 2] < 0)                             # reverse
        vs = f["voxel/joint-vs-novision/significant"][()]
        labels = arrays["labels"]
        assert vs[:, labels == 3].mean() > 0.9 and vs[:, labels == 7].mean() < 0.1
        assert np.all(f["voxel/joint-vs-novision/t"][:, labels == 9] < 0)
        assert np.all(f["roi/joint-vs-zero/significant"][:, :2] == 1)     # r ~ 0.1 > 0 everywhere


def test_run_stats_numbers_match_independent_scipy(planted):
    cfg, arrays, path = planted
    rm = arrays["r_mean"].astype(np.float64)           # (S, F, L, V)
    labels = arrays["labels"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        roi_r = np.stack([np.nanmean(rm[..., labels == i], axis=-1) for i in ROI_IDS], axis=-1)
    d = np.arctanh(roi_r[:, 0]) - np.arctanh(roi_r[:, 1])                   # (S, L, R)
    ref = sps.ttest_1samp(d, 0.0, axis=0)
    with h5py.File(path, "r") as f:
        np.testing.assert_allclose(f["roi/mean_r"][()], roi_r, rtol=1e-12)
        g = f["roi/joint-vs-novision"]
        np.testing.assert_allclose(g["t"][()], ref.statistic, rtol=1e-9)
        np.testing.assert_allclose(g["p"][()], ref.pvalue, rtol=1e-9)
        lo, hi = ref.confidence_interval()
        np.testing.assert_allclose(g["ci_low"][()], lo, rtol=1e-9)
        np.testing.assert_allclose(g["ci_high"][()], hi, rtol=1e-9)
        # the default stats.fdr_family corrects across layers x ROIs within the contrast
        np.testing.assert_allclose(g["q"][()].ravel(), sps.false_discovery_control(ref.pvalue.ravel()), rtol=1e-9)
        # voxels (NaN voxels excluded per subject)
        dv = np.arctanh(rm[:, 0]) - np.arctanh(rm[:, 1])                        # (S, L, V)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            refv = sps.ttest_1samp(dv, 0.0, axis=0, nan_policy="omit")
        tv, pv, qv = (f[f"voxel/joint-vs-novision/{k}"][()] for k in ("t", "p", "q"))
        ok = np.isfinite(np.asarray(refv.statistic))
        np.testing.assert_allclose(tv[ok], np.asarray(refv.statistic)[ok], rtol=1e-5)
        assert np.all(np.isnan(tv[~ok]))
        okl = np.isfinite(pv)
        np.testing.assert_allclose(qv[okl], sps.false_discovery_control(pv[okl].astype(np.float64)), rtol=1e-5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            np.testing.assert_allclose(f["voxel/mean_r"][()], np.nanmean(rm, axis=0), rtol=1e-6)


def test_stats_h5_layout(planted):
    cfg, arrays, path = planted
    S, F, L, R, V = 5, 3, 3, 3, arrays["labels"].size
    with h5io.open_h5(path, "stats file") as f:
        assert h5io.read_str_attr(f, "subjects") == ["01", "02", "03", "04", "05"]
        assert h5io.read_str_attr(f, "feature_sets") == FEATURE_SETS
        assert h5io.read_str_attr(f, "roi_names") == ROI_NAMES
        assert list(f.attrs["roi_ids"]) == ROI_IDS and list(f.attrs["layers"]) == [0, 1, 2]
        assert h5io.read_str_attr(f, "contrasts") == ["joint-vs-novision", "joint-vs-zero"]
        assert h5io.read_str_attr(f, "contrast_a") == ["joint", "joint"]
        assert h5io.read_str_attr(f, "contrast_b") == ["no_vision", ""]
        assert f.attrs["q"] == 0.05 and f.attrs["stage"] == "stats" and f.attrs["config"] == cfg.text
        assert f["roi/mean_r"].shape == (S, F, L, R) and f["roi/mean_r"].dtype == np.float64
        assert f["voxel/mean_r"].shape == (F, L, V) and f["voxel/mean_r"].dtype == np.float32
        for c in ("joint-vs-novision", "joint-vs-zero"):
            g = f[f"roi/{c}"]
            assert set(g) == {"t", "p", "q", "mean", "ci_low", "ci_high", "cohen_d", "n_subjects", "significant"}
            for k in ("t", "p", "q", "mean", "ci_low", "ci_high", "cohen_d"):
                assert g[k].shape == (L, R) and g[k].dtype == np.float64
            assert g["n_subjects"].dtype == np.int32 and g["significant"].dtype == np.uint8
            assert np.all(g["n_subjects"][()] == S)
            gv = f[f"voxel/{c}"]
            assert set(gv) == {"t", "p", "q", "mean", "significant", "n_subjects"}
            assert gv["n_subjects"].dtype == np.int16 and gv["n_subjects"].shape == (L, V)
            for k in ("t", "p", "q", "mean"):
                assert gv[k].shape == (L, V) and gv[k].dtype == np.float32
            assert gv["significant"].dtype == np.uint8
        assert f["roi/joint-vs-zero"].attrs["b"] == "" and f["voxel/joint-vs-novision"].attrs["b"] == "no_vision"


def test_csv_matches_stats_h5(planted):
    cfg, arrays, path = planted
    rows = _csv_rows(Path(cfg.output) / "roi_stats.csv")
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    assert len(rows) == 2 * 3 * 3
    with h5py.File(path, "r") as f:
        for row in rows:
            g = f[f"roi/{row['contrast']}"]
            li, ri = [0, 1, 2].index(int(row["layer"])), ROI_NAMES.index(row["roi"])
            assert row["a"] == "joint" and row["b"] == ("" if row["contrast"] == "joint-vs-zero" else "no_vision")
            assert int(row["n_subjects"]) == g["n_subjects"][li, ri]
            assert int(row["significant"]) == g["significant"][li, ri]
            for col, key in (("mean_dz", "mean"), ("ci_low", "ci_low"), ("ci_high", "ci_high"), ("t", "t"),
                             ("p", "p"), ("q", "q")):
                assert float(row[col]) == g[key][li, ri], (col, row)


def test_group_nifti_maps(planted):
    cfg, arrays, path = planted
    mask, affine = arrays["mask"], arrays["affine"]
    maps = Path(cfg.output) / "maps" / "group"
    names = sorted(p.name for p in maps.iterdir())
    assert names == sorted([f"group_contrast-{c}_stat-{k}_bold.nii.gz" for c in ("joint-vs-novision", "joint-vs-zero")
                            for k in "tq"] + [f"group_feat-{fs}_stat-r_bold.nii.gz" for fs in FEATURE_SETS])
    with h5py.File(path, "r") as f:
        for c in ("joint-vs-novision", "joint-vs-zero"):
            for k in ("t", "q"):
                img = nib.load(maps / f"group_contrast-{c}_stat-{k}_bold.nii.gz")
                data = img.get_fdata(dtype=np.float32)
                assert data.shape == mask.shape + (3,)
                np.testing.assert_allclose(img.affine, affine)
                np.testing.assert_array_equal(data[mask].T, f[f"voxel/{c}/{k}"][()])
                assert np.all(np.isnan(data[~mask]))
        img = nib.load(maps / "group_feat-no_vision_stat-r_bold.nii.gz")
        np.testing.assert_array_equal(img.get_fdata(dtype=np.float32)[mask].T, f["voxel/mean_r"][1])


def test_run_stats_resumes_and_reruns(planted):
    cfg, arrays, path = planted
    before = path.stat().st_mtime_ns
    assert run_stats(cfg) == path and path.stat().st_mtime_ns == before          # complete: skipped
    run_stats(cfg, force=True)
    assert path.stat().st_mtime_ns != before
    before = path.stat().st_mtime_ns
    cfg2 = make_config(cfg.output, q=0.01)                                        # other config: rerun
    run_stats(cfg2)
    assert path.stat().st_mtime_ns != before
    with h5py.File(path, "r") as f:
        assert f.attrs["q"] == 0.01
    before = path.stat().st_mtime_ns
    (Path(cfg.output) / "maps" / "group" / "group_feat-joint_stat-r_bold.nii.gz").unlink()
    run_stats(cfg2)                                                               # a map is missing: rerun
    assert path.stat().st_mtime_ns != before


def test_null_data_fdr_controlled(tmp_path):
    """r independent of condition: voxels declared significant at q stay <= q, and p is uniform."""
    q, fractions, p_rates = 0.1, [], []
    for seed in range(6):
        out = tmp_path / f"s{seed}"
        make_scores(out, seed=seed, n_subjects=6, layers=(0, 1), n_folds=2, grid=(16, 16, 12),
                    effect=0.0, noise=0.05, nan_voxels=0)
        cfg = make_config(out, q=q, contrasts=[{"name": "null", "a": "joint", "b": "no_vision"}])
        with h5py.File(run_stats(cfg), "r") as f:
            fractions.append(f["voxel/null/significant"][()].mean())
            p_rates.append((f["voxel/null/p"][()] < 0.05).mean())
            assert f["roi/null/significant"][()].sum() <= 1
    assert np.mean(fractions) <= q
    assert 0.04 < np.mean(p_rates) < 0.06          # the test is calibrated, not merely conservative


def test_fdr_controlled_with_true_effects(tmp_path):
    """A mixture of true and null voxels: the false discovery proportion averages <= q."""
    from brainalign.fdr import fdr_bh as bh
    rng = np.random.default_rng(5)
    q, fdps = 0.1, []
    for _ in range(20):
        S, V = 8, 2000
        true = np.arange(V) < 400
        d = rng.standard_normal((S, V)) + np.where(true, 1.2, 0.0)
        res = one_sample_t(d)
        sig = bh(res["p"]) <= q
        fdps.append((sig & ~true).sum() / max(sig.sum(), 1))
    assert np.mean(fdps) <= q


def test_run_stats_without_rois(tmp_path):
    make_scores(tmp_path, rois=False)
    cfg = make_config(tmp_path)
    with h5py.File(run_stats(cfg), "r") as f:
        assert f["roi/mean_r"].shape == (5, 3, 3, 0) and f["roi/joint-vs-zero/t"].shape == (3, 0)
        assert f["voxel/joint-vs-novision/significant"][:, :20].all()
    assert len(_csv_rows(tmp_path / "roi_stats.csv")) == 0


# ---- errors --------------------------------------------------------------------------------------

def test_unknown_feature_set_names_config_key(tmp_path):
    make_scores(tmp_path, feature_sets=["joint", "no_vision"])
    cfg = make_config(tmp_path, contrasts=[{"name": "c", "a": "no_language", "b": "joint"}])
    with pytest.raises(ConfigError, match=r"stats\.contrasts\[0\]\.a: 'no_language' is not a feature set"):
        run_stats(cfg)
    cfg = make_config(tmp_path, contrasts=[{"name": "c", "a": "joint", "b": "no_language"}])
    with pytest.raises(ConfigError, match=r"stats\.contrasts\[0\]\.b"):
        run_stats(cfg)
    cfg = make_config(tmp_path, contrasts=[{"name": "a/b", "a": "joint", "b": None}])
    with pytest.raises(ConfigError, match=r"stats\.contrasts\[0\]\.name"):
        run_stats(cfg)


def test_one_subject_is_a_data_error(tmp_path):
    make_scores(tmp_path, n_subjects=1)
    with pytest.raises(DataError, match="group statistics need ≥ 2 subjects; scores.h5 has 1"):
        run_stats(make_config(tmp_path))
    assert not (tmp_path / "stats.h5").exists()


def test_missing_incomplete_or_inconsistent_scores(tmp_path):
    cfg = make_config(tmp_path)
    with pytest.raises(DataError, match=f"scores file not found: {tmp_path / 'scores.h5'}"):
        run_stats(cfg)
    with h5py.File(tmp_path / "scores.h5", "w") as f:
        f.create_dataset("r_mean", data=np.zeros(3))
    with pytest.raises(DataError, match="incomplete"):
        run_stats(cfg)
    make_scores(tmp_path)
    with h5py.File(tmp_path / "scores.h5", "a") as f:
        del f["roi_labels"]
        f.create_dataset("roi_labels", data=np.zeros(5, dtype=np.int32))
    with pytest.raises(DataError, match=r"/roi_labels has shape \(5,\)"):
        run_stats(cfg)


@pytest.mark.parametrize("family", [None, "layer", "contrast", "all"])     # None: the default
def test_fdr_family_q_values_equal_scipy_over_the_family(tmp_path, family):
    """stats.fdr_family decides what one BH correction spans; q equals scipy's BH over exactly that set.
    The default corrects across layers x ROIs (voxels) within each contrast."""
    make_scores(tmp_path, seed=3)
    cfg = make_config(tmp_path)
    if family is not None:
        cfg.stats.fdr_family = family
    names = ["joint-vs-novision", "joint-vs-zero"]
    with h5py.File(run_stats(cfg, force=True), "r") as f:
        assert f.attrs["fdr_family"] == (family or "contrast")
        for level in ("roi", "voxel"):
            p = {c: f[f"{level}/{c}/p"][()].astype(np.float64) for c in names}
            q = {c: f[f"{level}/{c}/q"][()].astype(np.float64) for c in names}
            groups = {"layer": [(c, li) for c in names for li in range(3)], "contrast": [(c,) for c in names],
                      "all": [()]}[family or "contrast"]
            for grp in groups:
                sel = [(c, li) for c in names for li in range(3)
                       if (not grp or grp[0] == c) and (len(grp) < 2 or grp[1] == li)]
                pv = np.concatenate([p[c][li] for c, li in sel])
                qv = np.concatenate([q[c][li] for c, li in sel])
                ok = np.isfinite(pv)
                np.testing.assert_allclose(qv[ok], sps.false_discovery_control(pv[ok]),
                                           rtol=1e-9 if level == "roi" else 1e-5)
                assert np.all(np.isnan(qv[~ok]))


def test_per_layer_correction_inflates_false_positives_across_layers():
    """Complete null, 10 layers x 5 ROIs: BH within each layer finds something somewhere in ~40 % of studies
    (one chance per layer); the default family (across layers x ROIs) keeps that at <= q."""
    from brainalign.fdr import fdr_by_family, stats_family

    rng = np.random.default_rng(8)
    q, hits = 0.05, {"layer": 0, "contrast": 0}
    n_studies = 400
    for _ in range(n_studies):
        p = {"c": one_sample_t(rng.standard_normal((8, 10, 5)), axis=0)["p"]}      # (L, R)
        for fam in hits:
            hits[fam] += bool((fdr_by_family(p, *stats_family(fam))["c"] <= q).any())
    print(f"any discovery in a complete null: per-layer BH {hits['layer'] / n_studies:.3f}, "
          f"across layers {hits['contrast'] / n_studies:.3f}")
    assert hits["layer"] / n_studies > 0.25
    assert hits["contrast"] / n_studies <= q + 2 * np.sqrt(q * (1 - q) / n_studies)
