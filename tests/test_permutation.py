"""Circular-shift permutation tests: brute-force equality, calibration on null data, power on planted data,
held-out ridge predictions against scikit-learn, and the permutation stage on a real fit."""
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from scipy import stats as sps

sys.path.insert(0, str(Path(__file__).parent))
from test_fit import RUN_LENGTHS, SUBJECTS, fit_config_data, make_fit_fixture  # noqa: E402

from brainalign.config import parse_config  # noqa: E402
from brainalign.errors import ConfigError, DataError  # noqa: E402
from brainalign.permutation import (circular_shift_null, draw_shifts, fold_lagged, heldout_predictions,  # noqa: E402
                                    lagged_r, null_from_lagged, observed_from_lagged, perm_pvalues, run_bounds,
                                    run_permutation)


def ar1(rng, n, v, phi=0.7):
    """Stationary AR(1) (unit variance, 200-sample burn-in) along axis 0."""
    from scipy.signal import lfilter

    return lfilter([np.sqrt(1 - phi ** 2)], [1.0, -phi], rng.standard_normal((n + 200, v)), axis=0)[200:]


def pearson_cols(a, b):
    return np.array([np.corrcoef(a[:, j], b[:, j])[0, 1] if a[:, j].std() > 0 and b[:, j].std() > 0 else np.nan
                     for j in range(a.shape[1])])


def brute_null(pred, y, runs, shifts, groups=None):
    """Loop reference: roll y within each run by shifts[i, k], Pearson r over each fold's rows, nan-mean over
    folds (groups None: one fold per run)."""
    groups = runs if groups is None else groups
    out = np.empty((shifts.shape[0], y.shape[1]))
    labels = list(dict.fromkeys(runs.tolist()))
    for i in range(shifts.shape[0]):
        ys = y.copy()
        for k, lab in enumerate(labels):
            m = runs == lab
            ys[m] = np.roll(y[m], shifts[i, k], axis=0)
        per_fold = np.array([pearson_cols(pred[groups == g], ys[groups == g]) for g in np.unique(groups)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out[i] = np.nanmean(per_fold, axis=0)
    return out


def test_lagged_r_equals_np_roll_for_every_lag():
    rng = np.random.default_rng(0)
    p, y = rng.standard_normal((17, 4)), rng.standard_normal((17, 4))
    y[:, 2] = 3.0                                           # constant voxel -> NaN at every lag
    got = lagged_r(p, y)
    assert got.shape == (17, 4)
    for k in range(17):
        np.testing.assert_allclose(got[k, [0, 1, 3]], pearson_cols(p, np.roll(y, k, axis=0))[[0, 1, 3]], atol=1e-12)
    assert np.all(np.isnan(got[:, 2]))


def test_circular_shift_null_equals_brute_force_loop():
    rng = np.random.default_rng(1)
    runs = np.repeat([0, 1, 2], [30, 25, 28])
    n = runs.size
    pred, y = rng.standard_normal((n, 6)), rng.standard_normal((n, 6))
    y[runs == 1, 4] = 0.0                                  # constant in one run only: that run is left out
    shifts = draw_shifts([30, 25, 28], 40, np.random.default_rng(2), min_shift=3)
    assert shifts.shape == (40, 3) and shifts.min() >= 3 and np.all(shifts <= np.array([27, 22, 25]))
    got = circular_shift_null(pred, y, runs, 40, None, shifts=shifts)
    np.testing.assert_allclose(got, brute_null(pred, y, runs, shifts), atol=1e-12)
    # drawing inside the function with the same generator state gives the same null
    again = circular_shift_null(pred, y, runs, 40, np.random.default_rng(2), min_shift=3)
    np.testing.assert_allclose(again, got, atol=0)


def test_grouped_folds_null_equals_brute_force_loop():
    rng = np.random.default_rng(11)
    runs = np.repeat([0, 1, 2, 3, 4], [20, 24, 18, 22, 26])
    groups = np.repeat([0, 0, 1, 2, 2], [20, 24, 18, 22, 26])    # align.outer_folds: consecutive runs grouped
    pred = rng.standard_normal((runs.size, 5))
    y = pred * 0.3 + rng.standard_normal((runs.size, 5)) + runs[:, None]   # run means differ within a fold
    shifts = draw_shifts([20, 24, 18, 22, 26], 30, rng, min_shift=2)
    got = circular_shift_null(pred, y, runs, 0, None, shifts=shifts, groups=groups)
    np.testing.assert_allclose(got, brute_null(pred, y, runs, shifts, groups), atol=1e-12)
    zero = circular_shift_null(pred, y, runs, 0, None, shifts=np.zeros((1, 5), int), groups=groups)[0]
    np.testing.assert_allclose(zero, brute_null(pred, y, runs, np.zeros((1, 5), int), groups)[0], atol=1e-12)
    with pytest.raises(DataError, match="run 1 spans several outer folds"):
        circular_shift_null(pred, y, runs, 3, rng, groups=np.repeat([0, 1], [30, 80]))


def test_perm_pvalues_plus_one_correction_against_loop():
    rng = np.random.default_rng(3)
    null = rng.standard_normal((99, 5))
    null[7, 1] = np.nan
    obs = np.array([0.0, 0.5, 3.5, -3.5, np.nan])
    got = perm_pvalues(obs, null)
    for j in range(4):
        col = null[:, j][np.isfinite(null[:, j])]
        assert got[j] == pytest.approx((1 + (col >= obs[j]).sum()) / (1 + col.size), rel=1e-14)
    assert got[2] == pytest.approx(1 / 100) and np.isnan(got[4])
    two = perm_pvalues(obs, null, tail="two-sided")
    assert two[3] == pytest.approx((1 + (np.abs(null[:, 3]) >= 3.5).sum()) / 100)
    with pytest.raises(ConfigError, match="tail"):
        perm_pvalues(obs, null, tail="less")
    with pytest.raises(DataError, match="null"):
        perm_pvalues(obs, null[:, :3])


@pytest.mark.parametrize("n_trs", [76, 400])
@pytest.mark.parametrize("phi", [0.3, 0.7])
def test_false_positive_rate_is_nominal_on_ar1_nulls(phi, n_trs):
    """Independent AR(1) prediction and BOLD (4 runs): with the default lags, the share of null voxels with
    p <= 0.05 and p <= 0.01 lies within binomial error of 0.05 and 0.01 (two-sided binomial test at
    1e-3). Every voxel block gets its own lags, so the voxels' decisions are independent."""
    from brainalign.config import StatsConfig

    rng = np.random.default_rng([21, int(10 * phi), n_trs])
    K, V, block, n_perm = 4, 6000, 50, 199
    runs = np.repeat(np.arange(K), n_trs)
    pred, y = (np.concatenate([ar1(rng, n_trs, V, phi) for _ in range(K)]) for _ in range(2))
    lagged, fold_of_run = fold_lagged(pred, y, runs)
    obs = observed_from_lagged(lagged, fold_of_run)
    min_shift = StatsConfig().permutation_min_shift          # the default the stage uses
    p = np.empty(V)
    for a in range(0, V, block):
        shifts = draw_shifts([n_trs] * K, n_perm, rng, min_shift)
        p[a:a + block] = perm_pvalues(obs[a:a + block],
                                      null_from_lagged([x[:, a:a + block] for x in lagged], shifts, fold_of_run))
    fpr = {alpha: int((p <= alpha).sum()) for alpha in (0.05, 0.01)}
    print(f"phi {phi}, {n_trs} TRs: FPR {fpr[0.05] / V:.4f} at 0.05, {fpr[0.01] / V:.4f} at 0.01")
    for alpha, k in fpr.items():
        assert sps.binomtest(k, V, alpha).pvalue > 1e-3, (alpha, k / V)


def test_null_data_gives_uniform_pvalues_and_shuffling_trs_does_not():
    rng = np.random.default_rng(4)
    runs = np.repeat(np.arange(4), 400)                     # CNeuroMod-like run length (~450 TRs)
    v = 1500
    pred, y = ar1(rng, runs.size, v), ar1(rng, runs.size, v)   # autocorrelated (phi 0.7), independent
    null = circular_shift_null(pred, y, runs, 499, rng)
    obs = circular_shift_null(pred, y, runs, 1, None, shifts=np.zeros((1, 4), int))[0]
    p = perm_pvalues(obs, null)
    assert sps.kstest(p, "uniform").pvalue > 1e-3
    fpr = (p <= 0.05).mean()
    assert 0.035 <= fpr <= 0.065, fpr
    # the reason for circular shifts: shuffling TRs ignores autocorrelation and is anti-conservative
    z = lambda a: (a - a.mean(0)) / a.std(0)                # noqa: E731
    pz, yz = z(pred[:, :300]), z(y[:, :300])
    naive = np.stack([(pz * yz[rng.permutation(runs.size)]).mean(0) for _ in range(199)])
    p_naive = perm_pvalues((pz * yz).mean(0), naive)
    assert (p_naive <= 0.05).mean() > 2 * fpr


def test_default_lags_cover_every_lag_including_zero():
    shifts = draw_shifts([7, 5], 4000, np.random.default_rng(0))
    assert set(shifts[:, 0]) == set(range(7)) and set(shifts[:, 1]) == set(range(5))
    with pytest.raises(ConfigError, match="permutation_min_shift must be >= 0"):
        draw_shifts([7], 3, np.random.default_rng(0), min_shift=-1)


def test_planted_effect_is_detected_and_contrast_null_is_paired():
    rng = np.random.default_rng(5)
    runs = np.repeat(np.arange(3), 150)
    v = 400
    signal = ar1(rng, runs.size, v)
    y = signal + 2.0 * ar1(rng, runs.size, v)
    y[:, 200:] = ar1(rng, runs.size, 200)                   # null voxels
    pred_a = signal + 0.5 * rng.standard_normal(signal.shape)
    pred_b = ar1(rng, runs.size, v)                         # a model that does not predict
    shifts = draw_shifts([150] * 3, 300, rng, min_shift=10)
    za = circular_shift_null(pred_a, y, runs, 0, None, shifts=np.zeros((1, 3), int))[0]
    zb = circular_shift_null(pred_b, y, runs, 0, None, shifts=np.zeros((1, 3), int))[0]
    na = circular_shift_null(pred_a, y, runs, 0, None, shifts=shifts)
    nb = circular_shift_null(pred_b, y, runs, 0, None, shifts=shifts)
    p = perm_pvalues(za, na)
    assert (p[:200] <= 0.05).mean() > 0.95
    assert (p[200:] <= 0.05).mean() < 0.1
    pd = perm_pvalues(za - zb, na - nb)
    assert (pd[:200] <= 0.05).mean() > 0.95 and (pd[200:] <= 0.05).mean() < 0.1


def test_heldout_predictions_match_sklearn_ridge():
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(6)
    runs = np.repeat([0, 1, 2], [20, 18, 22])
    X = rng.standard_normal((runs.size, 7)) + 3.0
    Y = X @ rng.standard_normal((7, 5)) + rng.standard_normal((runs.size, 5)) + 1.0
    alphas = np.array([[0.1, 10, 1000, 10, np.nan]] * 3, dtype=float)
    alphas[1, 0] = 100.0
    got = heldout_predictions(X, Y, runs, alphas)
    for k in range(3):
        te = runs == k
        for j in range(4):
            m = Ridge(alpha=alphas[k, j]).fit(X[~te], Y[~te, j])
            np.testing.assert_allclose(got[te, j], m.predict(X[te]), rtol=1e-9, atol=1e-9)
    assert np.all(np.isnan(got[:, 4]))
    fold_X = [X + k for k in range(3)]                      # fold-specific designs through a callable
    got2 = heldout_predictions(lambda k: fold_X[k], Y, runs, alphas)
    m = Ridge(alpha=alphas[2, 1]).fit(fold_X[2][runs != 2], Y[runs != 2, 1])
    np.testing.assert_allclose(got2[runs == 2, 1], m.predict(fold_X[2][runs == 2]), rtol=1e-9)


def test_bad_inputs_one_line_errors():
    with pytest.raises(DataError, match="contiguous"):
        run_bounds(np.array([0, 0, 1, 1, 0]))
    with pytest.raises(DataError, match="too short.*permutation_min_shift"):
        draw_shifts([30, 12], 5, np.random.default_rng(0), min_shift=7)
    with pytest.raises(DataError, match="pred"):
        circular_shift_null(np.zeros((10, 2)), np.zeros((10, 3)), np.zeros(10), 5, np.random.default_rng(0))


# ---- the stage on a real fit ---------------------------------------------------------------------

def _config(out, **stats_extra):
    data = fit_config_data(out)
    data["stats"] = {"contrasts": [{"name": "j-vs-x", "a": "joint", "b": "crossmodal"},
                                   {"name": "j0", "a": "joint", "b": None}]}
    cfg = parse_config(data, text=yaml.safe_dump(data, sort_keys=False))
    for k, v in stats_extra.items():
        setattr(cfg.stats, k, v)                 # keys the lead adds to StatsConfig; read with getattr
    return cfg


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    from brainalign.fit import run_fit

    out = tmp_path_factory.mktemp("perm") / "out"
    data = make_fit_fixture(out, seed=3)
    cfg = _config(out, permutations=99, permutation_min_shift=4, permutation_seed=7)
    run_fit(cfg)
    return cfg, data, run_permutation(cfg)


def test_stage_layout_and_observed_equals_scores(fitted):
    cfg, data, path = fitted
    S, V, K = len(SUBJECTS), data["n_vox"], len(RUN_LENGTHS)
    with h5py.File(path, "r") as g, h5py.File(cfg.out / "scores.h5", "r") as f:
        assert g.attrs["brainalign_complete"] == 1 and g.attrs["n_perm"] == 99 and g.attrs["layer"] == 1
        assert [x.decode() if isinstance(x, bytes) else x for x in g.attrs["feature_sets"]] == ["joint", "crossmodal"]
        assert list(g.attrs["contrasts"]) == ["j-vs-x"]          # "a vs zero" is the r test itself
        for k in ("observed", "p", "q"):
            assert g[f"r/{k}"].shape == (S, 2, V) and g[f"r/{k}"].dtype == np.float32
            assert g[f"contrast/j-vs-x/{k}"].shape == (S, V)
        assert g["r/significant"].dtype == np.uint8 and g["shifts"].shape == (S, 99, K)
        obs, p = g["r/observed"][()], g["r/p"][()]
        ref = f["r_mean"][:, :, 1, :]
        np.testing.assert_allclose(obs, ref, atol=2e-5, equal_nan=True)
        assert np.all(np.isnan(obs[:, :, 3])) and np.all(np.isnan(p[:, :, 3]))   # the constant voxel
        ok = np.isfinite(p)
        assert np.all((p[ok] >= 1 / 100) & (p[ok] <= 1))
        np.testing.assert_allclose(g["contrast/j-vs-x/observed"][()], obs[:, 0] - obs[:, 1], atol=1e-6,
                                   equal_nan=True)
        # strong planted voxels (r > 0.5) are significant against the circular-shift null
        strong = obs[:, 0] > 0.5
        assert strong.sum() >= 5 and np.all(p[:, 0][strong] <= 0.02)
        sh = g["shifts"][()]
        assert sh.min() >= 4 and np.all(sh <= np.array(RUN_LENGTHS) - 4)


def test_stage_pvalues_equal_independent_recomputation(fitted):
    cfg, data, path = fitted
    runs = data["runs"]
    with h5py.File(path, "r") as g, h5py.File(cfg.out / "scores.h5", "r") as f:
        shifts = g["shifts"][1]
        alphas = f["alpha"][1, 1, 1]                        # subject 02, crossmodal, layer 1: (K, V)
        Y = data["bold"]["02"].astype(np.float64)
        X = data["crossmodal"][:, 1].astype(np.float32)     # (K, n, p): fold-specific residual design
        pred = heldout_predictions(lambda k: X[k], Y, runs, alphas)
        null = brute_null(pred, Y, runs, shifts)
        obs = brute_null(pred, Y, runs, np.zeros((1, len(RUN_LENGTHS)), int))[0]
        np.testing.assert_allclose(g["r/p"][1, 1], perm_pvalues(obs, null), atol=1e-12, equal_nan=True)


def test_stage_off_skip_and_bad_keys(fitted, caplog):
    cfg, data, path = fitted
    mtime = path.stat().st_mtime_ns
    assert run_permutation(cfg) == path and path.stat().st_mtime_ns == mtime       # complete: skipped
    assert run_permutation(_config(cfg.out)) is None                                   # default 0: off
    with pytest.raises(ConfigError, match="stats.permutation_layer: 5 is not a layer"):
        run_permutation(_config(cfg.out, permutations=9, permutation_layer=5), force=True)
    with pytest.raises(ConfigError, match=r"stats.permutation_feature_sets\[0\]: 'nope'"):
        run_permutation(_config(cfg.out, permutations=9, permutation_feature_sets=["nope"]), force=True)
    assert not list(cfg.out.glob(".permutation-scratch*"))


def test_stats_stage_runs_the_permutation_tests(fitted):
    from functools import partial

    from brainalign.pipeline import run_stage

    run_stats = partial(run_stage, stage="stats")       # the stats verb (brainalign.stagetable)

    cfg, data, path = fitted
    mtime = path.stat().st_mtime_ns
    stats_path = run_stats(cfg)                 # permutations > 0: the verb runs permutation first (complete: kept)
    assert path.stat().st_mtime_ns == mtime and stats_path.is_file()
    path.unlink()
    run_stats(cfg, force=True)
    with h5py.File(path, "r") as g:
        assert g.attrs["n_perm"] == 99


def test_stage_with_grouped_outer_folds(tmp_path):
    """align.outer_folds groups consecutive runs: design.h5 /cv_groups; the fold r spans several runs."""
    from brainalign.fit import run_fit
    from brainalign.h5io import str_attr

    out = tmp_path / "out"
    data = make_fit_fixture(out, seed=4)
    runs = data["runs"]
    groups = np.array([0, 0, 1, 2], np.int32)[runs]
    with h5py.File(out / "design.h5", "a") as f:
        f.create_dataset("cv_groups", data=groups)
        f.attrs["folds"] = str_attr(["e1+e2", "e3", "e4"])
    d = fit_config_data(out)
    d["fit"]["feature_sets"] = ["joint"]
    cfg = parse_config(d, text=yaml.safe_dump(d, sort_keys=False))
    cfg.stats.permutations, cfg.stats.permutation_min_shift = 49, 3
    run_fit(cfg)
    path = run_permutation(cfg)
    with h5py.File(path, "r") as g, h5py.File(out / "scores.h5", "r") as f:
        assert f["r"].shape[3] == 3 and g["shifts"].shape == (2, 49, 4)     # 3 folds, shifts per run
        np.testing.assert_allclose(g["r/observed"][:, 0], f["r_mean"][:, 0, 1], atol=2e-5, equal_nan=True)
        alphas = f["alpha"][0, 0, 1]
        pred = heldout_predictions(data["joint"][1], data["bold"]["01"], groups, alphas)
        null = brute_null(pred, data["bold"]["01"].astype(np.float64), runs, g["shifts"][0], groups)
        obs = brute_null(pred, data["bold"]["01"].astype(np.float64), runs, np.zeros((1, 4), int), groups)[0]
        np.testing.assert_allclose(g["r/p"][0, 0], perm_pvalues(obs, null), atol=1e-12, equal_nan=True)
