"""Ridge engine against independent references: float64 closed form, himalaya, torch, h5py streaming."""
import numpy as np
import pytest

from brainalign.errors import ConfigError, DataError
from brainalign.ridge import (BandedRidgeCV, FoldSolver, RidgeCV, get_backend, kfold_splits, nested_cv,
                              pearson_r, score_stream, stream_chunks)
from brainalign.ridge.backend import cupy_works


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """These fixtures are tiny: multi-threaded BLAS only adds synchronisation cost, and on a busy
    2-core machine OpenBLAS's spinning threads slow tiny GEMMs down by an order of magnitude."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        yield
        return
    torch = None
    try:
        import torch
        old = torch.get_num_threads()
        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass
    with threadpool_limits(limits=1):
        yield
    if torch is not None:
        torch.set_num_threads(old)


def make_data(n, p, v, seed=0, noise=1.0, sparse_signal=True):
    """Targets with voxel-varying signal strength so the best alpha differs across voxels."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    W = rng.standard_normal((p, v))
    if sparse_signal:
        W *= rng.random((p, v)) < 0.2
    W *= np.logspace(-2, 0, v)[None, :] / np.sqrt(p)
    Y = X @ W + noise * rng.standard_normal((n, v)) + rng.normal(3.0, 1.0, v)
    return X, Y


def ref_predict(Xtr, Ytr, Xev, alpha):
    """Closed-form float64 ridge with intercept: np.linalg.solve of (Xc^T Xc + alpha I)."""
    mx, my = Xtr.mean(0), Ytr.mean(0)
    Xc = Xtr - mx
    coef = np.linalg.solve(Xc.T @ Xc + alpha * np.eye(Xtr.shape[1]), Xc.T @ (Ytr - my))
    return (Xev - mx) @ coef + my, coef, my - mx @ coef


def ref_cv(Xtr, Ytr, alphas, splits):
    cv = np.zeros((len(alphas), Ytr.shape[1]))
    for tr, va in splits:
        for i, a in enumerate(alphas):
            cv[i] += pearson_r(Ytr[va], ref_predict(Xtr[tr], Ytr[tr], Xtr[va], a)[0])
    return cv / len(splits)


@pytest.mark.parametrize("n,p", [(90, 25), (50, 140)])  # p < n (primal) and p > n (dual)
@pytest.mark.parametrize("method", ["eigh", "svd"])
def test_float64_matches_closed_form(n, p, method):
    X, Y = make_data(n + 20, p, 12, seed=n + p)
    Xtr, Xte, Ytr, Yte = X[:n], X[n:], Y[:n], Y[n:]
    alphas = np.logspace(-3, 9, 7)
    splits = kfold_splits(n, 4)
    res = FoldSolver(Xtr, Xte, alphas, splits, dtype="float64", method=method).score_chunk(Ytr, Yte)
    cv = ref_cv(Xtr, Ytr, alphas, splits)
    np.testing.assert_allclose(res.cv_scores, cv, atol=1e-6)
    idx = np.abs(np.log(alphas)[:, None] - np.log(res.best_alpha)[None]).argmin(0)
    np.testing.assert_allclose(alphas[idx], res.best_alpha, rtol=1e-6)
    # the chosen alpha is the reference optimum (up to numerical ties at 1e-6)
    assert np.all(cv[idx, np.arange(12)] >= cv.max(0) - 1e-6)
    r_ref = np.array([pearson_r(Yte[:, j], ref_predict(Xtr, Ytr[:, [j]], Xte, alphas[idx[j]])[0][:, 0])
                      for j in range(12)])
    np.testing.assert_allclose(res.r, r_ref, atol=1e-6)


def test_ridgecv_coef_matches_closed_form_float64():
    X, Y = make_data(80, 120, 6, seed=3)
    model = RidgeCV(alphas=np.logspace(-2, 4, 7), cv=4, dtype="float64").fit(X, Y)
    for j in range(6):
        _, coef, b = ref_predict(X, Y[:, [j]], X[:2], model.best_alphas_[j])
        np.testing.assert_allclose(model.coef_[:, j], coef[:, 0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(model.intercept_[j], b[0], rtol=1e-5, atol=1e-6)
    pred = model.predict(X[:5])
    np.testing.assert_allclose(pred, X[:5] @ model.coef_ + model.intercept_, rtol=1e-5)


@pytest.mark.parametrize("n,p", [(120, 30), (60, 200)])
def test_float32_extreme_alphas_match_float64(n, p):
    X, Y = make_data(n + 30, p, 20, seed=7)
    alphas = np.logspace(-3, 9, 13)
    splits = kfold_splits(n, 5)
    args = (X[:n], X[n:], alphas, splits)
    r32 = FoldSolver(*args, dtype="float32").score_chunk(Y[:n], Y[n:])
    r64 = FoldSolver(*args, dtype="float64").score_chunk(Y[:n], Y[n:])
    np.testing.assert_allclose(r32.cv_scores, r64.cv_scores, atol=2e-5)
    same = r32.best_alpha == r64.best_alpha
    np.testing.assert_allclose(r32.r[same], r64.r[same], atol=2e-5)
    ref = ref_cv(X[:n], Y[:n], alphas, splits)
    np.testing.assert_allclose(r32.cv_scores, ref, atol=2e-5)


def test_results_do_not_depend_on_parallel_jobs():
    X, Y = make_data(130, 20, 50, seed=13)
    args = (X[:100], X[100:], np.logspace(-1, 4, 6), kfold_splits(100, 5))
    one = FoldSolver(*args, n_jobs=1, targets_batch=17).score_chunk(Y[:100], Y[100:])
    two = FoldSolver(*args, n_jobs=2).score_chunk(Y[:100], Y[100:])
    np.testing.assert_allclose(one.cv_scores, two.cv_scores, atol=1e-6)
    np.testing.assert_allclose(one.r, two.r, atol=1e-6)
    np.testing.assert_array_equal(one.best_alpha, two.best_alpha)


def test_invalid_targets_get_nan_and_never_crash():
    X, Y = make_data(70, 10, 8, seed=1)
    Y[:, 1] = 4.0                    # constant everywhere
    Y[3, 2] = np.nan                 # NaN in train
    Y[65, 3] = np.inf                # inf in test
    Y[60:, 4] = 1.5                  # constant in test only
    Y[:60, 5] = -2.0                 # constant in train only
    res = FoldSolver(X[:60], X[60:], [0.1, 10, 1000], kfold_splits(60, 3)).score_chunk(Y[:60], Y[60:])
    bad = [1, 2, 3, 4, 5]
    assert np.isnan(res.r[bad]).all() and np.isnan(res.best_alpha[bad]).all()
    assert np.isnan(res.cv_scores[:, bad]).all()
    good = [0, 6, 7]
    assert np.isfinite(res.r[good]).all() and np.isfinite(res.best_alpha[good]).all()
    # the good voxels are unaffected by their bad neighbours
    alone = FoldSolver(X[:60], X[60:], [0.1, 10, 1000], kfold_splits(60, 3)).score_chunk(
        Y[:60, good], Y[60:, good])
    np.testing.assert_allclose(res.r[good], alone.r, atol=1e-6)


def test_bad_input_errors_name_the_culprit():
    X, Y = make_data(40, 5, 3)
    X[7, 2] = np.nan
    with pytest.raises(DataError, match=r"X_train of shape \(30, 5\).*row 7, feature 2"):
        FoldSolver(X[:30], X[30:], [1.0], kfold_splits(30, 3))
    X[7, 2] = 0.0
    with pytest.raises(DataError, match="X_test has 4 features"):
        FoldSolver(X[:30], X[30:, :4], [1.0], kfold_splits(30, 3))
    with pytest.raises(ConfigError, match="alphas"):
        FoldSolver(X[:30], X[30:], [1.0, -2.0], kfold_splits(30, 3))
    with pytest.raises(DataError, match="out of range"):
        FoldSolver(X[:30], X[30:], [1.0], [(np.arange(20), np.arange(25, 35))])
    solver = FoldSolver(X[:30], X[30:], [1.0], kfold_splits(30, 3))
    with pytest.raises(DataError, match="Y_train has 29 rows"):
        solver.score_chunk(Y[:29], Y[30:])
    with pytest.raises(DataError, match="Y_test has shape"):
        solver.score_chunk(Y[:30], Y[30:, :2])
    with pytest.raises(ConfigError, match="backend 'nope'"):
        get_backend("nope")


def test_torch_backend_matches_numpy():
    pytest.importorskip("torch")
    X, Y = make_data(150, 40, 30, seed=5)
    splits = kfold_splits(120, 5)
    args = (X[:120], X[120:], np.logspace(-2, 5, 8), splits)
    a = FoldSolver(*args, backend="numpy").score_chunk(Y[:120], Y[120:])
    b = FoldSolver(*args, backend="torch-cpu").score_chunk(Y[:120], Y[120:])
    np.testing.assert_allclose(a.cv_scores, b.cv_scores, atol=2e-6)
    np.testing.assert_allclose(a.r, b.r, atol=2e-6)
    assert np.mean(a.best_alpha == b.best_alpha) >= 0.95
    # non-contiguous inner splits take the gather path on both backends
    rng = np.random.default_rng(0)
    perm = rng.permutation(120)
    shuffled = [(perm[np.r_[0:k * 24, (k + 1) * 24:120]], perm[k * 24:(k + 1) * 24]) for k in range(5)]
    args = (X[:120], X[120:], np.logspace(-2, 5, 8), shuffled)
    a = FoldSolver(*args, backend="numpy").score_chunk(Y[:120], Y[120:])
    b = FoldSolver(*args, backend="torch-cpu").score_chunk(Y[:120], Y[120:])
    np.testing.assert_allclose(a.cv_scores, b.cv_scores, atol=2e-6)


@pytest.mark.skipif(not cupy_works(), reason="cupy needs a working GPU")
def test_cupy_backend_matches_numpy():  # pragma: no cover - runs only on a GPU machine
    X, Y = make_data(150, 40, 300, seed=5)
    args = (X[:120], X[120:], np.logspace(-2, 5, 8), kfold_splits(120, 5))
    a = FoldSolver(*args, backend="numpy").score_chunk(Y[:120], Y[120:])
    b = FoldSolver(*args, backend="cupy").score_chunk(Y[:120], Y[120:])
    np.testing.assert_allclose(a.cv_scores, b.cv_scores, atol=5e-6)
    np.testing.assert_allclose(a.r, b.r, atol=5e-6)


def test_auto_backend_without_gpu_is_usable():
    import brainalign.ridge.cuda_kernels  # noqa: F401  importable without a GPU (compiles lazily)

    B = get_backend("auto")
    assert B.name in ("numpy", "cupy", "torch")
    if not cupy_works():
        assert B.name != "cupy"
        with pytest.raises(ConfigError, match="cupy"):
            get_backend("cupy")


def test_matches_himalaya_ridgecv_float32():
    himalaya_ridge = pytest.importorskip("himalaya.ridge")
    from himalaya.backend import set_backend
    from himalaya.scoring import correlation_score

    set_backend("numpy", on_error="raise")
    X, Y = make_data(400, 60, 600, seed=11)
    X, Y = X.astype(np.float32), Y.astype(np.float32)
    Xtr, Xte, Ytr, Yte = X[:320], X[320:], Y[:320], Y[320:]
    alphas = np.logspace(-1, 5, 13)
    splits = kfold_splits(320, 5)
    ours = FoldSolver(Xtr, Xte, alphas, splits).score_chunk(Ytr, Yte)
    # himalaya: same splits, same intercept handling, and Pearson r as the inner criterion
    # (its default criterion is the negative mean squared error, not Pearson r).
    him = himalaya_ridge.RidgeCV(alphas=alphas, fit_intercept=True, cv=splits,
                                 solver_params=dict(score_func=correlation_score)).fit(Xtr, Ytr)
    agree = np.isclose(ours.best_alpha, him.best_alphas_, rtol=1e-4)
    assert agree.mean() >= 0.995, agree.mean()
    r_him = pearson_r(Yte, him.predict(Xte))
    assert np.max(np.abs(ours.r - r_him)) <= 1e-4
    # RidgeCV estimator agrees too, and its coefficients match himalaya's where alphas agree
    est = RidgeCV(alphas=alphas, cv=splits).fit(Xtr, Ytr)
    np.testing.assert_allclose(est.best_alphas_, ours.best_alpha)
    both = np.isclose(est.best_alphas_, him.best_alphas_, rtol=1e-4)
    np.testing.assert_allclose(est.coef_[:, both], np.asarray(him.coef_)[:, both], atol=2e-4, rtol=2e-3)
    np.testing.assert_allclose(est.score(Xte, Yte), ours.r, atol=1e-5)


def test_r2_scoring_matches_himalaya_r2():
    himalaya_ridge = pytest.importorskip("himalaya.ridge")
    from himalaya.backend import set_backend
    from himalaya.scoring import r2_score

    set_backend("numpy", on_error="raise")
    X, Y = make_data(200, 30, 200, seed=12)
    X, Y = X.astype(np.float32), Y.astype(np.float32)
    alphas = np.logspace(-1, 4, 11)
    splits = kfold_splits(200, 5)
    ours = RidgeCV(alphas=alphas, cv=splits, scoring="r2").fit(X, Y)
    him = himalaya_ridge.RidgeCV(alphas=alphas, fit_intercept=True, cv=splits,
                                 solver_params=dict(score_func=r2_score)).fit(X, Y)
    agree = np.isclose(ours.best_alphas_, him.best_alphas_, rtol=1e-4)
    assert agree.mean() >= 0.99, agree.mean()
    best = ours.cv_scores_.max(0)
    np.testing.assert_allclose(best, np.asarray(him.cv_scores_), atol=2e-5)


def test_ridgecv_sklearn_protocol_and_cv_forms():
    base = pytest.importorskip("sklearn.base")
    from sklearn.model_selection import KFold

    est = RidgeCV(alphas=[1.0, 10.0], cv=3, backend="numpy")
    assert est.get_params()["cv"] == 3
    est.set_params(cv=4, alphas=[0.1, 1.0, 100.0])
    assert est.cv == 4 and list(est.alphas) == [0.1, 1.0, 100.0]
    with pytest.raises(ValueError, match="Invalid parameter"):
        est.set_params(bogus=1)
    clone = base.clone(est)
    assert clone is not est and clone.get_params() == est.get_params()
    assert "cv=4" in repr(est)
    X, Y = make_data(60, 8, 5, seed=2)
    fits = [RidgeCV(alphas=[0.1, 1.0, 100.0], cv=cv).fit(X, Y)
            for cv in (4, KFold(4), kfold_splits(60, 4), list(KFold(4).split(X)))]
    for other in fits[1:]:
        np.testing.assert_array_equal(other.best_alphas_, fits[0].best_alphas_)
        np.testing.assert_allclose(other.cv_scores_, fits[0].cv_scores_, atol=1e-7)
    assert fits[0].cv_scores_.shape == (3, 5) and fits[0].coef_.shape == (8, 5)
    one = RidgeCV(alphas=[0.1, 1.0, 100.0], cv=4).fit(X, Y[:, 0])
    assert one.predict(X).shape == (60,)
    np.testing.assert_allclose(one.predict(X), fits[0].predict(X)[:, 0], rtol=1e-5)
    with pytest.raises(DataError, match="not fitted"):
        RidgeCV().predict(X)


def test_banded_ridge_matches_himalaya():
    himalaya_ridge = pytest.importorskip("himalaya.ridge")
    from himalaya.backend import set_backend
    from himalaya.scoring import correlation_score

    set_backend("numpy", on_error="raise")
    rng = np.random.default_rng(4)
    n, p1, p2, v = 160, 12, 20, 40
    X = rng.standard_normal((n, p1 + p2)).astype(np.float32)
    w1 = rng.standard_normal((p1, v)) * np.linspace(0, 1, v)
    w2 = rng.standard_normal((p2, v)) * np.linspace(1, 0, v) * 0.3
    Y = (X[:, :p1] @ w1 + X[:, p1:] @ w2 + rng.standard_normal((n, v))).astype(np.float32)
    alphas = np.logspace(-1, 4, 6)
    weights = np.array([[0.5, 0.5], [0.9, 0.1], [0.1, 0.9], [0.99, 0.01], [0.01, 0.99]])
    splits = kfold_splits(n, 4)
    groups = np.r_[np.zeros(p1, int), np.ones(p2, int)]
    ours = BandedRidgeCV(bands=[slice(0, p1), slice(p1, None)], alphas=alphas, n_iter=weights,
                         cv=splits).fit(X, Y)
    him = himalaya_ridge.BandedRidgeCV(
        groups=groups, fit_intercept=True, cv=splits,
        solver_params=dict(n_iter=weights, alphas=alphas, score_func=correlation_score,
                           progress_bar=False)).fit(X, Y)
    deltas = np.asarray(him.deltas_)
    agree = np.all(np.abs(ours.deltas_ - deltas) < 1e-3, 0)
    assert agree.mean() >= 0.95, agree.mean()
    np.testing.assert_allclose(ours.cv_scores_.max(0), np.asarray(him.cv_scores_).max(0), atol=1e-5)
    np.testing.assert_allclose(ours.predict(X[:20])[:, agree], np.asarray(him.predict(X[:20]))[:, agree],
                               atol=1e-3, rtol=1e-3)
    # effective per-band penalties follow from the weights and the overall alpha
    np.testing.assert_allclose(ours.band_alphas_, ours.best_alphas_[None] / ours.best_band_weights_, rtol=1e-5)
    # band 1 dominates the first voxels' signal, band 0 the last ones: band alphas must reflect it
    assert np.median(ours.band_alphas_[0, -10:]) < np.median(ours.band_alphas_[0, :10])


def test_banded_random_search_is_seeded_and_labels_work():
    X, Y = make_data(80, 9, 4, seed=9)
    a = BandedRidgeCV(bands=np.r_[0, 0, 0, 1, 1, 1, 2, 2, 2], alphas=[1, 100], n_iter=4, cv=3,
                      random_state=0).fit(X, Y)
    b = BandedRidgeCV(bands=[[0, 1, 2], [3, 4, 5], [6, 7, 8]], alphas=[1, 100], n_iter=4, cv=3,
                      random_state=0).fit(X, Y)
    np.testing.assert_array_equal(a.band_weights_, b.band_weights_)
    np.testing.assert_allclose(a.band_weights_[0], 1 / 3)
    np.testing.assert_allclose(a.band_weights_.sum(1), 1.0)
    np.testing.assert_allclose(a.coef_, b.coef_)
    with pytest.raises(ConfigError, match="overlaps"):
        BandedRidgeCV(bands=[[0, 1], [1, 2]]).fit(X[:, :3], Y)


def test_streaming_from_h5_equals_in_memory(tmp_path):
    h5py = pytest.importorskip("h5py")
    X, Y = make_data(90, 15, 250, seed=6)
    Y = Y.astype(np.float32)
    Y[:, 17] = 2.0
    path = tmp_path / "bold.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("bold", data=Y, chunks=(90, 64))
    tr, te = np.arange(70), np.arange(70, 90)
    solver = FoldSolver(X[tr], X[te], np.logspace(-1, 4, 6), kfold_splits(70, 5))
    mem = solver.score_chunk(Y[tr], Y[te])
    with h5py.File(path, "r") as f:
        streamed = score_stream(solver, f["bold"], tr, te, chunk=37)
        widths = [blk.shape for _, blk in stream_chunks(f["bold"], 100)]
    assert widths == [(90, 100), (90, 100), (90, 50)]
    for a, b in zip(mem, streamed):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert np.isnan(streamed.r[17])


def test_nested_cv_equals_manual_loop(tmp_path):
    h5py = pytest.importorskip("h5py")
    X, Y = make_data(100, 12, 60, seed=8)
    alphas = np.logspace(-1, 4, 6)
    outer = kfold_splits(100, 4)
    with h5py.File(tmp_path / "y.h5", "w") as f:
        f["y"] = Y.astype(np.float32)
    with h5py.File(tmp_path / "y.h5", "r") as f:
        res = nested_cv(X, f["y"], outer, alphas, inner_cv=3, chunk_size=25, return_cv_scores=True)
    assert res.r.shape == (4, 60) and res.best_alpha.shape == (4, 60)
    assert res.cv_scores.shape == (4, 6, 60)
    for k, (tr, te) in enumerate(outer):
        manual = FoldSolver(X[tr], X[te], alphas, kfold_splits(tr.size, 3)).score_chunk(Y[tr], Y[te])
        np.testing.assert_allclose(res.r[k], manual.r, atol=1e-5)
        np.testing.assert_array_equal(res.best_alpha[k], manual.best_alpha)
    # grouped inner CV (leave-one-run-out) through a callable
    runs = np.repeat(np.arange(5), 20)

    def loro(train_idx):
        g = runs[train_idx]
        return [(np.flatnonzero(g != u), np.flatnonzero(g == u)) for u in np.unique(g)]

    res2 = nested_cv(X, Y, outer, alphas, inner_cv=loro)
    assert np.isfinite(res2.r).all()


def test_pearson_r_against_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((50, 4)), rng.standard_normal((50, 4))
    expect = [np.corrcoef(a[:, j], b[:, j])[0, 1] for j in range(4)]
    np.testing.assert_allclose(pearson_r(a, b), expect, atol=1e-6)
    a[:, 1] = 3.0
    assert np.isnan(pearson_r(a, b)[1])
    with pytest.raises(DataError, match="shapes differ"):
        pearson_r(a, b[:, :3])
