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
from brainalign.ceiling import (isc_ceiling, loso_isc, ncsnr, normalise, repeats_ceiling,  # noqa: E402
                                spearman_brown_isc)
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


def test_loso_isc_against_corrcoef_loop_per_run():
    rng = np.random.default_rng(1)
    runs = np.repeat([0, 1, 2], [30, 40, 35])
    Y = rng.standard_normal((4, runs.size, 6)) + rng.standard_normal((1, runs.size, 6))
    Y[2, runs == 1, 3] = 7.0                                  # constant in one run for one subject
    got = loso_isc(Y, runs)
    for s in range(4):
        for j in range(6):
            vals = []
            for k in range(3):
                m = runs == k
                y, others = Y[s, m, j], np.delete(Y[:, m, j], s, axis=0).mean(0)
                if y.std() > 0 and others.std() > 0:
                    vals.append(np.corrcoef(y, others)[0, 1])
            assert got[s, j] == pytest.approx(np.mean(vals), rel=1e-10)
    with pytest.raises(DataError, match="runs has shape"):
        loso_isc(Y, runs[:-1])


@pytest.mark.parametrize("n_subj", [2, 5, 12])
def test_isc_ceiling_recovers_known_ceiling_and_oracle_model_normalises_to_one(n_subj):
    rng = np.random.default_rng(2)
    a = np.linspace(0.3, 2.0, 10)
    Y, signal, truth = simulate(rng, n_subj, 6000, a)
    ceil = isc_ceiling(Y)
    # compare explained variance (ceiling^2): its sampling error does not blow up near 0 like sqrt does
    np.testing.assert_allclose(ceil ** 2, np.broadcast_to(truth ** 2, ceil.shape), atol=0.04)
    assert np.abs(ceil - truth).mean() < 0.02
    raw = isc_ceiling(Y, spearman_brown=False)
    assert np.all(raw <= ceil + 1e-12)                         # uncorrected ISC is the conservative bound
    if n_subj == 2:
        np.testing.assert_allclose(ceil, np.sqrt(loso_isc(Y)), rtol=1e-12)   # pairwise: sqrt(r)
    oracle = np.array([[np.corrcoef(signal[:, j], Y[s, :, j])[0, 1] for j in range(10)] for s in range(n_subj)])
    norm = normalise(oracle, ceil, floor=0.1)
    np.testing.assert_allclose(norm[:, truth > 0.4], 1.0, atol=0.06)   # sampling error grows as the ceiling -> 0
    assert abs(np.median(norm) - 1.0) < 0.02


def test_spearman_brown_inverse_and_edges():
    rho = np.array([0.05, 0.2, 0.5, 0.9])
    for S in (2, 3, 8):
        k = S - 1
        isc = np.sqrt(rho * k * rho / (1 + (k - 1) * rho))
        np.testing.assert_allclose(spearman_brown_isc(isc, S), np.sqrt(rho), rtol=1e-12)
    out = spearman_brown_isc(np.array([-0.2, 0.0, np.nan]), 4)
    assert out[0] == 0 and out[1] == 0 and np.isnan(out[2])
    np.testing.assert_array_equal(normalise(np.array([0.2, 0.2, 0.2]), np.array([0.5, 0.05, np.nan])),
                                  [0.4, np.nan, np.nan])


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


def test_stats_writes_noise_ceiling_group(with_ceiling):
    cfg, arrays, Y, runs, truth, path = with_ceiling
    labels = arrays["labels"]
    ref_isc = np.array([[np.mean([np.corrcoef(Y[s, runs == k, j],
                                              np.delete(Y[:, runs == k, j], s, 0).mean(0))[0, 1] for k in range(3)])
                         if j != 70 else np.nan for j in range(Y.shape[2])] for s in range(5)])
    with h5py.File(path, "r") as f:
        g = f["noise_ceiling"]
        assert g.attrs["method"] == "isc" and g.attrs["spearman_brown"] == 1 and g.attrs["floor"] == 0.1
        assert "Spearman-Brown" in g.attrs["formula"]
        np.testing.assert_allclose(g["isc"][()], ref_isc, atol=1e-5, equal_nan=True)
        ceil = g["ceiling"][()]
        assert ceil.shape == (5, Y.shape[2]) and ceil.dtype == np.float32
        np.testing.assert_allclose(ceil, spearman_brown_isc(ref_isc, 5), atol=1e-5, equal_nan=True)
        assert abs(np.nanmean(ceil[:, :40]) - truth[0]) < 0.05           # known ceiling of the planted ROIs
        rc = g["roi_ceiling"][()]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ref_rc = np.stack([np.nanmean(ceil[:, labels == i], axis=1) for i in ROI_IDS], axis=1)
        np.testing.assert_allclose(rc, ref_rc, rtol=1e-6)
        rn = g["roi_normalised"][()]
        ref_rn = f["roi/mean_r"][()] / ref_rc[:, None, None, :]
        ref_rn[np.broadcast_to(ref_rc[:, None, None, :] <= 0.1, ref_rn.shape)] = np.nan
        np.testing.assert_allclose(rn, ref_rn, rtol=1e-6, equal_nan=True)
        assert rc[:, :2].min() > 0.7 and rc[:, 2].max() < 0.5  # high-SNR ROIs vs the low-SNR one
        vn = g["voxel_normalised"][()]
        rm = arrays["r_mean"].astype(np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ratio = np.where(ceil[:, None, None, :] > 0.1, rm / ceil[:, None, None, :], np.nan)
            np.testing.assert_allclose(vn, np.nanmean(ratio, axis=0), rtol=1e-5, equal_nan=True)
    img = nib.load(Path(cfg.output) / "maps" / "group" / "group_stat-ceiling_bold.nii.gz")
    vol = np.asarray(img.dataobj)
    assert vol.shape == arrays["mask"].shape
    np.testing.assert_allclose(vol[arrays["mask"]], np.nanmean(ceil, axis=0), rtol=1e-5, equal_nan=True)


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
