"""Residual features: cross-fitting against scikit-learn refits, and on a simulation whose residual is known.

The simulation is built here with numpy/scipy only (no brainalign code): predictor features A, B (the
ablated conditions) share latent factors; the target (joint) = a linear map of [A, B] + a true residual R
drawn independently of them. Residual voxels are driven by R, unimodal voxels by [A, B] only. The
analysis (align + fit stages, through files) must recover R's voxels nearly as well as an oracle given R
itself, and find nothing beyond chance in the unimodal voxels.
"""
import h5py
import numpy as np
import pytest
import yaml
from scipy.signal import lfilter
from scipy.stats import gamma
from sklearn.linear_model import Ridge

TR = 1.49
EPISODES = ["e1", "e2", "e3", "e4"]
N_TRS = 100
HIDDEN = 64
N_VOX = 120                     # per kind (residual-driven, unimodal-driven)
SUBJECTS = ["01", "02"]


# ---- cross-fitting against independent refits ------------------------------------------------------

@pytest.mark.parametrize("q", [6, 90])          # primal (Gram sums) and dual (q > rows of a fit) forms
def test_crossfit_equals_sklearn_refits_and_loo_alpha(q):
    from brainalign.residuals import crossfit_residuals

    rng = np.random.default_rng(q)
    groups = np.repeat([0, 1, 2, 3], [30, 25, 35, 28])
    P = rng.normal(size=(groups.size, q)) + 0.3
    T = P[:, :4] @ rng.normal(size=(4, 5)) + rng.normal(size=(groups.size, 5)) + 2.0
    alphas = [0.1, 1.0, 10.0, 100.0, 1000.0]
    fold = 2
    train = [0, 1, 3]

    def refit(a, fit_rows, rows):
        return T[rows] - Ridge(alpha=a).fit(P[fit_rows], T[fit_rows]).predict(P[rows])

    sse = [sum(((refit(a, (groups != fold) & (groups != j), groups == j)) ** 2).sum() for j in train)
           for a in alphas]
    best = alphas[int(np.argmin(sse))]
    ref = np.empty_like(T)
    for j in train:                              # training fold j: fitted on the other training folds
        ref[groups == j] = refit(best, (groups != fold) & (groups != j), groups == j)
    ref[groups == fold] = refit(best, groups != fold, groups == fold)   # test fold: all training folds
    got = crossfit_residuals(T, P, groups, fold, alphas)
    assert got.alpha == best and got.min_fit_rows == 25 + 28
    np.testing.assert_allclose(got.residual, ref, atol=1e-9)
    assert np.argmax(got.cv_r2) == alphas.index(best)


def test_inner_validation_rows_are_residualised_like_the_outer_test_rows():
    """For every outer fold and every inner fold of the fit (fit.fold_splits), the residual of the
    inner-validation rows came from a regression on exactly the inner-training rows (as the outer test
    rows' did on the outer-training rows): changing anything in the validation rows' features leaves
    the other rows' residuals untouched, and the regression equals a refit on the inner-training rows."""
    from brainalign.fit import fold_splits
    from brainalign.residuals import crossfit_residuals

    rng = np.random.default_rng(7)
    groups = np.repeat([0, 1, 2, 3, 4], [20, 22, 18, 25, 21])
    P = rng.normal(size=(groups.size, 8))
    T = P @ rng.normal(size=(8, 3)) + rng.normal(size=(groups.size, 3))
    alphas = [3.0]                               # one penalty: the selection cannot move
    for k in range(5):
        res = crossfit_residuals(T, P, groups, k, alphas).residual
        train, test, inner = fold_splits(groups, k)
        for tr_local, va_local in inner:
            tr, va = train[tr_local], train[va_local]
            ref = T[va] - Ridge(alpha=3.0).fit(P[tr], T[tr]).predict(P[va])
            np.testing.assert_allclose(res[va], ref, atol=1e-9)
            P2, T2 = P.copy(), T.copy()
            P2[va] += rng.normal(size=P2[va].shape) * 5
            T2[va] *= -2
            moved = crossfit_residuals(T2, P2, groups, k, alphas).residual
            np.testing.assert_allclose(moved[va], T2[va] - Ridge(alpha=3.0).fit(P[tr], T[tr]).predict(P2[va]),
                                       atol=1e-9)
        ref = T[test] - Ridge(alpha=3.0).fit(P[train], T[train]).predict(P[test])
        np.testing.assert_allclose(res[test], ref, atol=1e-9)


# ---- a simulation with a known residual, through the align and fit stages -------------------------

def _ar(rng, n, d, phi):
    return lfilter([1.0], [1.0, -phi], rng.standard_normal((n, d)), axis=0)


def _simulate(seed, hidden=HIDDEN):
    """{condition: (n, HIDDEN)}, the true residual and per-subject BOLD (n, 2 * N_VOX) over all runs."""
    rng = np.random.default_rng([11, seed])
    n = N_TRS * len(EPISODES)
    F = _ar(rng, n, 16, 0.6)                                       # latent content shared by all conditions
    A = F @ rng.standard_normal((16, hidden)) + 0.5 * _ar(rng, n, hidden, 0.6)     # "no_vision"
    B = F @ rng.standard_normal((16, hidden)) + 0.5 * _ar(rng, n, hidden, 0.6)     # "no_language"
    S = np.concatenate([A, B], 1) @ rng.standard_normal((2 * hidden, hidden))
    R = _ar(rng, n, 8, 0.6) @ rng.standard_normal((8, hidden))     # the true residual, independent of A, B
    joint = np.sqrt(0.7) * S / S.std(0) + np.sqrt(0.3) * R / R.std(0)
    t = np.arange(0, 32, TR)
    hrf = gamma.pdf(t, 6) - gamma.pdf(t, 16) / 6                   # SPM canonical double gamma
    bold = {}
    for s in SUBJECTS:
        cols = []
        for driver in (R, np.concatenate([A, B], 1)):
            sig = driver @ rng.standard_normal((driver.shape[1], N_VOX))
            sig = np.concatenate([lfilter(hrf, [1.0], x, axis=0) for x in np.split(sig, len(EPISODES))])
            noise = _ar(rng, n, N_VOX, 0.3)
            cols.append(0.6 * sig / sig.std(0) + noise / noise.std(0))   # noiseless r about 0.5
        bold[s] = np.concatenate(cols, 1)
    return {"joint": joint, "no_vision": A, "no_language": B, "no_audio": R}, bold


def _write_inputs(root, feats, bold):
    hidden = feats['joint'].shape[1]
    from brainalign.h5io import atomic_h5, str_attr

    root.mkdir(parents=True)
    ends = (np.arange(N_TRS) + 1.0) * TR
    with atomic_h5(root / "features.h5", "extract") as f:
        f.attrs["conditions"] = str_attr(list(feats))
        f.attrs["episodes"] = str_attr(EPISODES)
        for k, v in dict(layers=np.array([0]), tr=TR, hidden=hidden, n_layers=1, backbone="sim",
                         window_context=TR, frames_per_window=1).items():
            f.attrs[k] = v
        for i, ep in enumerate(EPISODES):
            f[f"windows/{ep}"] = np.stack([ends - TR, ends], 1)
            for c, x in feats.items():
                f[f"{c}/{ep}"] = x[i * N_TRS:(i + 1) * N_TRS][None].astype(np.float32)
    for s, y in bold.items():
        with h5py.File(root / f"sub-{s}.h5", "w") as f:
            for i, ep in enumerate(EPISODES):
                f[f"sub-{s}_task-{ep}"] = y[i * N_TRS:(i + 1) * N_TRS].astype(np.float32)


def _held_out_r(tmp_path, seed, hidden=HIDDEN):
    """(r of the residual features, r of the true residual) per subject and voxel from align + fit."""
    from brainalign.align import run_align
    from brainalign.config import parse_config
    from brainalign.fit import run_fit

    out = tmp_path / f"seed{seed}-h{hidden}"
    _write_inputs(out, *_simulate(seed, hidden))
    data = {"output": str(out), "data": {"root": str(out), "episodes": EPISODES,
                                         "bold": {"format": "hdf5", "dir": "{root}/sub-{subject}.h5",
                                                  "subjects": SUBJECTS, "tr": TR}},
            "model": {"conditions": ["joint", "no_vision", "no_language", "no_audio"]},
            "align": {"delays": [1, 2, 3, 4], "trim": 2,
                      "residuals": [{"name": "crossmodal", "target": "joint",
                                     "predictors": ["no_vision", "no_language"]}]},
            "fit": {"alphas": [10.0 ** e for e in range(0, 7)], "feature_sets": ["crossmodal", "no_audio"],
                    "write_maps": False}}
    cfg = parse_config(data, text=yaml.safe_dump(data))
    run_align(cfg)
    run_fit(cfg)
    with h5py.File(out / "scores.h5", "r") as f:
        r = f["r_mean"][:, :, 0, :]                               # (S, F, V)
    return r[:, 0], r[:, 1]


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("residual-sim")
    runs = [_held_out_r(tmp, seed) for seed in range(4)]
    return np.stack([a for a, _ in runs]), np.stack([b for _, b in runs])    # (seeds, S, V) each


def test_residual_features_recover_the_true_residual(simulated):
    resid, oracle = simulated
    ratio = resid[..., :N_VOX].mean() / oracle[..., :N_VOX].mean()
    print(f"held-out r on residual-driven voxels: residual features {resid[..., :N_VOX].mean():.4f}, "
          f"true residual {oracle[..., :N_VOX].mean():.4f}, ratio {ratio:.3f}")
    assert oracle[..., :N_VOX].mean() > 0.2                        # the simulation has a clear effect
    assert ratio >= 0.9


def test_unimodal_voxels_get_no_residual_r(simulated):
    resid, oracle = simulated
    per_seed = resid[..., N_VOX:].mean(axis=(1, 2))
    print(f"residual r on unimodal voxels: {resid[..., N_VOX:].mean():+.4f} (per seed "
          f"{np.round(per_seed, 4).tolist()}); true residual {oracle[..., N_VOX:].mean():+.4f}")
    assert abs(resid[..., N_VOX:].mean()) <= 0.01


def test_design_records_the_chosen_penalties_and_warns_once_when_predictors_exceed_trs(tmp_path, caplog):
    """2 x 160 predictor columns vs 200 TRs in the smallest cross-fitted regression: one warning line;
    design.h5 keeps the penalty chosen per (fold, layer) from the grid."""
    import logging

    from brainalign.align import run_align
    from brainalign.config import parse_config

    out = tmp_path / "wide"
    feats, bold = _simulate(0, hidden=160)
    _write_inputs(out, feats, {"01": bold["01"]})
    data = {"output": str(out), "data": {"root": str(out), "episodes": EPISODES,
                                         "bold": {"format": "hdf5", "dir": "{root}/sub-{subject}.h5",
                                                  "subjects": ["01"], "tr": TR}},
            "model": {"conditions": ["joint", "no_vision", "no_language"]},
            "align": {"residual_alphas": [1.0, 100.0, 1e4],
                      "residuals": [{"name": "x", "target": "joint", "predictors": ["no_vision", "no_language"]}]}}
    with caplog.at_level(logging.WARNING, logger="brainalign"):
        run_align(parse_config(data))
    lines = [r.getMessage() for r in caplog.records if "exceed" in r.getMessage()]
    assert len(lines) == 1 and "320 predictor columns" in lines[0] and "200 TRs" in lines[0], lines
    with h5py.File(out / "design.h5", "r") as f:
        ds = f["design/x"]
        assert ds.attrs["alpha"].shape == (4, 1) and set(ds.attrs["alpha"].ravel()) <= {1.0, 100.0, 1e4}
        assert ds.attrs["cv_r2"].shape == (4, 1) and np.all(ds.attrs["cv_r2"] > 0.3)
        assert "cross-fitted" in ds.attrs["criterion"]
        np.testing.assert_array_equal(f.attrs["delays"], [1, 2, 3, 4, 5, 6])     # the default at TR 1.49 s


def test_the_fixed_residual_penalty_is_gone():
    from brainalign.config import parse_config
    from brainalign.errors import ConfigError

    with pytest.raises(ConfigError, match=r"align\.residual_alpha: unknown key .*residual_alphas"):
        parse_config({"align": {"residual_alpha": 1.0}})
    with pytest.raises(ConfigError, match=r"align\.residual_alphas: needs one or more positive"):
        parse_config({"align": {"residual_alphas": [0.0]}})
