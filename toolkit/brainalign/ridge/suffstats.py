"""Nested CV of voxel-wise ridge from per-fold sufficient statistics: one pass over the targets.

The rows are split into *atoms*: the coarsest partition such that every outer training set, outer test
set, inner training set and inner validation set is a union of atoms (for leave-one-run-out nested in
leave-one-run-out, the atoms are the runs). Per atom ``a`` the engine keeps

* X-only, once per design: ``n_a``, ``sx_a = X_a' 1`` (p,), ``G_a = X_a' X_a`` (p, p)   [float64]
* per voxel chunk, from ONE pass over Y: ``C_a = X_a' Y_a`` (p, v), ``sy_a = Y_a' 1``, ``syy_a``
  (v,) [float64], plus per-atom ``all finite``, ``min`` and ``max`` of every voxel (the NaN / constant
  voxel policy of :class:`~brainalign.ridge.solver.FoldSolver`, applied exactly).

X is shifted by its global mean and each voxel chunk by its column means (float64) before summing, so
the centring below never cancels. Every training set ``T`` (outer training set, or an inner training
set inside it) is a sum of atoms; its centred Gram ``Gc_T = G_T - n_T mu_T mu_T'`` is eigendecomposed
once (``truncated_eigh``: the same rank floor as the sample engine; the linear kernel of its rows when
p > n_T), ``Gc_T = V diag(lam) V'``. Ridge with intercept (scikit-learn's ``fit_intercept``: X and Y
centred with the training means) has coefficients ``beta(a) = V diag(1/(lam + a)) Z`` with
``Z = V' (C_T - mu_T sy_T')`` (r, v). For a validation set ``S`` (another union of atoms) with
``q = V' (C_S - mu_S sy_S')`` and ``H = V' Gc_S V`` (X only):

* Pearson r:  ``sum(P_c y_c) = d_a' (q * Z)``, ``sum(P_c^2) = b' H b`` with ``b = Z * d_a``,
  ``sum(y_c^2) = syy_S - sy_S^2 / n_S``;  (``d_a = 1/(lam + a)``, normalised by its max: r is
  scale-free, so float32 never under/overflows);
* R^2 (``scoring="r2"``): the same sums plus the shift of the validation means against the training
  means (``w = V'(mu_S - mu_T)``), the exact expansion of ``sum((y - yhat)^2)``.

``b' H b`` costs r^2 v per alpha ("gram" form); when the validation set has fewer rows than the rank
the engine uses its centred rows instead, ``M = (X_S - mu_S) V`` (n_S, r) and ``sum((M b)^2)``:
n_S r v per alpha ("rows" form). Per voxel the inner-CV score is the mean over inner folds (folds whose
validation target or prediction has zero variance left out), the alpha is the best mean (ties to the
largest alpha), and the outer test r is computed the same way with each voxel's alpha. The answers are
those of :class:`FoldSolver` up to rounding (tests/test_suffstats.py checks both against a float64
brute-force solve).

Operation counts (multiply-adds; n rows, p features, v voxels, F atoms, K outer folds with k_i inner
folds each, A alphas, r <= min(p, n_T) the rank of a training set, n_S the rows of a validation set):

* stats pass (per voxel chunk, float64 GEMMs):  n p v   (+ 3 n v elementwise for finite/min/max);
  held in memory: F p v float64 per chunk (plus 2 F v).
* X-only, once per design (shared by every chunk and subject): F Gram blocks n p^2 / 2; per training
  set one eigh of p x p (~ 4 p^3, or n_T^2 p + 4 n_T^3 via the kernel when p > n_T); per validation set
  its H (2 p^2 r) or M (n_S p r). There are K + sum_i k_i training sets (one validation set each).
* per voxel chunk and training set (float64): two projections ``V' C`` = 2 r p v, plus summing C over
  atoms (min(|T|, F - |T|) p v additions, memory-bound).
* per chunk, per inner fold, per alpha (float32): r^2 v ("gram") or n_S r v ("rows"), i.e.
  min(r, n_S) r v; plus A r v for the numerators. The outer test score: one such product per outer fold.

Total per chunk: n p v + sum over the K + sum k_i training sets of [2 r p v (f64) + A_S min(r, n_S) r v],
with A_S = A for inner folds and 1 for outer folds. The sample engine (FoldSolver) costs per chunk
sum over inner folds of (r n_T v + A n_S r v) plus r n_T v per outer fold, and reads Y once per outer
fold. :func:`engine_flops` gives both counts for a shape; ``nested_cv(engine="auto")`` uses the cheaper.

Public API (also used by the permutation test, which shifts one run's targets)::

    eng = NestedEngine(X, outer_splits, inner_splits, alphas, backend="numpy", scoring="r")
    st = eng.chunk_stats(Y_chunk)              # ONE pass over (n, v) targets -> ChunkStats
    cv, best = eng.inner_scores(st, k)         # (A, v) mean inner scores, (v,) best alpha index
    r = eng.outer_r(st, k, best)               # (v,) test Pearson r of outer fold k with given alpha indices
    r, alpha, cv = eng.score(st)               # everything for every outer fold
    st2 = st.replace_atom(a, eng.atom_stats(Y_a_shifted, a))   # one atom's targets changed
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..errors import ConfigError, DataError
from .backend import get_backend
from .checks import check_alphas, check_finite_X, check_matrix, check_splits
from .solver import SCORINGS, factorize, run_parallel, truncated_eigh

_STATS_CHUNK_BYTES = 256 * 2**20


# ---------------------------------------------------------------------------------------------- atoms
def atoms_of(n, sets):
    """Label of each of ``n`` rows such that every index set in ``sets`` is a union of labels.

    Returns (labels (n,) int64 with -1 for rows in no set, n_atoms, [sorted atom ids of each set]).
    """
    labels = np.zeros(n, np.int64)
    used = np.zeros(n, bool)
    for s in sets:
        member = np.zeros(n, np.int64)
        member[s] = 1
        used[s] = True
        _, labels = np.unique(labels * 2 + member, return_inverse=True)
    labels = labels.astype(np.int64)
    labels[~used] = -1
    ids, labels[used] = np.unique(labels[used], return_inverse=True)
    n_atoms = ids.size
    return labels, n_atoms, [np.unique(labels[np.asarray(s, np.int64)]) for s in sets]


def has_duplicates(idx):
    idx = np.asarray(idx).reshape(-1)
    return np.unique(idx).size != idx.size


# ---------------------------------------------------------------------------------------------- stats
@dataclass
class ChunkStats:
    """Per-atom statistics of one voxel chunk (arrays of the engine's backend, leading axis = atom).

    C (F, p, v) float64 X_a'(Y_a - shift); sy, syy (F, v) float64 sums of (Y_a - shift) and its square;
    finite (F, v) bool; lo, hi (F, v) min / max of Y_a; shift (v,) float64 per-voxel offset.
    """

    C: object
    sy: object
    syy: object
    finite: object
    lo: object
    hi: object
    shift: object

    @property
    def n_vox(self):
        return self.sy.shape[1]

    def replace_atom(self, a, other):
        """A copy whose atom ``a`` holds ``other``'s (an :meth:`NestedEngine.atom_stats` result) statistics."""
        out = replace(self, C=self.C.clone() if hasattr(self.C, "clone") else self.C.copy())
        out.C[a] = other.C[0]
        for name in ("sy", "syy", "finite", "lo", "hi"):
            arr = getattr(self, name)
            arr = arr.clone() if hasattr(arr, "clone") else arr.copy()
            arr[a] = getattr(other, name)[0]
            setattr(out, name, arr)
        return out


class _Set:
    """Sums over a set of atoms: sum_over(arr) with arr (F, ...), the cheaper of the set or its complement."""

    def __init__(self, B, atoms, n_atoms):
        self.atoms = np.asarray(atoms, np.int64)
        mask = np.zeros(n_atoms, bool)
        mask[self.atoms] = True
        self.mask = mask
        self.rest = np.flatnonzero(~mask)
        self.use_rest = self.rest.size < self.atoms.size
        self.B = B
        self._in = B.index(self.atoms)
        self._out = B.index(self.rest)

    def total(self, arr, total=None):
        """Sum of arr[a] over the set's atoms (``total`` = arr summed over all atoms, when known)."""
        if self.use_rest and total is not None:
            return total - arr[self._out].sum(0) if self.rest.size else total
        return arr[self._in].sum(0)

    def all(self, arr):
        return arr[self._in].all(0)

    def amin(self, arr):
        return self.B.amin0(arr[self._in])

    def amax(self, arr):
        return self.B.amax0(arr[self._in])


class _Fit:
    """X-only quantities of one (training set, validation set) pair: eigenbasis and validation maps."""

    def __init__(self, eng, tr_atoms, va_atoms, label):
        B, xs = eng.B, eng
        self.tr = _Set(B, tr_atoms, eng.n_atoms)
        self.va = _Set(B, va_atoms, eng.n_atoms)
        n_np = eng.n_atom
        self.n_t = int(n_np[self.tr.atoms].sum())
        self.n_v = int(n_np[self.va.atoms].sum())
        p = eng.p
        sx_t = xs.sx[self.tr.atoms].sum(0)
        mu_t = sx_t / self.n_t
        if p <= self.n_t:
            gram = xs.G[self.tr.atoms].sum(0) - self.n_t * np.outer(mu_t, mu_t)
            lam, V = truncated_eigh(B, B.asarray(gram, "float64"), max(self.n_t, p))
        else:   # more features than training rows: the linear kernel of the rows (as the sample engine)
            Xc = eng.X64[B.index(eng.rows_of(self.tr.atoms))] - B.asarray(mu_t, "float64")
            _, s, V = factorize(B, Xc, "eigh")
            lam = s ** 2
        if lam.size == 0:
            raise DataError(f"X ({label}, {self.n_t} rows): every feature is constant; nothing to fit")
        self.rank = lam.size
        self.V = V                                           # (p, r) float64 on the backend
        self.VT = V.T
        self.vmu_t = B.asarray(np.zeros(0), "float64")      # placeholder, set below
        mu_t_b = B.asarray(mu_t, "float64")
        self.vmu_t = self.VT @ mu_t_b                        # (r,) V' mu_T
        sx_v = xs.sx[self.va.atoms].sum(0)
        mu_v = sx_v / self.n_v
        self.vmu_v = self.VT @ B.asarray(mu_v, "float64")
        d = 1.0 / (lam[None, :] + eng.alphas[:, None])        # (A, r) float64
        self.dmax = d.max(1)                                 # (A,)
        dn = d / self.dmax[:, None]
        self.Dn = B.asarray(dn, "float64")                   # normalised shrinkage (A, r)
        self.DnT = B.asarray(np.ascontiguousarray(dn.T), eng.dtype)   # (r, A) for per-voxel gathers
        self.form = "gram" if self.n_v > self.rank else "rows"
        if self.form == "gram":
            Gv = xs.G[self.va.atoms].sum(0) - self.n_v * np.outer(mu_v, mu_v)
            H = self.VT @ B.asarray(Gv, "float64") @ V
            self.Q = B.cast(0.5 * (H + H.T), eng.dtype)     # (r, r)
        else:
            Xv = eng.X64[B.index(eng.rows_of(self.va.atoms))] - B.asarray(mu_v, "float64")
            self.Q = B.cast(Xv @ V, eng.dtype)              # (n_S, r)
        self.w = self.vmu_v - self.vmu_t                      # V'(mu_S - mu_T), for R^2

    def flops(self, A):
        """Per-voxel multiply-adds of this pair's per-chunk work (2 projections + A scoring products)."""
        p = self.V.shape[0]
        return 2 * self.rank * p, A * (self.rank if self.form == "gram" else self.n_v) * self.rank


class NestedEngine:
    """Nested CV of voxel-wise ridge over grouped folds from per-atom sufficient statistics (module doc).

    Parameters
    ----------
    X : (n, p) design. outer_splits : [(train, test)] global row indices.
    inner_splits : per outer fold, [(train, val)] indices LOCAL to that fold's training rows (as
        :class:`FoldSolver` takes them). alphas : candidate penalties.
    backend, dtype ('float32' | 'float64': the per-alpha scoring products; statistics, projections and
        decompositions are float64), scoring ('r' | 'r2'), n_jobs (parallel folds on numpy).
    """

    def __init__(self, X, outer_splits, inner_splits, alphas, backend="numpy", dtype="float32",
                 scoring="r", n_jobs=None):
        if scoring not in SCORINGS:
            raise ConfigError(f"ridge scoring {scoring!r} unknown; choose one of {SCORINGS}")
        if str(np.dtype(dtype)) not in ("float32", "float64"):
            raise ConfigError(f"ridge dtype {dtype!r}: choose float32 or float64")
        self.B = B = get_backend(backend)
        self.dtype = str(np.dtype(dtype))
        self.scoring = scoring
        self.n_jobs = n_jobs
        self.alphas = check_alphas(alphas)
        X = check_matrix(X, "X")
        check_finite_X(X, "X")
        self.n, self.p = X.shape
        outer = check_splits(outer_splits, self.n, "outer_splits")
        if len(inner_splits) != len(outer):
            raise ConfigError(f"inner_splits: {len(inner_splits)} lists for {len(outer)} outer folds")
        sets, shape = [], []
        for k, ((tr, te), inner) in enumerate(zip(outer, inner_splits)):
            if te.size == 1:
                raise DataError(f"outer fold {k}: 1 test row; Pearson r needs at least 2")
            inner = check_splits(inner, tr.size, f"inner_splits[{k}]")
            glob = [(tr[a], tr[b]) for a, b in inner]
            for s in [tr, te] + [i for pair in glob for i in pair]:
                if has_duplicates(s):
                    raise DataError(f"outer fold {k}: a split repeats rows; the statistics engine needs "
                                    "index sets (use engine='samples')")
            sets += [tr, te] + [i for pair in glob for i in pair]
            shape.append(len(glob))
        self.labels, self.n_atoms, atom_sets = atoms_of(self.n, sets)
        used = self.labels >= 0
        order = np.argsort(self.labels[used], kind="stable")
        self._rows = np.flatnonzero(used)[order]
        self.n_atom = np.bincount(self.labels[used], minlength=self.n_atoms).astype(np.int64)
        self._bounds = np.concatenate([[0], np.cumsum(self.n_atom)])
        # X-only sums per atom (float64, X shifted by its global mean: no cancellation when centring)
        X64 = np.asarray(X, np.float64)
        X64 = X64 - X64.mean(0)
        self.X64 = B.asarray(X64, "float64")
        self.sx = np.stack([X64[self.rows_of([a])].sum(0) for a in range(self.n_atoms)])
        self.G = np.stack([X64[self.rows_of([a])].T @ X64[self.rows_of([a])] for a in range(self.n_atoms)])
        self._order = np.argsort(-self.alphas, kind="stable")   # ties -> largest alpha
        # one _Fit per training set (outer folds, then their inner folds), decomposed in parallel
        jobs, it = [], iter(atom_sets)
        for k, m in enumerate(shape):
            tr, te = next(it), next(it)
            jobs.append(lambda tr=tr, te=te, k=k: _Fit(self, tr, te, f"outer fold {k} training rows"))
            for j in range(m):
                a, b = next(it), next(it)
                jobs.append(lambda a=a, b=b, k=k, j=j: _Fit(self, a, b, f"outer fold {k} inner fold {j} train rows"))
        done = run_parallel(jobs, B, n_jobs)
        self.outer, self.inner, pos = [], [], 0
        for m in shape:
            self.outer.append(done[pos])
            self.inner.append(done[pos + 1:pos + 1 + m])
            pos += 1 + m
        self.n_folds = len(self.outer)

    # ------------------------------------------------------------------ rows and statistics
    def rows_of(self, atoms):
        """Global row indices of the given atoms (atom order, rows ascending within an atom)."""
        return np.concatenate([self._rows[self._bounds[a]:self._bounds[a + 1]] for a in atoms])

    def chunk_stats(self, Y):
        """ONE pass over a voxel chunk ``Y`` (n, v) (numpy or a native array of the backend) -> ChunkStats."""
        B = self.B
        if tuple(Y.shape)[0] != self.n:
            raise DataError(f"Y has {Y.shape[0]} rows but X has {self.n}")
        Yd = Y if B.is_native(Y) and not isinstance(Y, np.ndarray) else B.asarray(Y, self.dtype)
        fin = B.isfinite(Yd)
        Y0 = B.where(fin, Yd, 0.0) if not bool(B.to_numpy(fin.all())) else Yd
        Y0 = B.cast(Y0, self.dtype)
        shift = B.mean0_64(Y0)
        parts = run_parallel([lambda a=a: self._atom(Yd, Y0, fin, shift, a) for a in range(self.n_atoms)],
                             B, self.n_jobs)
        xp = B.xp
        return ChunkStats(*(xp.stack([q[i] for q in parts]) for i in range(6)), shift)

    def atom_stats(self, Y_atom, a, shift):
        """Statistics of atom ``a`` from its own rows ``Y_atom`` (n_a, v) (e.g. a circularly shifted run),
        with the chunk's ``shift`` (ChunkStats.shift); a ChunkStats with one atom, for :meth:`ChunkStats.replace_atom`."""
        B = self.B
        Yd = B.asarray(Y_atom, self.dtype)
        if Yd.shape[0] != self.n_atom[a]:
            raise DataError(f"atom {a} has {self.n_atom[a]} rows, got {Yd.shape[0]}")
        fin = B.isfinite(Yd)
        Y0 = B.cast(B.where(fin, Yd, 0.0), self.dtype)
        parts = self._atom(Yd, Y0, fin, shift, a, local=True)
        return ChunkStats(*(p[None] for p in parts), shift)

    def _atom(self, Yd, Y0, fin, shift, a, local=False):
        B = self.B
        rows = self.rows_of([a])
        lo, hi = rows[0], rows[-1] + 1
        contiguous = hi - lo == rows.size
        if local:
            sel = slice(None)
        else:
            sel = slice(lo, hi) if contiguous else B.index(rows)
        Ya = B.cast(Y0[sel], "float64") - shift
        Xa = self.X64[slice(lo, hi) if contiguous else B.index(rows)]
        C = Xa.T @ Ya
        Yr = Yd[sel]
        return (C, Ya.sum(0), (Ya * Ya).sum(0), B.all0(fin[sel]), B.amin0(Yr), B.amax0(Yr))

    # ------------------------------------------------------------------ scoring
    def _project(self, f, st, Ctot, sytot):
        """Z (r, v) and q (r, v) float64 of pair ``f`` plus the validation sums."""
        B = self.B
        C_t = f.tr.total(st.C, Ctot)
        sy_t = f.tr.total(st.sy, sytot)
        C_v = f.va.total(st.C, Ctot)
        sy_v = f.va.total(st.sy, sytot)
        Z = f.VT @ C_t - f.vmu_t[:, None] * sy_t[None, :]
        q = f.VT @ C_v - f.vmu_v[:, None] * sy_v[None, :]
        syy_v = f.va.total(st.syy)
        vy = syy_v - sy_v * sy_v / f.n_v
        const_v = f.va.amax(st.hi) == f.va.amin(st.lo)
        vy = B.where(const_v, 0.0, B.where(vy > 0, vy, 0.0))
        const_t = f.tr.amax(st.hi) == f.tr.amin(st.lo)
        Z = B.where(const_t[None, :], 0.0, Z)
        return Z, q, sy_t, sy_v, vy

    def _pp(self, f, b):
        """Sum over the validation rows of the centred prediction squared, per column of b (r, v) in the
        working dtype: (v,) float64. "gram": b' H b (r^2 v); "rows": |M b|^2 (n_S r v)."""
        B = self.B
        Qb = f.Q @ b
        pp = B.xp.einsum("ij,ij->j", b if f.form == "gram" else Qb, Qb)
        return B.cast(pp, "float64")

    def _fold_scores(self, f, st, Ctot, sytot):
        """Score per alpha (A, v) float64 of inner pair ``f`` and whether it counts (A, v) bool."""
        B = self.B
        Z, q, sy_t, sy_v, vy = self._project(f, st, Ctot, sytot)
        A = self.alphas.size
        v = st.n_vox
        score = B.zeros((A, v), "float64")
        good = B.zeros((A, v), "bool")
        if self.scoring == "r":
            num = f.Dn @ (q * Z)                                 # (A, v)
        else:
            dy = sy_v / f.n_v - sy_t / f.n_t                      # mean shift of the validation rows
            q2 = q + f.n_v * f.w[:, None] * dy[None, :]
            num = f.Dn @ (q2 * Z)
            se = vy + f.n_v * dy * dy
        Zw = B.cast(Z, self.dtype)
        for i in range(A):
            b = Zw * f.DnT[:, i:i + 1]
            pp = self._pp(f, b)
            if self.scoring == "r":
                den = pp * vy
                g = den > 0
                score[i] = num[i] / B.sqrt(B.where(g, den, 1.0))
            else:
                c = float(f.dmax[i])
                wb = f.w @ B.cast(b, "float64")
                sse = se - 2 * c * num[i] + c * c * (pp + f.n_v * wb * wb)
                g = (vy > 0) & (pp == pp)
                score[i] = 1 - sse / B.where(vy > 0, vy, 1.0)
            good[i] = g
        return B.where(good, score, 0.0), good

    def valid(self, st, k):
        """(v,) numpy bool: voxels scored in outer fold k (finite on its rows, not constant on train or test)."""
        B, f = self.B, self.outer[k]
        ok = f.tr.all(st.finite) & f.va.all(st.finite)
        ok = ok & (f.tr.amax(st.hi) != f.tr.amin(st.lo)) & (f.va.amax(st.hi) != f.va.amin(st.lo))
        return B.to_numpy(ok).astype(bool)

    def inner_scores(self, st, k, _tot=None):
        """Mean inner-fold score per alpha (A, v) numpy float64 (NaN where undefined) and the best alpha
        index per voxel (v,) int64 (-1 where no alpha has a score or the voxel is invalid in fold k)."""
        B = self.B
        Ctot, sytot = _tot if _tot is not None else (st.C.sum(0), st.sy.sum(0))
        parts = run_parallel([lambda f=f: self._fold_scores(f, st, Ctot, sytot) for f in self.inner[k]],
                             B, self.n_jobs)
        acc = sum(B.to_numpy(p[0]) for p in parts)
        cnt = sum(B.to_numpy(p[1]).astype(np.float64) for p in parts)
        with np.errstate(invalid="ignore", divide="ignore"):
            cv = np.where(cnt > 0, acc / np.where(cnt > 0, cnt, 1.0), np.nan)
        cv[:, ~self.valid(st, k)] = np.nan
        return cv, self.select(cv)

    def select(self, cv):
        """Index of the best alpha per voxel (ties -> largest alpha); -1 where all scores are NaN."""
        filled = np.where(np.isnan(cv), -np.inf, cv)[self._order]
        best = self._order[filled.argmax(0)]
        best[np.all(np.isnan(cv), 0)] = -1
        return best

    def outer_r(self, st, k, best, _tot=None):
        """Test Pearson r (v,) numpy float32 of outer fold ``k`` refit with alpha index ``best`` (v,) per voxel
        (-1: NaN). Invalid voxels of fold k get NaN."""
        B = self.B
        f = self.outer[k]
        Ctot, sytot = _tot if _tot is not None else (st.C.sum(0), st.sy.sum(0))
        best = np.asarray(best, np.int64)
        ok = (best >= 0) & self.valid(st, k)
        Z, q, _, _, vy = self._project(f, st, Ctot, sytot)
        d = B.cast(f.DnT, "float64")[:, B.index(np.where(ok, best, 0))]   # (r, v) per-voxel shrinkage
        b = Z * d
        num = B.to_numpy((q * b).sum(0))
        pp = B.to_numpy(self._pp(f, B.cast(b, self.dtype)))
        vy = B.to_numpy(vy)
        den = pp * vy
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.where(ok & (den > 0), num / np.sqrt(np.where(den > 0, den, 1.0)), np.nan)
        return r.astype(np.float32)

    def score(self, st):
        """Every outer fold: r (K, v) float32, best alpha (K, v) float32 (NaN where invalid), cv (K, A, v)."""
        tot = (st.C.sum(0), st.sy.sum(0))
        K, v, A = self.n_folds, st.n_vox, self.alphas.size
        r = np.full((K, v), np.nan, np.float32)
        alpha = np.full((K, v), np.nan, np.float32)
        cvs = np.full((K, A, v), np.nan, np.float32)
        for k in range(K):
            cv, best = self.inner_scores(st, k, tot)
            ok = best >= 0
            r[k] = self.outer_r(st, k, best, tot)
            alpha[k, ok] = self.alphas[best[ok]]
            cvs[k] = cv
        return r, alpha, cvs

    def flops_per_voxel(self):
        """Multiply-adds per voxel of this engine per chunk: (stats pass, float64 projections, scoring)."""
        proj = score = 0
        for f in self.outer:
            a, b = f.flops(1)
            proj, score = proj + a, score + b
        for fs in self.inner:
            for f in fs:
                a, b = f.flops(self.alphas.size)
                proj, score = proj + a, score + b
        return self.n * self.p, proj, score


def default_stats_chunk(n, p, n_atoms):
    """Voxels per chunk of the statistics engine: about 256 MiB of float32 targets and at most 256 MiB of
    per-atom statistics (F p float64 per voxel), at least 128."""
    per_vox = max(4 * n, 8 * p * max(1, n_atoms))
    return int(max(128, _STATS_CHUNK_BYTES // per_vox))


def engine_flops(n, p, K, k, A, n_test=None):
    """Estimated multiply-adds per voxel of the two engines for K outer folds with k inner folds each
    (equal folds, rank min(p, rows)): {'stats': (f64, f32), 'samples': f32}."""
    n_te = n // K if n_test is None else n_test
    n_o = n - n_te
    n_v = n_o // k
    n_i = n_o - n_v
    r_o, r_i = min(p, n_o), min(p, n_i)
    f64 = n * p + K * (k * 2 * r_i * p + 2 * r_o * p)
    f32 = K * (k * A * min(r_i, n_v) * r_i + min(r_o, n_te) * r_o)
    samples = K * (k * (r_i * n_i + A * n_v * r_i) + r_o * n_o + n_te * r_o)
    return {"stats": (f64, f32), "samples": samples}


__all__ = ["ChunkStats", "NestedEngine", "atoms_of", "default_stats_chunk", "engine_flops"]
