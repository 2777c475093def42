"""Noise ceilings: NC-SNR and ISC against loop implementations, simulations with a known ceiling, and the
/noise_ceiling group, roi_scores.csv and ceiling map written by the stats stage."""
import csv
import sys
import warnings
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_stats import ROI_IDS, make_config, make_scores  # noqa: E402

from brainalign import h5io  # noqa: E402
from brainalign.ceiling import (ceiling_interval, corrected_root, isc_ceiling, isc_reliability, ncsnr,  # noqa: E402
                                normalise, pooled_se, repeats_ceiling, signed_sqrt)
from brainalign.errors import ConfigError, DataError  # noqa: E402
from brainalign.stats import FS_COLUMNS, run_stats  # noqa: E402


def simulate(rng, n_subj, n, snr_sd, runs=None):
    """y_s = signal * a + noise_s; true ceiling = corr(signal, y_s) = a / sqrt(a^2 + 1)."""
    v = snr_sd.size
    signal = rng.standard_normal((n, v))
    Y = signal[None] * snr_sd + rng.standard_normal((n_subj, n, v))
    return Y, signal, snr_sd / np.sqrt(snr_sd ** 2 + 1)


def test_ncsnr_against_loop_and_known_ceiling():
    rng = np.random.default_rng(0)
    a = np.linspace(0.2, 2.0, 12)
    reps, signal, truth = simulate(rng, 3, 4000, a)           # 3 repetitions of one stimulus
    reps[:, :, 0] = reps[:, :, 0] * 3 + 5                     # scale/offset per repetition does not matter
    out = ncsnr(reps)
    for j in range(12):                                        # loop reference (Allen et al. 2022 recipe)
        z = [(r - r.mean()) / r.std() for r in reps[:, :, j]]
        noise = np.mean([np.var([zz[t] for zz in z], ddof=1) for t in range(0, 4000)])
        assert out["noise_var"][j] == pytest.approx(noise, rel=1e-10)
        assert out["ncsnr"][j] == pytest.approx(np.sqrt(max(0, 1 - noise)) / np.sqrt(noise), rel=1e-10)
    np.testing.assert_allclose(repeats_ceiling(reps), truth, atol=0.02)
    # predicting the average of 3 presentations: the ceiling is corr(signal, mean of reps)
    emp3 = np.array([np.corrcoef(signal[:, j], reps[:, :, j].mean(0))[0, 1] for j in range(12)])
    np.testing.assert_allclose(repeats_ceiling(reps, n_avg=3), emp3, atol=0.02)
    const = reps.copy()
    const[1, :, 5] = 1.0
    assert np.isnan(ncsnr(const)["ncsnr"][5]) and np.isfinite(ncsnr(const)["ncsnr"][4])
    with pytest.raises(DataError, match="n_rep >= 2"):
        ncsnr(reps[:1])


def test_isc_reliability_against_corrcoef_loop_per_run():
    rng = np.random.default_rng(1)
    runs = np.repeat([0, 1, 2], [30, 40, 35])
    Y = rng.standard_normal((4, runs.size, 6)) + rng.standard_normal((1, runs.size, 6))
    Y[2, runs == 1, 3] = 7.0                                  # constant in one run for one subject
    got = isc_reliability(Y, runs)
    for j in range(6):
        per_run, per_subj = [], []
        for k in range(3):
            m = runs == k
            c = np.corrcoef(Y[:, m, j])                       # (4, 4) subject-by-subject
            if np.all(Y[:, m, j].std(axis=1) > 0):
                per_run.append(c[np.triu_indices(4, 1)].mean())
                per_subj.append([(c[s].sum() - 1) / 3 for s in range(4)])
        assert got["rho"][j] == pytest.approx(np.mean(per_run), rel=1e-10)
        assert got["se"][j] == pytest.approx(np.std(per_run, ddof=1) / np.sqrt(len(per_run)), rel=1e-10)
        np.testing.assert_allclose(got["rho_subject"][:, j], np.mean(per_subj, axis=0), rtol=1e-10)
    assert got["n_runs"][3] == 2 and np.isnan(got["rho_runs"][1, 3])
    with pytest.raises(DataError, match="runs has shape"):
        isc_reliability(Y, runs[:-1])
    np.testing.assert_array_equal(signed_sqrt(np.array([-0.04, 0.09, np.nan])), [-0.2, 0.3, np.nan])


def planted_bold(rng, n_subj, n_runs, n_trs, ceilings, phi=0.5):
    """Independent simulation of the ISC model: one shared AR(1) signal per voxel, AR(1) noise per subject,
    y_s = c * signal + sqrt(1 - c^2) * noise_s (unit variance), so the true ceiling (the r of the signal with
    one subject's series) is c. Returns (S, n_runs * n_trs, v) and the run labels."""
    from scipy.signal import lfilter

    v = len(ceilings)
    ar = lambda *shape: lfilter([np.sqrt(1 - phi ** 2)], [1.0, -phi],          # noqa: E731
                                rng.standard_normal((shape[0] + 100,) + shape[1:]), axis=0)[100:]
    n = n_runs * n_trs
    signal = ar(n, v)
    noise = np.stack([ar(n, v) for _ in range(n_subj)])
    c = np.asarray(ceilings, dtype=np.float64)
    return c * signal[None] + np.sqrt(1 - c ** 2) * noise, np.repeat(np.arange(n_runs), n_trs)


@pytest.mark.parametrize("n_subj,n_runs", [(4, 4), (4, 40), (6, 12)])
def test_isc_ceiling_unbiased_at_low_reliability_with_an_interval(n_subj, n_runs):
    """Mean voxel ceiling within 0.02 of the truth at 0, 0.15 and 0.30 (S = 4, 4 x 157 TRs; the study's 4
    subjects with more runs; 6 subjects); the 95 % interval covers the truth in 90-99 % of voxels; a null voxel
    is almost never normalised (the interval's lower end above the 0.1 floor in < 1 %). The former estimator
    (LOSO ISC, Spearman-Brown, clipped) read 0.070 / 0.135 / 0.29 here (S = 4, 4 runs)."""
    rng = np.random.default_rng([31, n_subj, n_runs])
    per = 3000 if n_runs == 4 else 300
    truth = np.repeat([0.0, 0.15, 0.30], per)
    Y, runs = planted_bold(rng, n_subj, n_runs, 157, truth)
    rel = isc_reliability(Y, runs)
    ceil = isc_ceiling(Y, runs)
    np.testing.assert_allclose(ceil, corrected_root(rel["rho"], pooled_se(rel["se"])), rtol=1e-12)
    low, high = ceiling_interval(rel["rho"], rel["se"], rel["n_runs"])
    for c in (0.0, 0.15, 0.30):
        sel = truth == c
        print(f"S {n_subj}, {n_runs} runs: truth {c:.2f} mean {ceil[sel].mean():.4f} "
              f"coverage {np.mean((low[sel] <= c) & (c <= high[sel])):.3f}")
        assert abs(ceil[sel].mean() - c) <= 0.02, (c, ceil[sel].mean())
        assert 0.90 <= np.mean((low[sel] <= c) & (c <= high[sel])) <= 0.99
    null = truth == 0
    assert np.mean(np.isfinite(normalise(np.full(null.sum(), 0.1), ceil[null], 0.1, low[null]))) < 0.01
    if n_runs == 40:                                # reliable voxels are normalised with enough data
        assert np.mean(np.isfinite(normalise(np.full(per, 0.1), ceil[truth == 0.3], 0.1, low[truth == 0.3]))) > 0.9


def test_normalise_gates_on_the_interval():
    np.testing.assert_array_equal(normalise(np.array([0.2, 0.2, 0.2]), np.array([0.5, 0.05, np.nan])),
                                  [0.4, np.nan, np.nan])
    np.testing.assert_array_equal(normalise(np.array([0.2, 0.2]), np.array([0.5, 0.5]), 0.1, np.array([0.3, 0.05])),
                                  [0.4, np.nan])


# ---- the stats stage -----------------------------------------------------------------------------

def write_bold(out, mask, n_subj=5, seed=0, runs=(40, 50, 45)):
    rng = np.random.default_rng(seed)
    V = int(mask.sum())
    a = np.where(np.arange(V) < 40, 1.5, 0.2)                 # high ceiling in the first two ROIs
    runs_idx = np.concatenate([np.full(n, k, np.int32) for k, n in enumerate(runs)])
    Y, _, truth = simulate(rng, n_subj, runs_idx.size, a)
    Y[:, :, 70] = 0.0                                          # constant voxel: NaN ceiling
    with h5io.atomic_h5(Path(out) / "bold.h5", "align") as f:
        f.create_dataset("runs", data=runs_idx)
        f.attrs["subjects"] = h5io.str_attr([f"{i + 1:02d}" for i in range(n_subj)])
        g = f.create_group("bold")
        for s in range(n_subj):
            g.create_dataset(f"sub-{s + 1:02d}", data=Y[s].astype(np.float32))
    return Y.astype(np.float32).astype(np.float64), runs_idx, truth


@pytest.fixture(scope="module")
def with_ceiling(tmp_path_factory):
    out = tmp_path_factory.mktemp("ceil")
    arrays = make_scores(out, seed=1)
    Y, runs, truth = write_bold(out, arrays["mask"])
    cfg = make_config(out)
    return cfg, arrays, Y, runs, truth, run_stats(cfg)


def _pair_rho_runs(Y, runs):
    """Loop reference: (n_runs, v) mean over subject pairs of np.corrcoef on each run (NaN: constant)."""
    S, out = Y.shape[0], []
    for k in np.unique(runs):
        row = []
        for j in range(Y.shape[2]):
            y = Y[:, runs == k, j]
            row.append(np.corrcoef(y)[np.triu_indices(S, 1)].mean() if np.all(y.std(axis=1) > 0) else np.nan)
        out.append(row)
    return np.array(out)


def test_stats_writes_noise_ceiling_group(with_ceiling):
    cfg, arrays, Y, runs, truth, path = with_ceiling
    labels = arrays["labels"]
    rho_runs = _pair_rho_runs(Y, runs)                        # (3 runs, V)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rho = np.nanmean(rho_runs, axis=0)
        se = np.nanstd(rho_runs, axis=0, ddof=1) / np.sqrt(3)
        roi_runs = np.stack([np.nanmean(rho_runs[:, labels == i], axis=1) for i in ROI_IDS], axis=1)
    t = 4.302652729911275                                     # scipy.stats.t.ppf(0.975, 2)
    ssqrt = lambda x: np.sign(x) * np.sqrt(np.abs(x))          # noqa: E731
    with h5py.File(path, "r") as f:
        g = f["noise_ceiling"]
        assert g.attrs["method"] == "isc" and g.attrs["floor"] == 0.1 and "pairs" in g.attrs["formula"]
        ceil = g["ceiling"][()]
        assert ceil.shape == (5, Y.shape[2]) and ceil.dtype == np.float32
        sigma = np.sqrt(np.nanmedian(se ** 2))
        boost = 1 + 0.3 * np.exp(-0.5 * (rho / sigma / 1.6) ** 2)
        assert g.attrs["sigma"] == pytest.approx(sigma, rel=1e-6)
        np.testing.assert_allclose(ceil, np.broadcast_to(ssqrt(rho) * boost, ceil.shape), atol=1e-5, equal_nan=True)
        np.testing.assert_allclose(g["ceiling_low"][0], ssqrt(rho - t * se), atol=1e-5, equal_nan=True)
        np.testing.assert_allclose(g["ceiling_high"][0], ssqrt(rho + t * se), atol=1e-5, equal_nan=True)
        assert np.isnan(ceil[:, 70]).all()                                # the constant voxel
        assert abs(np.nanmean(ceil[:, :40]) - truth[0]) < 0.03           # known ceiling of the planted ROIs
        rc = g["roi_ceiling"][()]
        roi_se = roi_runs.std(axis=0, ddof=1) / np.sqrt(3)
        roi_sigma = np.sqrt(np.median(roi_se ** 2))
        ref_rc = ssqrt(roi_runs.mean(axis=0)) * (1 + 0.3 * np.exp(-0.5 * (roi_runs.mean(axis=0) / roi_sigma / 1.6) ** 2))
        np.testing.assert_allclose(rc, np.broadcast_to(ref_rc, rc.shape), rtol=1e-6)
        ref_low = ssqrt(roi_runs.mean(axis=0) - t * roi_se)
        np.testing.assert_allclose(g["roi_ceiling_low"][0], ref_low, rtol=1e-6)
        rn = g["roi_normalised"][()]
        ref_rn = f["roi/mean_r"][()] / ref_rc[None, None, None, :]
        ref_rn[np.broadcast_to(~(ref_low[None, None, None, :] > 0.1), ref_rn.shape)] = np.nan
        np.testing.assert_allclose(rn, ref_rn, rtol=1e-6, equal_nan=True)
        assert rc[:, :2].min() > 0.7 and rc[:, 2].max() < 0.5  # high-SNR ROIs vs the low-SNR one
        vn = g["voxel_normalised"][()]
        rm = arrays["r_mean"].astype(np.float64)
        low = g["ceiling_low"][()]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ratio = np.where(low[:, None, None, :] > 0.1, rm / ceil[:, None, None, :], np.nan)
            np.testing.assert_allclose(vn, np.nanmean(ratio, axis=0), rtol=1e-5, equal_nan=True)
    img = nib.load(Path(cfg.output) / "maps" / "group" / "group_stat-ceiling_bold.nii.gz")
    vol = np.asarray(img.dataobj)
    assert vol.shape == arrays["mask"].shape
    np.testing.assert_allclose(vol[arrays["mask"]], np.nanmean(ceil, axis=0), rtol=1e-5, equal_nan=True)


def test_stats_stage_ceilings_unbiased_for_voxels_and_rois(tmp_path):
    """Through the stats stage: S = 4, 4 x 157 TRs, 159 ROIs of 20 voxels planted at a true ceiling of 0,
    0.15 or 0.30 (independent simulation): the mean voxel ceiling and the mean ROI ceiling are within 0.02 of
    the truth at each level, and no null ROI is normalised."""
    arrays = make_scores(tmp_path, seed=2, n_subjects=4, grid=(22, 22, 10), rois=False)
    V = int(arrays["mask"].sum())                              # 3199
    n_roi = V // 20
    labels = np.minimum(np.arange(V) // 20, n_roi - 1).astype(np.int32) + 1
    truth_roi = np.array([0.0, 0.15, 0.30])[np.arange(n_roi) % 3]
    truth = truth_roi[labels - 1]
    with h5py.File(tmp_path / "scores.h5", "a") as f:
        f["roi_labels"][...] = labels
        f.attrs["roi_ids"] = np.arange(1, n_roi + 1, dtype=np.int64)
        f.attrs["roi_names"] = h5io.str_attr([f"roi{i}" for i in range(n_roi)])
    Y, runs = planted_bold(np.random.default_rng(7), 4, 4, 157, truth)
    with h5io.atomic_h5(tmp_path / "bold.h5", "align") as f:
        f.create_dataset("runs", data=runs.astype(np.int32))
        f.attrs["subjects"] = h5io.str_attr([f"{i + 1:02d}" for i in range(4)])
        g = f.create_group("bold")
        for s in range(4):
            g.create_dataset(f"sub-{s + 1:02d}", data=Y[s].astype(np.float32))
    cfg = make_config(tmp_path)
    cfg.stats.noise_ceiling = "isc"
    run_stats(cfg)
    with h5py.File(tmp_path / "stats.h5", "r") as f:
        ceil, rc = f["noise_ceiling/ceiling"][0], f["noise_ceiling/roi_ceiling"][0]
        rn = f["noise_ceiling/roi_normalised"][()]
    for c in (0.0, 0.15, 0.30):
        print(f"stage: truth {c:.2f}: voxels {ceil[truth == c].mean():.4f}, ROIs {rc[truth_roi == c].mean():.4f}")
        assert abs(ceil[truth == c].mean() - c) <= 0.02
        assert abs(rc[truth_roi == c].mean() - c) <= 0.02
    assert np.isnan(rn[..., truth_roi == 0]).all()


def test_roi_scores_csv(with_ceiling):
    cfg, arrays, *_ , path = with_ceiling
    with open(Path(cfg.output) / "roi_scores.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0].keys()) == FS_COLUMNS and len(rows) == 3 * 3 * 3
    with h5py.File(path, "r") as f:
        rm, rn, rc = f["roi/mean_r"][()], f["noise_ceiling/roi_normalised"][()], f["noise_ceiling/roi_ceiling"][()]
    row = next(r for r in rows if r["feature_set"] == "no_vision" and r["layer"] == "1" and r["roi"] == "planted")
    assert float(row["mean_r"]) == pytest.approx(rm[:, 1, 1, 0].mean(), rel=1e-12)
    assert float(row["sem_r"]) == pytest.approx(rm[:, 1, 1, 0].std(ddof=1) / np.sqrt(5), rel=1e-10)
    assert float(row["ceiling"]) == pytest.approx(rc[:, 0].mean(), rel=1e-12)
    assert float(row["normalised_r"]) == pytest.approx(rn[:, 1, 1, 0].mean(), rel=1e-12)
    assert int(row["n_subjects"]) == 5


def test_ceiling_modes_and_errors(tmp_path):
    arrays = make_scores(tmp_path, seed=1)
    cfg = make_config(tmp_path)
    run_stats(cfg)                                           # auto without bold.h5: no ceiling, no error
    with h5py.File(tmp_path / "stats.h5", "r") as f:
        assert "noise_ceiling" not in f
    assert not (tmp_path / "roi_scores.csv").exists()
    cfg.stats.noise_ceiling = "isc"
    with pytest.raises(DataError, match="BOLD file \\(noise ceiling\\) not found"):
        run_stats(cfg, force=True)
    cfg.stats.noise_ceiling = "bogus"
    with pytest.raises(ConfigError, match="stats.noise_ceiling: expected one of"):
        run_stats(cfg, force=True)
    # repeats: per-subject HDF5 files with /repeats (n_rep, n_trs, n_voxels)
    V = int(arrays["mask"].sum())
    rng = np.random.default_rng(5)
    for s in range(5):
        reps, _, truth = simulate(rng, 2, 300, np.full(V, 1.0))
        with h5io.atomic_h5(tmp_path / f"rep-{s + 1:02d}.h5", "test") as f:
            f.create_dataset("repeats", data=reps)
    cfg.stats.noise_ceiling = "repeats"
    with pytest.raises(ConfigError, match="noise_ceiling_repeats"):
        run_stats(cfg, force=True)
    cfg.stats.noise_ceiling_repeats = str(tmp_path / "rep-{subject}.h5")
    run_stats(cfg, force=True)
    with h5py.File(tmp_path / "stats.h5", "r") as f:
        g = f["noise_ceiling"]
        assert g.attrs["method"] == "repeats" and g.attrs["n_avg"] == 1 and "ncsnr" in g
        assert abs(np.nanmean(g["ceiling"][()]) - truth[0]) < 0.03
    with h5io.atomic_h5(tmp_path / "rep-03.h5", "test") as f:
        f.create_dataset("repeats", data=np.zeros((2, 10, V + 1)))
    with pytest.raises(DataError, match=r"rep-03.h5: /repeats has shape \(2, 10, %d\)" % (V + 1)):
        run_stats(cfg, force=True)
