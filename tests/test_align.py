"""Align array functions against independent references; the residual regression never sees held-out runs."""
import numpy as np
import pytest
from sklearn.linear_model import Ridge

from brainalign.align import delay, design_from_runs, ridge_residual, zscore


def test_zscore_matches_scipy_and_handles_constants():
    from scipy.stats import zscore as sz

    rng = np.random.default_rng(0)
    x = rng.normal(3, 2, (50, 4))
    x[:, 2] = 7.0
    z = zscore(x)
    np.testing.assert_allclose(z[:, [0, 1, 3]], sz(x[:, [0, 1, 3]], axis=0), atol=1e-12)
    assert np.all(z[:, 2] == 0) and np.isfinite(z).all()


def test_delay_blocks():
    x = np.arange(12, dtype=float).reshape(6, 2)
    d = delay(x, [0, 2])
    np.testing.assert_array_equal(d[:, :2], x)
    np.testing.assert_array_equal(d[2:, 2:], x[:4])
    np.testing.assert_array_equal(d[:2, 2:], 0)


def test_design_from_runs_trims_after_delaying():
    rng = np.random.default_rng(1)
    runs = [rng.normal(size=(20, 3)), rng.normal(size=(15, 3))]
    X = design_from_runs(runs, [1, 2], trim=2)
    assert X.shape == (20 - 4 + 15 - 4, 6) and X.dtype == np.float32
    # row 0 of run 0 after trimming is TR 2: its delay-1 block is z-scored TR 1 of run 0
    np.testing.assert_allclose(X[0, :3], zscore(runs[0])[1], rtol=1e-6)
    # first kept row of run 1 uses only run 1's own history, never run 0's
    np.testing.assert_allclose(X[16, 3:], zscore(runs[1])[0], rtol=1e-6)


@pytest.mark.parametrize("q", [5, 60])   # primal (q < n) and dual (q > n_train) forms
def test_ridge_residual_matches_sklearn(q):
    rng = np.random.default_rng(2)
    n = 50
    P = rng.normal(size=(n, q))
    T = P[:, :3] @ rng.normal(size=(3, 4)) + rng.normal(size=(n, 4))
    train = np.arange(n) < 40
    ref = T - Ridge(alpha=3.0).fit(P[train], T[train]).predict(P)
    np.testing.assert_allclose(ridge_residual(T, P, train, 3.0), ref, atol=1e-8)


def test_residual_does_not_leak_held_out_run():
    """Changing a held-out run's features must not change the residuals of the training runs."""
    rng = np.random.default_rng(3)
    n = 60
    P = rng.normal(size=(n, 6))
    T = P @ rng.normal(size=(6, 3)) + 0.5 * rng.normal(size=(n, 3))
    held_out = np.arange(n) >= 45
    base = ridge_residual(T, P, ~held_out, 1.0)
    P2, T2 = P.copy(), T.copy()
    P2[held_out] += 5 * rng.normal(size=(held_out.sum(), 6))
    T2[held_out] *= -3
    moved = ridge_residual(T2, P2, ~held_out, 1.0)
    np.testing.assert_allclose(moved[~held_out], base[~held_out], atol=1e-10)
    assert not np.allclose(moved[held_out], base[held_out])
    # a leaky version (fitted on all rows) would have moved the training rows
    leaky = ridge_residual(T2, P2, np.ones(n, bool), 1.0)
    assert not np.allclose(leaky[~held_out], base[~held_out], atol=1e-3)


def test_fold_groups_and_grouped_splits():
    from brainalign.align import fold_groups
    from brainalign.fit import fold_splits

    eps = ["a", "b", "c", "d", "e", "f", "g"]
    fold_of_run, names = fold_groups(eps)
    assert list(fold_of_run) == list(range(7)) and names == eps
    fold_of_run, names = fold_groups(eps, 3)
    assert list(fold_of_run) == [0, 0, 0, 1, 1, 2, 2] and names == ["a+b+c", "d+e", "f+g"]
    runs = np.repeat(np.arange(7), 5)
    groups = fold_of_run[runs]
    train, test, inner = fold_splits(groups, 1)
    np.testing.assert_array_equal(test, np.flatnonzero((runs == 3) | (runs == 4)))
    assert len(inner) == 2                      # inner folds leave one training group out
    held = [set(runs[train][v]) for _, v in inner]
    assert held == [{0, 1, 2}, {5, 6}]


class _Store:
    """A features.h5 stand-in: one condition, windows every 0.5 s ending at (i + 1) * 0.5."""

    def __init__(self, x, step):
        self.x, self.step = x, step

    def get(self, condition, episode):
        return self.x

    def windows(self, episode):
        ends = (np.arange(self.x.shape[1]) + 1.0) * self.step
        return np.stack([ends - self.step, ends], 1)


def test_tr_grid_features_resamples_windows_that_step_off_the_tr():
    from brainalign.align import tr_grid_features
    from brainalign.config import parse_config
    from brainalign.resample import resample_features

    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 60, 3))                        # 2 layers, 60 windows of 0.5 s = 30 s
    on_tr = parse_config({"data": {"bold": {"tr": 1.5}}})
    assert tr_grid_features(on_tr, _Store(x, 1.5), "joint", "e") is x   # windows at the TRs: untouched
    cfg = parse_config({"data": {"bold": {"tr": 1.5}}, "windows": {"step": 0.5, "resample": "average"}})
    got = tr_grid_features(cfg, _Store(x, 0.5), "joint", "e")
    assert got.shape == (2, 20, 3)
    # 'average' with windows ending at their times: TR t is the mean of the three windows inside it
    np.testing.assert_allclose(got[1, 4], x[1, 12:15].mean(0), atol=1e-12)
    lz = tr_grid_features(parse_config({"data": {"bold": {"tr": 1.5}}, "windows": {"step": 0.5}}),
                          _Store(x, 0.5), "joint", "e")
    ends = (np.arange(60) + 1.0) * 0.5
    np.testing.assert_allclose(lz[0], resample_features(x[0], ends, (np.arange(20) + 1.0) * 1.5, "lanczos",
                                                        window=3, anchor="end"))
