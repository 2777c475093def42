"""The sufficient-statistics nested-CV engine (brainalign.ridge.suffstats) against a float64 brute-force
solve written here from first principles (np.linalg.solve per alpha per fold) and against the sample
engine (FoldSolver, today's engine): alphas, test r, inner-CV scores, the NaN / constant-voxel policy."""
import numpy as np
import pytest

from brainalign.ridge import NestedEngine, nested_cv
from brainalign.ridge.suffstats import atoms_of, engine_flops


# ------------------------------------------------------------------ independent float64 reference
def _pearson(a, b):
    a = a - a.mean(0)
    b = b - b.mean(0)
    den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(0) / np.where(den > 0, den, 1), np.nan)


def _ridge_predict(Xtr, Ytr, Xev, alpha):
    """Ridge with an unpenalised intercept: centre X and Y with the training means, solve, predict."""
    mx, my = Xtr.mean(0), Ytr.mean(0)
    Xc, Yc = Xtr - mx, Ytr - my
    beta = np.linalg.solve(Xc.T @ Xc + alpha * np.eye(Xc.shape[1]), Xc.T @ Yc)
    return (Xev - mx) @ beta + my


def _score(y, pred, y_train_mean, scoring):
    if scoring == "r":
        return _pearson(y, pred)
    yc = y - y.mean(0)
    ss = (yc * yc).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ss > 0, 1 - ((y - pred) ** 2).sum(0) / np.where(ss > 0, ss, 1), np.nan)


def brute_nested(X, Y, outer, inners, alphas, scoring="r"):
    """Float64 nested CV: per outer fold, per inner fold, per alpha one np.linalg.solve.

    Policy (documented in FoldSolver): a voxel non-finite on the fold's rows or constant on its training or
    test rows is NaN; an inner fold whose validation target (or prediction) is constant is left out of the
    mean; the best mean inner score wins, ties to the largest alpha."""
    X = X.astype(np.float64)
    Y = Y.astype(np.float64)
    K, A, v = len(outer), len(alphas), Y.shape[1]
    r = np.full((K, v), np.nan)
    best = np.full((K, v), np.nan)
    cvs = np.full((K, A, v), np.nan)
    for k, ((tr, te), inner) in enumerate(zip(outer, inners)):
        Yk = Y[np.concatenate([tr, te])]
        valid = (np.isfinite(Yk).all(0) & (np.ptp(np.nan_to_num(Y[tr]), 0) > 0)
                 & (np.ptp(np.nan_to_num(Y[te]), 0) > 0))
        Yz = np.where(valid, np.nan_to_num(Y), 0.0)
        acc = np.zeros((A, v))
        cnt = np.zeros((A, v))
        for a_tr, a_va in inner:
            gtr, gva = tr[a_tr], tr[a_va]
            for i, alpha in enumerate(alphas):
                pred = _ridge_predict(X[gtr], Yz[gtr], X[gva], alpha)
                s = _score(Yz[gva], pred, Yz[gtr].mean(0), scoring)
                ok = np.isfinite(s) & (np.ptp(Yz[gva], 0) > 0)
                acc[i] += np.where(ok, s, 0)
                cnt[i] += ok
        with np.errstate(invalid="ignore", divide="ignore"):
            cv = np.where(cnt > 0, acc / np.where(cnt > 0, cnt, 1), np.nan)
        cv[:, ~valid] = np.nan
        cvs[k] = cv
        order = np.argsort(-np.asarray(alphas), kind="stable")
        idx = order[np.where(np.isnan(cv), -np.inf, cv)[order].argmax(0)]
        ok = valid & ~np.all(np.isnan(cv), 0)
        for j in np.flatnonzero(ok):
            pred = _ridge_predict(X[tr], Yz[tr, j:j + 1], X[te], alphas[idx[j]])
            r[k, j] = _pearson(Yz[te, j:j + 1], pred)[0]
            best[k, j] = alphas[idx[j]]
    return r, best, cvs


# ------------------------------------------------------------------ fixtures
def _data(run_lengths, p, v, seed=0, offset=100.0):
    rng = np.random.default_rng(seed)
    n = sum(run_lengths)
    X = rng.standard_normal((n, p))
    X[:, 1:] += 0.6 * X[:, :-1]                    # correlated features, as FIR-delayed designs
    W = rng.standard_normal((p, v)) / np.sqrt(p) * rng.uniform(0, 1.5, v)
    Y = X @ W + rng.standard_normal((n, v)) * rng.uniform(0.5, 3, v) + offset
    groups = np.repeat(np.arange(len(run_lengths)), run_lengths)
    Y[:, 0] = 3.0                                  # constant voxel
    Y[7, 1] = np.nan                               # NaN voxel
    Y[groups == 1, 2] = Y[groups == 1, 2].mean()   # constant within one run only
    Y[groups == 2, 3] = np.inf                     # inf in one run
    return X.astype(np.float32), Y.astype(np.float32), groups


def _logo(groups):
    outer, inners = [], []
    for g in np.unique(groups):
        tr, te = np.flatnonzero(groups != g), np.flatnonzero(groups == g)
        tg = groups[tr]
        outer.append((tr, te))
        inners.append([(np.flatnonzero(tg != h), np.flatnonzero(tg == h)) for h in np.unique(tg)])
    return outer, inners


def _inner_fn(outer, inners):
    """nested_cv's callable inner_cv: the inner splits of the outer fold whose training rows it gets."""
    table = {np.asarray(tr, np.int64).tobytes(): inn for (tr, _), inn in zip(outer, inners)}
    return lambda tr: table[np.asarray(tr, np.int64).tobytes()]


def _compare(res_r, res_a, ref_r, ref_a, ref_cv, alphas, tol_r=1e-4):
    """alphas >= 99.9 % identical once rounding-level ties (reference gap < 1e-5) are set apart, |dr| <= tol
    where alphas agree, NaN exactly where the reference is NaN. Returns (share identical, ties)."""
    res_a, ref_a = np.asarray(res_a, np.float32), np.asarray(ref_a, np.float32)
    alphas = np.asarray(alphas, np.float32)
    assert np.array_equal(np.isnan(res_r), np.isnan(ref_r))
    assert np.array_equal(np.isnan(res_a), np.isnan(ref_a))
    fin = ~np.isnan(ref_a)
    same = (res_a == ref_a) & fin
    diff = fin & ~same
    k, j = np.nonzero(diff)
    ia = np.searchsorted(alphas, res_a[k, j])
    ib = np.searchsorted(alphas, ref_a[k, j])
    gaps = np.abs(ref_cv[k, ib, j] - ref_cv[k, ia, j])
    ties = int((gaps < 1e-5).sum())
    assert (gaps < 1e-5).all(), f"alpha differs beyond rounding-level ties: gaps {np.sort(gaps)[-3:]}"
    assert (same.sum() + ties) / fin.sum() >= 0.999
    assert same.sum() / fin.sum() >= 0.99       # ties are rare on these fixtures
    assert np.nanmax(np.abs(res_r - ref_r)[same]) <= tol_r
    return same.sum() / fin.sum(), ties


ALPHAS = np.logspace(-2, 5, 8)


@pytest.mark.parametrize("runs,p", [
    ((40, 55, 47, 60, 38), 12),          # p < validation rows: "gram" scoring form
    ((40, 55, 47, 60, 38), 70),          # validation rows < p < training rows: "rows" form
    ((30, 26, 34, 28), 150),             # p > training rows: kernel decomposition
])
@pytest.mark.parametrize("scoring", ["r", "r2"])
def test_stats_engine_matches_float64_brute_force_and_todays_engine(runs, p, scoring):
    X, Y, groups = _data(runs, p, 60)
    outer, inners = _logo(groups)
    ref_r, ref_a, ref_cv = brute_nested(X, Y, outer, inners, ALPHAS, scoring)
    got = nested_cv(X, Y, outer, ALPHAS, inner_cv=_inner_fn(outer, inners), engine="stats", scoring=scoring,
                    return_cv_scores=True)
    old = nested_cv(X, Y, outer, ALPHAS, inner_cv=_inner_fn(outer, inners), engine="samples", scoring=scoring,
                    return_cv_scores=True)
    _compare(got.r, got.best_alpha, ref_r, ref_a, ref_cv, ALPHAS)
    _compare(got.r, got.best_alpha, old.r, old.best_alpha, ref_cv, ALPHAS)
    ok = np.isfinite(ref_cv)
    assert np.array_equal(np.isnan(got.cv_scores), np.isnan(ref_cv))
    assert np.max(np.abs(got.cv_scores[ok] - ref_cv[ok])) < 1e-4
    # the policy: constant / NaN / inf voxels are NaN everywhere; a voxel constant in one run is NaN only in
    # the outer fold that tests on that run (its training rows vary)
    assert np.isnan(got.r[:, :2]).all() and np.isnan(got.r[:, 3]).all()
    assert np.isnan(got.r[1, 2]) and np.isfinite(np.delete(got.r[:, 2], 1)).all()


def test_contiguous_kfold_outer_and_inner_make_intersection_atoms():
    X, Y, _ = _data((50, 50, 50, 41), 15, 40, seed=3)       # 191 rows: fold boundaries that do not align
    n = X.shape[0]
    ref = nested_cv(X, Y, 3, ALPHAS, inner_cv=4, engine="samples", return_cv_scores=True)
    got = nested_cv(X, Y, 3, ALPHAS, inner_cv=4, engine="stats", return_cv_scores=True)
    outer = [(tr, te) for tr, te in ref.outer_splits]
    from brainalign.ridge import kfold_splits
    inners = [kfold_splits(tr.size, 4) for tr, _ in outer]
    b_r, b_a, b_cv = brute_nested(X, Y, outer, inners, ALPHAS)
    _compare(got.r, got.best_alpha, b_r, b_a, b_cv, ALPHAS)
    _compare(ref.r, ref.best_alpha, b_r, b_a, b_cv, ALPHAS)
    labels, n_atoms, _ = atoms_of(n, [s for tr, te in outer for s in (tr, te)] +
                                  [tr[i] for (tr, _), inn in zip(outer, inners) for pair in inn for i in pair])
    assert n_atoms > 4 and labels.min() == 0     # inner boundaries cut the outer folds


def test_chunking_streaming_and_h5_give_the_same_answers(tmp_path):
    import h5py

    X, Y, groups = _data((40, 45, 50, 35), 10, 50, seed=5)
    outer, inners = _logo(groups)
    whole = nested_cv(X, Y, outer, ALPHAS, inner_cv=_inner_fn(outer, inners),
                      engine="stats")
    with h5py.File(tmp_path / "y.h5", "w") as f:
        f["y"] = Y
    with h5py.File(tmp_path / "y.h5", "r") as f:
        chunked = nested_cv(X, f["y"], outer, ALPHAS, chunk_size=7, engine="stats",
                            inner_cv=_inner_fn(outer, inners))
    np.testing.assert_array_equal(whole.best_alpha, chunked.best_alpha)
    np.testing.assert_allclose(whole.r, chunked.r, atol=1e-6)


def test_torch_backend_equals_numpy():
    pytest.importorskip("torch")
    X, Y, groups = _data((40, 55, 47, 60), 30, 40, seed=2)
    outer, inners = _logo(groups)
    a = NestedEngine(X, outer, inners, ALPHAS, backend="numpy")
    b = NestedEngine(X, outer, inners, ALPHAS, backend="torch-cpu")
    ra, aa, ca = a.score(a.chunk_stats(Y))
    rb, ab, cb = b.score(b.chunk_stats(Y))
    np.testing.assert_array_equal(np.isnan(ra), np.isnan(rb))
    assert np.mean(aa[np.isfinite(aa)] == ab[np.isfinite(ab)]) >= 0.999
    np.testing.assert_allclose(ra, rb, atol=1e-5)
    np.testing.assert_allclose(ca, cb, atol=1e-5)


def test_replacing_one_atom_equals_recomputing_the_statistics():
    """The permutation-test path: a circularly shifted run changes only its own atom's statistics."""
    X, Y, groups = _data((40, 55, 47, 60), 10, 30, seed=4)
    outer, inners = _logo(groups)
    eng = NestedEngine(X, outer, inners, ALPHAS)
    st = eng.chunk_stats(Y)
    _, best = eng.inner_scores(st, 0)
    Y2 = Y.copy()
    run = np.flatnonzero(groups == 2)
    Y2[run] = np.roll(Y[run], 13, axis=0)
    atom = int(eng.labels[run[0]])
    st2 = st.replace_atom(atom, eng.atom_stats(Y2[run], atom, st.shift))
    full = eng.chunk_stats(Y2)
    r_swap = eng.outer_r(st2, 2, best)
    r_full = eng.outer_r(full, 2, best)
    np.testing.assert_allclose(r_swap, r_full, atol=1e-5)
    fin = np.isfinite(r_swap)
    assert not np.allclose(r_swap[fin], eng.outer_r(st, 2, best)[fin])   # the shift did change the test r


def test_duplicate_rows_fall_back_and_bad_splits_are_named():
    X, Y, groups = _data((30, 30, 30), 5, 10, seed=6)
    boot = [(np.r_[np.arange(60), np.arange(10)], np.arange(60, 90))]
    res = nested_cv(X, Y, boot, ALPHAS, inner_cv=3)            # auto: duplicated rows -> sample engine
    assert res.r.shape == (1, 10)
    from brainalign.errors import DataError
    with pytest.raises(DataError, match="repeats rows"):
        nested_cv(X, Y, boot, ALPHAS, inner_cv=3, engine="stats")


def test_flop_model_counts_fewer_operations_at_study_shape():
    est = engine_flops(n=40_000, p=768, K=10, k=9, A=10)
    f64, f32 = est["stats"]
    assert 2 * f64 + f32 < est["samples"] / 4
