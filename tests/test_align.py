"""Align array functions against independent references; the residual regression never sees held-out runs."""
import numpy as np
import pytest
from sklearn.linear_model import Ridge

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from brainalign.align import delay, design_from_runs, zscore  # noqa: E402
from brainalign.residuals import ridge_residual  # noqa: E402


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


# ---- FIR delays: the default window follows the canonical HRF at the data's TR ----------------------

def spm_hrf_positive_mass(lo, hi):
    """Share of the SPM canonical double-gamma HRF's positive lobe (peak 6 s, undershoot 16 s, ratio 1/6)
    inside [lo, hi] seconds, by scipy quadrature of scipy.stats.gamma densities."""
    from scipy.integrate import quad
    from scipy.optimize import brentq
    from scipy.stats import gamma

    def h(t):
        return gamma.pdf(t, 6) - gamma.pdf(t, 16) / 6

    end = brentq(h, 8, 20)                                  # the positive lobe ends at ~12.1 s
    return quad(lambda t: max(h(t), 0.0), max(lo, 0.0), min(hi, end))[0] / quad(h, 0, end)[0]


def coverage(delays, tr):
    """Delay d pairs BOLD sampled mid-TR with the stimulus of TR t - d: HRF lags ((d - 1/2) TR, (d + 1/2) TR]."""
    return spm_hrf_positive_mass((min(delays) - 0.5) * tr, (max(delays) + 0.5) * tr)


@pytest.mark.parametrize("tr", [0.72, 1.0, 1.49, 2.0])
def test_default_delays_cover_the_canonical_hrf_at_any_tr(tr):
    from brainalign.align import default_delays

    d = default_delays(tr)
    assert d == list(range(d[0], d[-1] + 1)) and 1.5 - tr <= d[0] * tr <= 1.5 + tr and d[-1] * tr <= 9.0
    assert coverage(d, tr) >= 0.9, (d, coverage(d, tr))


def test_align_default_delays_at_the_studys_tr(tmp_path):
    """The design the align stage writes by default at TR 1.49 s covers >= 90 % of the HRF's positive mass
    (the former default of 1-4 TRs, carried over from a 2 s template, covered 69 %; 92 % at TR 2 s)."""
    from test_residuals import _simulate, _write_inputs

    from brainalign.align import run_align
    from brainalign.config import parse_config

    feats, bold = _simulate(0, hidden=4)
    _write_inputs(tmp_path / "in", {"joint": feats["joint"]}, {"01": bold["01"][:, :3]})
    cfg = parse_config({"output": str(tmp_path / "in"), "data": {"root": str(tmp_path / "in"), "episodes": ["e1", "e2", "e3", "e4"],
                        "bold": {"format": "hdf5", "dir": "{root}/sub-{subject}.h5", "subjects": ["01"],
                                 "tr": 1.49}}, "model": {"conditions": ["joint"]}})
    run_align(cfg)
    import h5py

    with h5py.File(tmp_path / "in" / "design.h5", "r") as f:
        delays = [int(d) for d in f.attrs["delays"]]
    assert coverage(delays, 1.49) >= 0.9, delays
    assert coverage([1, 2, 3, 4], 1.49) < 0.72 and coverage([1, 2, 3, 4], 2.0) > 0.9


def test_delays_in_seconds_or_trs():
    from brainalign.align import fir_delays
    from brainalign.config import parse_config
    from brainalign.errors import ConfigError

    def cfg(**align):
        return parse_config({"align": align}).align

    assert fir_delays(cfg(delays=[1.5, 3, 4.5, 6, 7.5, 9], delay_unit="seconds"), 1.49) == [1, 2, 3, 4, 5, 6]
    assert fir_delays(cfg(delays=[0, 2, 5]), 2.0) == [0, 2, 5]
    assert fir_delays(cfg(), 2.0) == [1, 2, 3, 4]
    with pytest.raises(ConfigError, match=r"align\.delays: .* round to the TR delays \[1, 1\]"):
        fir_delays(cfg(delays=[1.4, 1.6], delay_unit="seconds"), 1.49)
    with pytest.raises(ConfigError, match=r"align\.delays\[1\]: 1\.5 is not a whole number of TRs"):
        cfg(delays=[1, 1.5])
    with pytest.raises(ConfigError, match=r"align\.delays: needs one or more non-negative"):
        cfg(delays=[-1])
