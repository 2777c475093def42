"""The ridge core: one decomposition per (inner) training set serves every alpha and every voxel chunk.

For a centred training design ``Xc = U diag(s) V^T`` (thin, rank-truncated), ridge predictions on
rows ``X_eval`` (centred with the *training* means) are, for penalty ``a``::

    Y_hat(a) = M diag(s / (s^2 + a)) Z + mean(Y_train),   M = X_eval_c V,  Z = U^T Y_train_c

``U``, ``s`` and ``M`` depend on X only, so :class:`FoldSolver` computes them once (in float64, then
stores them in the working dtype). Per voxel chunk the cost is one GEMM ``Z = U^T Y`` per inner fold
and, per fold, GEMMs ``[M d_a1; M d_a2; ...] @ Z`` over small groups of alphas (as many as fit a
48 MiB prediction buffer and a 48 MiB buffer of scaled evaluation maps), each followed by one
column-reduction pass that yields ``sum(P^2)`` and ``sum(P * Y_val)``; predictions for all alphas of
a whole chunk are never held at once.

Targets may be numpy arrays (host) or arrays of the solver's backend (a cupy array or torch tensor
already on the device): :meth:`FoldSolver.score_rows` takes one (n, v) block with the train/test row
indices, moves it to the device once and selects the rows there (the host-resident streaming path of
:func:`brainalign.ridge.score_stream`). Per target batch the host waits for the device only to read
the inner-CV scores (alpha selection) and the final r; nothing inside the fold/alpha loops syncs.
Inner scores use the alpha-normalised shrinkage ``d_a / max(d_a)`` (Pearson r is scale-free), so
alphas from 1e-3 to 1e9 stay well inside float32 range.

Decomposition (``method``): ``"eigh"`` (default) diagonalises the float64 Gram matrix ``Xc^T Xc``
when p <= n_train, or the float64 linear kernel ``Xc Xc^T`` when p > n_train (dual form, so FIR-
delayed designs with more features than TRs cost O(n^2 p)); ``"svd"`` uses a float64 thin SVD
(slower, more accurate for near-singular designs). Components with eigenvalue below
``max_eig * max(n, p) * eps64`` are dropped (their exact contribution to every prediction is zero).
"""
from __future__ import annotations

import os
from collections import namedtuple
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import ConfigError, DataError
from .backend import get_backend
from .checks import check_alphas, check_finite_X, check_matrix, check_splits, contiguous_runs

ChunkResult = namedtuple("ChunkResult", ["r", "best_alpha", "cv_scores"])
ChunkResult.__doc__ = """Result of :meth:`FoldSolver.score_chunk` (numpy float32 arrays).

r : (v,) Pearson r on the test rows of the model refit on all training rows with each voxel's best alpha.
best_alpha : (v,) the alpha chosen by the inner CV.
cv_scores : (n_alphas, v) mean inner-fold score per alpha (Pearson r, or R^2 with scoring='r2').
"""
FitResult = namedtuple("FitResult", ["best_alpha", "cv_scores", "coef", "intercept", "r"])
FitResult.__doc__ = """Result of :meth:`FoldSolver.fit_chunk`: best_alpha (v,), cv_scores (n_alphas, v),
coef (p, v), intercept (v,), r (v,) test Pearson r or None without test rows (numpy float32)."""

SCORINGS = ("r", "r2")
METHODS = ("eigh", "svd")
_GROUP_BYTES = 48 * 2**20  # predictions (and scaled maps) held at once by the stacked scoring GEMM
_RUN_LIMIT = 4  # at most this many contiguous row runs are used as slices; more -> one gather


def above_rank_floor(values, size):
    """Mask of the components kept: numpy float64 ``values`` > max(values) * size * eps64 (module doc)."""
    return values > (values.max() if values.size else 0.0) * size * np.finfo(np.float64).eps


def truncated_eigh(B, gram, size):
    """Rank-truncated eigenpairs of a symmetric float64 matrix: (numpy float64 (r,), vectors (m, r) on ``B``)."""
    lam, vecs = B.eigh(gram)
    lam_np = B.to_numpy(lam).astype(np.float64)
    keep = above_rank_floor(lam_np, size)
    return lam_np[keep], vecs[:, B.index(np.flatnonzero(keep))]


def factorize(B, Xc, method="eigh", gram=None):
    """Thin rank-truncated factorisation of a centred float64 design ``Xc`` (n, p) on backend ``B``.

    Returns ``U`` (n, r) orthonormal, ``s`` (r,) numpy float64 > 0, ``V`` (p, r) orthonormal with
    ``Xc ~= U diag(s) V^T``. Row order of the components is irrelevant to the solver.
    ``gram`` optionally supplies ``Xc^T Xc`` (p <= n only), e.g. downdated from a larger Gram matrix.
    """
    n, p = Xc.shape
    if method == "svd":
        U, s, Vt = B.svd(Xc)
        s_np = B.to_numpy(s).astype(np.float64)
        keep_np = above_rank_floor(s_np, max(n, p))
        keep = B.index(np.flatnonzero(keep_np))
        return U[:, keep], s_np[keep_np], Vt[keep].T
    if gram is None or p > n:
        gram = Xc.T @ Xc if p <= n else Xc @ Xc.T
    lam_np, vecs = truncated_eigh(B, gram, max(n, p))
    s_np = np.sqrt(lam_np)
    s_b = B.asarray(s_np, "float64")
    if p <= n:
        return (Xc @ vecs) / s_b, s_np, vecs
    return vecs, s_np, (Xc.T @ vecs) / s_b


class _Rows:
    """Row selection of a (n, v) array as a few slices (no copy) or one integer gather."""

    def __init__(self, B, idx):
        self.B = B
        self.idx = np.asarray(idx, dtype=np.int64)
        self.n = self.idx.size
        runs = contiguous_runs(self.idx)
        self.runs = runs if len(runs) <= _RUN_LIMIT else None
        self.gather = B.index(self.idx)

    def single(self, Y):
        """The selected rows as one array (a view when they form one run)."""
        if self.runs is not None and len(self.runs) == 1:
            a, b, _ = self.runs[0]
            return Y[a:b]
        return Y[self.gather]

    def left_gemm(self, Ut, Y):
        """``Ut @ Y[rows]`` for ``Ut`` (r, n_sel) without copying Y when the rows are a few runs."""
        if self.runs is None:
            return Ut @ Y[self.gather]
        out = None
        for a, b, off in self.runs:
            part = Ut[:, off:off + b - a] @ Y[a:b]
            if out is None:
                out = part
            else:
                out += part
        return out

    def colsum(self, Y):
        """Column sums over the selected rows, float64 (v,)."""
        f64 = self.B.dtype("float64")
        if self.runs is None:
            return Y[self.gather].sum(0, dtype=f64)
        out = None
        for a, b, _ in self.runs:
            part = Y[a:b].sum(0, dtype=f64)
            out = part if out is None else out + part
        return out


class _Factors:
    """X-only quantities of one training set: left factor, evaluation map, shrinkage table."""

    def __init__(self, B, Xtr, Xev, alphas, method, dtype, center_eval, normalize, keep_v=False,
                 tr_idx=None, ev_idx=None, label="training set", gram=None):
        n, p = Xtr.shape
        mu = Xtr.mean(0)
        Xc = Xtr - mu
        if gram is not None:  # gram holds the UNcentred X^T X of these rows (X globally centred)
            gram = gram - n * (mu[:, None] * mu[None, :])
        U, s, V = factorize(B, Xc, method, gram=gram)
        if s.size == 0:
            raise DataError(f"X ({label}, shape {tuple(Xtr.shape)}): every feature is constant; "
                            "nothing to fit")
        self.rank = s.size
        self.s = s
        self.mu_x = mu
        self.U = B.cast(U, dtype)
        self.UT = self.U.T  # (r, n) view; GEMMs read it transposed without copying
        # U^T 1 in the stored precision, for the exact inner-train mean correction.
        self.u1 = B.cast(self.U.sum(0, dtype=B.dtype("float64")), dtype)
        self.M = None
        if Xev is not None:
            M = (Xev - mu) @ V
            if center_eval:
                M = M - M.mean(0)
            self.M = B.cast(M, dtype)
        self.V = B.cast(V, dtype) if keep_v else None
        shrink = s[None, :] / (s[None, :] ** 2 + alphas[:, None])  # (n_alphas, r) float64
        if normalize:  # Pearson r is scale-free: keep every alpha's factors O(1) in float32
            shrink = shrink / shrink.max(1, keepdims=True)
        self.D = B.asarray(shrink, dtype)             # (n_alphas, r)
        self.DT = B.asarray(np.ascontiguousarray(shrink.T), dtype)  # (r, n_alphas)
        self.tr = _Rows(B, tr_idx) if tr_idx is not None else None
        self.ev = _Rows(B, ev_idx) if ev_idx is not None else None


def _available_cpus():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _single_thread_blas():
    """Context limiting BLAS to one thread (threadpoolctl), or None if threadpoolctl is missing."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        return None
    return threadpool_limits(limits=1, user_api="blas")


def run_parallel(jobs, B, n_jobs=None):
    """Run independent jobs (per-fold factorisations or scores). On the numpy backend they run one
    per CPU, each with single-threaded BLAS; without threadpoolctl (or on torch/cupy, or with one
    CPU) they run one after the other with the library's own threading.

    With one CPU for this process (``n_jobs=1``: an MPI rank or SLURM task given one core) the jobs run
    one after the other with single-threaded BLAS too: the library's own threads would oversubscribe the
    core shared with other ranks, and the same single-threaded kernels make the numbers independent of
    how many ranks share the work."""
    cpus = _available_cpus() if n_jobs is None else max(1, int(n_jobs))
    workers = min(len(jobs), cpus)
    limit = _single_thread_blas() if B.name == "numpy" and (workers > 1 or cpus == 1) else None
    if limit is None:
        return [job() for job in jobs]
    if workers == 1:
        with limit:
            return [job() for job in jobs]
    with limit, ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(job) for job in jobs]
        return [f.result() for f in futures]


class FoldSolver:
    """Voxel-wise ridge with per-voxel alpha chosen by inner CV, for one outer fold.

    Parameters
    ----------
    X_train : (n_train, p) float array; X_test : (n_test, p) float array or None.
    alphas : (n_alphas,) positive floats.
    inner_splits : list of (train_idx, val_idx) integer arrays into the rows of X_train.
    backend : 'numpy' | 'torch' | 'torch-cpu' | 'torch-cuda' | 'cupy' | 'auto' or a backend object.
    dtype : working dtype of the per-chunk GEMMs ('float32' or 'float64'); decompositions are float64.
    scoring : inner-CV criterion, 'r' (Pearson, default) or 'r2' (coefficient of determination,
        himalaya's ``r2_score``).
    method : 'eigh' (float64 Gram/kernel eigendecomposition, default) or 'svd' (float64 thin SVD).
    targets_batch : voxels processed per internal batch (None: 4096).
    n_jobs : parallel decompositions on the numpy backend (None: the CPUs this process may use).
        Each runs with single-threaded BLAS (via threadpoolctl when installed): one eigh per core
        scales better than multi-threaded LAPACK, which slows down ~10x on a busy machine.

    All X-only work (centring, decompositions, evaluation maps) happens here; :meth:`score_chunk`
    is then called for successive voxel chunks. The intercept is handled as scikit-learn's
    ``fit_intercept=True``: X and Y are centred with the training means (inner: inner-train means).

    Invalid targets: a target column that contains NaN/inf (in Y_train or Y_test) or is constant
    over the training rows or over the test rows gets ``r = NaN``, ``best_alpha = NaN`` and
    ``cv_scores = NaN`` -- never a crash and never a silent 0. Within the inner CV, a fold whose
    validation target or prediction has zero variance is left out of that alpha's mean (if every
    fold is left out, the score is NaN). Ties between alphas go to the largest alpha.
    NaN/inf in X raises :class:`~brainalign.errors.DataError` naming the array and position.
    """

    def __init__(self, X_train, X_test, alphas, inner_splits, backend="numpy", dtype="float32",
                 scoring="r", method="eigh", targets_batch=None, keep_coef=False, n_jobs=None):
        if scoring not in SCORINGS:
            raise ConfigError(f"ridge scoring {scoring!r} unknown; choose one of {SCORINGS}")
        if method not in METHODS:
            raise ConfigError(f"ridge method {method!r} unknown; choose one of {METHODS}")
        if str(np.dtype(dtype)) not in ("float32", "float64"):
            raise ConfigError(f"ridge dtype {dtype!r}: choose float32 or float64")
        self.B = B = get_backend(backend)
        self.dtype = str(np.dtype(dtype))
        self.scoring = scoring
        self.alphas = check_alphas(alphas)
        Xtr = check_matrix(X_train, "X_train")
        check_finite_X(Xtr, "X_train")
        self.n_train, self.n_features = Xtr.shape
        Xte = None
        if X_test is not None:
            Xte = check_matrix(X_test, "X_test")
            check_finite_X(Xte, "X_test")
            if Xte.shape[1] != self.n_features:
                raise DataError(f"X_test has {Xte.shape[1]} features but X_train has "
                                f"{self.n_features} (shapes {Xte.shape} vs {Xtr.shape})")
        self.n_test = 0 if Xte is None else Xte.shape[0]
        if self.n_test == 1:
            raise DataError("X_test has 1 row; Pearson r needs at least 2 test rows")
        self.splits = check_splits(inner_splits, self.n_train)
        self.targets_batch = int(targets_batch) if targets_batch else 4096
        self.n_jobs = n_jobs
        # Centre X once globally (float64): fold means are then small corrections, so Gram
        # matrices can be downdated (X^T X - X_val^T X_val) without cancellation.
        shift = Xtr.mean(0, dtype=np.float64)
        X64 = B.asarray(np.asarray(Xtr, dtype=np.float64) - shift, "float64")
        p = self.n_features
        use_gram = method == "eigh" and p <= self.n_train
        S_all = X64.T @ X64 if use_gram else None
        normalize = scoring == "r"

        def fold_job(k, tr, va):
            def job():
                gtr, gva = B.index(tr), B.index(va)
                Xva = X64[gva]
                gram = None
                if use_gram and p <= tr.size and va.size < tr.size and np.unique(tr).size == tr.size \
                        and np.intersect1d(tr, va).size == 0 and tr.size + va.size == self.n_train:
                    gram = S_all - Xva.T @ Xva   # exact when (train, val) partition the rows
                return _Factors(B, X64[gtr], Xva, self.alphas, method, self.dtype,
                                center_eval=normalize, normalize=normalize, tr_idx=tr, ev_idx=va,
                                label=f"inner fold {k} train rows", gram=gram)
            return job

        Xte64 = None if Xte is None else B.asarray(np.asarray(Xte, dtype=np.float64) - shift, "float64")
        jobs = [fold_job(k, tr, va) for k, (tr, va) in enumerate(self.splits)]
        jobs.append(lambda: _Factors(B, X64, Xte64, self.alphas, method, self.dtype, center_eval=True,
                                     normalize=False, keep_v=keep_coef, label="X_train", gram=S_all))
        done = run_parallel(jobs, B, n_jobs)
        self.folds, self.full = done[:-1], done[-1]
        self._order = np.argsort(-self.alphas, kind="stable")  # tie -> largest alpha
        self._mu_x = B.to_numpy(self.full.mu_x) + shift

    # ------------------------------------------------------------------ public per-chunk API
    def score_chunk(self, Y_train, Y_test):
        """Score one voxel chunk: Y_train (n_train, v), Y_test (n_test, v) -> :class:`ChunkResult`."""
        if self.n_test == 0:
            raise DataError("score_chunk needs X_test; this FoldSolver was built with X_test=None")
        res = self._run(Y_train, Y_test, want_coef=False)
        return ChunkResult(res.r, res.best_alpha, res.cv_scores)

    def fit_chunk(self, Y_train, Y_test=None, want_coef=True):
        """Like :meth:`score_chunk` but also returns coefficients (needs ``keep_coef=True``)."""
        return self._run(Y_train, Y_test, want_coef=want_coef)

    def score_rows(self, Y, train_rows, test_rows):
        """Score a block ``Y`` (n, v) whose rows ``train_rows`` / ``test_rows`` match X_train / X_test.

        Equal to ``score_chunk(Y[train_rows], Y[test_rows])``, but the block goes to the device once
        (one host-to-device copy per block instead of two host gathers and two copies) and the rows are
        selected on the device. ``Y`` may be a numpy array (it stays the caller's: never modified)
        or a native array of this backend.
        """
        if self.n_test == 0:
            raise DataError("score_rows needs X_test; this FoldSolver was built with X_test=None")
        B = self.B
        Y = self._targets(Y, "Y")
        tr = np.asarray(train_rows, dtype=np.int64).reshape(-1)
        te = np.asarray(test_rows, dtype=np.int64).reshape(-1)
        n = Y.shape[0]
        if tr.size != self.n_train or te.size != self.n_test:
            raise DataError(f"score_rows: {tr.size} train / {te.size} test rows given, solver expects "
                            f"{self.n_train} / {self.n_test}")
        for what, idx in (("train_rows", tr), ("test_rows", te)):
            if idx.min() < 0 or idx.max() >= n:
                raise DataError(f"score_rows: {what} out of range [0, {n}) (min {idx.min()}, max {idx.max()})")
        Yd = Y if B.is_native(Y) else B.asarray(Y, self.dtype)   # one upload; a view when nothing moves
        res = self._run(_Rows(B, tr).single(Yd), _Rows(B, te).single(Yd), want_coef=False)
        return ChunkResult(res.r, res.best_alpha, res.cv_scores)

    def flops_per_target(self, with_test=True):
        """Floating-point operations of the per-chunk GEMMs for one target (for benchmarks):
        per inner fold ``2 r n_tr`` (U^T Y) + ``n_alphas * 2 n_val r`` (scoring), then the refit
        ``2 r n_train`` + ``2 n_test r``."""
        A = self.alphas.size
        total = 0
        for f in self.folds:
            total += 2 * f.rank * f.tr.n + A * 2 * f.ev.n * f.rank
        total += 2 * self.full.rank * self.n_train
        if with_test and self.n_test:
            total += 2 * self.n_test * self.full.rank
        return float(total)

    # ------------------------------------------------------------------ internals
    def _targets(self, Y, name):
        """``Y`` checked for shape and kind; a native array of the backend stays as it is (on its device)."""
        B = self.B
        if not B.is_native(Y) or isinstance(Y, np.ndarray):
            return check_matrix(Y, name)
        if len(Y.shape) != 2 or Y.shape[0] * Y.shape[1] == 0:
            raise DataError(f"{name}: expected a non-empty 2-D array, got shape {tuple(Y.shape)}")
        if not B.is_floating(Y):
            raise DataError(f"{name}: expected floating-point values, got dtype {Y.dtype}")
        return Y

    def _run(self, Y_train, Y_test, want_coef):
        Yt_np = self._targets(Y_train, "Y_train")
        if Yt_np.shape[0] != self.n_train:
            raise DataError(f"Y_train has {Yt_np.shape[0]} rows but X_train has {self.n_train} "
                            f"(shapes {tuple(Yt_np.shape)} vs ({self.n_train}, {self.n_features}))")
        v = Yt_np.shape[1]
        Ys_np = None
        if Y_test is not None:
            if self.n_test == 0:
                raise DataError("Y_test given but this FoldSolver was built with X_test=None")
            Ys_np = self._targets(Y_test, "Y_test")
            if tuple(Ys_np.shape) != (self.n_test, v):
                raise DataError(f"Y_test has shape {tuple(Ys_np.shape)}; expected ({self.n_test}, {v}) "
                                "to match X_test rows and Y_train columns")
        if want_coef and self.full.V is None:
            raise DataError("coefficients requested but the FoldSolver was built with keep_coef=False")
        A = self.alphas.size
        out_r = np.full(v, np.nan, np.float32) if Ys_np is not None else None
        out_a = np.full(v, np.nan, np.float32)
        out_cv = np.full((A, v), np.nan, np.float32)
        out_coef = np.zeros((self.n_features, v), np.float32) if want_coef else None
        out_b = np.zeros(v, np.float32) if want_coef else None
        tb = self.targets_batch
        for c0 in range(0, v, tb):
            cols = slice(c0, min(v, c0 + tb))
            ys = None if Ys_np is None else Ys_np[:, cols]
            res = self._batch(Yt_np[:, cols], ys, want_coef)
            out_cv[:, cols], out_a[cols] = res[0], res[1]
            if out_r is not None:
                out_r[cols] = res[2]
            if want_coef:
                out_coef[:, cols], out_b[cols] = res[3], res[4]
        return FitResult(out_a, out_cv, out_coef, out_b, out_r)

    def _batch(self, Yt_in, Ys_in, want_coef):
        B, dt = self.B, self.dtype
        Yt = B.copy_in(Yt_in, dt)                        # host -> device here (or a device copy)
        valid = B.all0(B.isfinite(Yt)) & (B.amax0(Yt) != B.amin0(Yt))
        Ys = None
        if Ys_in is not None:
            Ys = B.copy_in(Ys_in, dt)
            valid = valid & B.all0(B.isfinite(Ys)) & (B.amax0(Ys) != B.amin0(Ys))
        # Invalid columns become 0 on the device (no host round trip to find them first).
        B.zero_invalid(Yt, valid)
        if Ys is not None:
            B.zero_invalid(Ys, valid)
        mu_y = B.mean0_64(Yt)
        Yt -= B.cast(mu_y, dt)
        total = Yt.sum(0, dtype=B.dtype("float64"))      # stays on the device
        cv = self._inner_cv(Yt, total)
        cv_np = B.to_numpy(cv).astype(np.float64)        # the host waits here, once per batch
        valid_np = B.to_numpy(valid).astype(bool)
        cv_np[:, ~valid_np] = np.nan
        best = self._select(cv_np)
        ok = valid_np & (best >= 0)
        best_safe = np.where(ok, best, 0)
        alpha = np.where(ok, self.alphas[best_safe], np.nan).astype(np.float32)
        full = self.full
        W = full.UT @ Yt                                 # (r, vb), Yt has mean ~0 already
        mean_rest = B.cast(total / self.n_train, dt)
        W -= full.u1[:, None] * mean_rest[None, :]
        W *= B.gather_rows(full.DT, B.index(best_safe))  # per-voxel shrinkage
        r = None
        if Ys is not None:
            P = full.M @ W                              # (n_test, vb), M centred over test rows
            Ysc = Ys - B.cast(B.mean0_64(Ys), dt)
            pp, py = B.colsums2(P[None], Ysc)
            pp, py = pp[0], py[0]
            yy = B.colsumsq(Ysc)
            r = _pearson_from_sums(B, pp, py, yy)
            r[~ok] = np.nan
        coef = intercept = None
        if want_coef:
            coef_b = full.V @ W                         # (p, vb)
            coef = B.to_numpy(coef_b).astype(np.float64)
            coef[:, ~ok] = np.nan
            mu_np = B.to_numpy(mu_y)
            intercept = mu_np - self._mu_x @ np.where(np.isfinite(coef), coef, 0.0)
            intercept[~ok] = np.nan
        cv_np[:, ~ok] = np.nan
        return cv_np.astype(np.float32), alpha, r, coef, intercept

    def _inner_cv(self, Yt, total):
        """Mean inner-fold score per alpha, (n_alphas, vb) backend float64 (NaN where undefined).

        Folds run in parallel (numpy backend: one fold per CPU, single-threaded BLAS each)."""
        B = self.B
        jobs = [(lambda f=f: self._fold_scores(f, Yt, total)) for f in self.folds]
        parts = run_parallel(jobs, B, self.n_jobs)
        acc = parts[0][0]
        cnt = parts[0][1]
        for a, c in parts[1:]:
            acc += a
            cnt += c
        return B.where(cnt > 0, acc / B.where(cnt > 0, cnt, 1.0), float("nan"))

    def _fold_scores(self, f, Yt, total):
        """Sum of valid scores and their count for one inner fold: two (n_alphas, vb) float64."""
        B, dt = self.B, self.dtype
        A = self.alphas.size
        vb = Yt.shape[1]
        acc = B.zeros((A, vb), "float64")
        cnt = B.zeros((A, vb), "float64")
        W = f.tr.left_gemm(f.UT, Yt)                  # (r, vb) = U^T Y_tr
        sum_va = f.ev.colsum(Yt)
        mean_tr = (total - sum_va) / f.tr.n           # inner-train mean (centred Y), on the device
        W -= f.u1[:, None] * B.cast(mean_tr, dt)[None, :]
        Yv = f.ev.single(Yt)
        mean_va = sum_va / f.ev.n
        Yvc = Yv - B.cast(mean_va, dt)
        vy = B.cast(B.colsumsq(Yvc), "float64")
        if self.scoring == "r2":
            Yvp = Yv - B.cast(mean_tr, dt)              # target relative to the inner-train mean
            yy = B.cast(B.colsumsq(Yvp), "float64")
            target = Yvp
        else:
            target = Yv                                 # P is centred, so sum(P*Yv) = sum(P*Yvc)
        n_va, r = f.M.shape
        g = self._alpha_group(n_va, vb, r)
        buf = B.zeros((g * n_va, r), dt)                # alpha-scaled evaluation maps, stacked
        pbuf = B.zeros((g * n_va, vb), dt)              # reused: no page faults per GEMM
        for a0 in range(0, A, g):
            k = min(g, A - a0)
            for i in range(k):
                B.xp.multiply(f.M, f.D[a0 + i], out=buf[i * n_va:(i + 1) * n_va])
            # one GEMM for k alphas: (k*n_val, r) @ (r, vb) -> predictions of this group only
            P = B.xp.matmul(buf[:k * n_va], W, out=pbuf[:k * n_va])
            pp, py = B.colsums2(P.reshape(k, n_va, vb), target)   # (k, vb) each
            pp = B.cast(pp, "float64")
            py = B.cast(py, "float64")
            if self.scoring == "r2":
                good = (vy > 0)[None, :] & (pp == pp)
                sse = yy[None, :] - 2 * py + pp
                score = 1 - sse / B.where(vy > 0, vy, 1.0)[None, :]
            else:
                den = pp * vy[None, :]
                good = den > 0
                score = py / B.sqrt(B.where(good, den, 1.0))
            acc[a0:a0 + k] += B.where(good, score, 0.0)
            cnt[a0:a0 + k] += B.cast(good, "float64")
        return acc, cnt

    def _alpha_group(self, n_val, vb, rank):
        """Alphas per stacked GEMM: as many as fit ``_GROUP_BYTES`` of predictions (k n_val x vb)
        AND ``_GROUP_BYTES`` of scaled evaluation maps (k n_val x rank), at least 1, balanced over
        groups. Memory is bounded by the batch size and the rank, never by n_alphas x v or
        n_alphas x rank (many alphas with a wide design once took n_alphas x n_val x rank)."""
        A = self.alphas.size
        item = np.dtype(self.dtype).itemsize
        widest = max(vb, rank, 1)
        g = int(max(1, min(A, _GROUP_BYTES // max(1, n_val * widest * item))))
        groups = -(-A // g)
        return -(-A // groups)

    def _select(self, cv):
        """Index of the best alpha per voxel (ties -> largest alpha); -1 where all scores are NaN."""
        filled = np.where(np.isnan(cv), -np.inf, cv)[self._order]
        pos = filled.argmax(0)
        best = self._order[pos]
        best[np.all(np.isnan(cv), 0)] = -1
        return best


def _pearson_from_sums(B, pp, py, yy):
    """Pearson r (numpy float32) from sum(P^2), sum(P*Yc), sum(Yc^2); 0-variance -> NaN."""
    pp = B.to_numpy(pp).astype(np.float64)
    py = B.to_numpy(py).astype(np.float64)
    yy = B.to_numpy(yy).astype(np.float64)
    den = pp * yy
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(den > 0, py / np.sqrt(np.where(den > 0, den, 1.0)), np.nan)
    return r.astype(np.float32)
