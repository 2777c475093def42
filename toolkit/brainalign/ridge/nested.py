"""Nested cross-validation and voxel-chunk streaming (HDF5 datasets or in-memory arrays).

Memory does not grow with the number of voxels beyond the small per-voxel outputs: targets are
read ``chunk`` columns at a time, scored, and dropped. On a GPU backend the targets stay on the host
(in memory or in HDF5): each chunk is read by a background thread while the previous one is scored,
moved to the device once per outer fold (all its rows in one copy) and its train/test rows are
selected there (:meth:`FoldSolver.score_rows`); device memory holds one chunk, never all voxels.
"""
from __future__ import annotations

from collections import namedtuple
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import ConfigError, DataError
from .checks import check_alphas, check_finite_X, check_matrix
from .cv import kfold_splits, resolve_cv
from .solver import ChunkResult, FoldSolver

NestedResult = namedtuple("NestedResult", ["r", "best_alpha", "cv_scores", "outer_splits"])
NestedResult.__doc__ = """Result of :func:`nested_cv`: r (n_folds, v) float32 test Pearson r per outer fold,
best_alpha (n_folds, v) float32, cv_scores (n_folds, n_alphas, v) float32 or None, outer_splits list."""

_TARGET_CHUNK_BYTES = 64 * 2**20


def default_chunk(n_rows):
    """Voxels per streamed chunk: about 64 MiB of float32 targets, at least 256."""
    return int(max(256, _TARGET_CHUNK_BYTES // (4 * max(1, n_rows))))


def stream_chunks(data, chunk=None, rows=None):
    """Yield ``(cols, block)`` over column chunks of a (n_samples, n_voxels) array or h5py dataset.

    ``cols`` is a slice into the voxel axis; ``block`` a C-contiguous float32 ndarray (n_rows, width) holding
    ``data[rows, cols]`` (all rows if ``rows`` is None). Only one chunk is in memory at a time.
    """
    shape = getattr(data, "shape", None)
    if shape is None or len(shape) != 2:
        raise DataError(f"stream_chunks: expected a 2-D (samples, voxels) array or dataset, got shape {shape}")
    n, v = shape
    chunk = default_chunk(n) if chunk is None else int(chunk)
    if chunk < 1:
        raise ConfigError(f"chunk must be >= 1, got {chunk}")
    for c0 in range(0, v, chunk):
        cols = slice(c0, min(v, c0 + chunk))
        # contiguous: one plain copy here (in score_stream's prefetch thread), none later
        block = np.ascontiguousarray(data[:, cols], dtype=np.float32)
        if rows is not None:
            block = block[rows]
        yield cols, block


def prefetched(iterable):
    """Iterate ``iterable`` with its next item produced by a background thread while the caller
    works on the current one (reading chunk i+1 from HDF5 / host memory overlaps scoring chunk i).
    Holds at most two items; the order and the items are those of ``iterable``."""
    it = iter(iterable)
    done = object()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="brainalign-prefetch") as pool:
        pending = pool.submit(next, it, done)
        while True:
            item = pending.result()
            if item is done:
                return
            pending = pool.submit(next, it, done)
            yield item


def score_stream(solver, Y, train_rows, test_rows, chunk=None, sink=None, prefetch=True):
    """Score every voxel of ``Y`` (n, v) (array or h5py dataset) with ``solver`` chunk by chunk.

    ``train_rows`` / ``test_rows`` index the rows of Y that match the solver's X_train / X_test.
    With ``sink`` (callable ``sink(cols, ChunkResult)``) nothing is accumulated and None is
    returned; otherwise the concatenated :class:`ChunkResult` over all voxels is returned.
    Y stays where it is (host memory or file); each chunk is read (in a background thread with
    ``prefetch``) and handed to :meth:`FoldSolver.score_rows`, which moves it to the device once.
    """
    n, v = Y.shape
    train_rows = np.asarray(train_rows, dtype=np.int64)
    test_rows = np.asarray(test_rows, dtype=np.int64)
    if train_rows.size != solver.n_train or test_rows.size != solver.n_test:
        raise DataError(f"score_stream: {train_rows.size} train / {test_rows.size} test rows given, "
                        f"solver expects {solver.n_train} / {solver.n_test}")
    if sink is None:
        r = np.empty(v, np.float32)
        alpha = np.empty(v, np.float32)
        cv = np.empty((solver.alphas.size, v), np.float32)
    chunks = stream_chunks(Y, chunk)
    for cols, block in (prefetched(chunks) if prefetch else chunks):
        res = solver.score_rows(block, train_rows, test_rows)
        if sink is not None:
            sink(cols, res)
        else:
            r[cols], alpha[cols], cv[:, cols] = res
    return None if sink is not None else ChunkResult(r, alpha, cv)


def _inner_splits(inner_cv, train_idx, X_train, groups):
    if callable(inner_cv) and not hasattr(inner_cv, "split"):
        return inner_cv(train_idx)
    g = None if groups is None else np.asarray(groups)[train_idx]
    return resolve_cv(inner_cv, train_idx.size, X_train, groups=g)


ENGINES = ("auto", "stats", "samples")


def nested_cv(X, Y, outer_splits, alphas, inner_cv=5, backend="numpy", chunk_size=None,
              groups=None, dtype="float32", scoring="r", method="eigh", return_cv_scores=False,
              engine="auto", n_jobs=None):
    """Nested cross-validation of voxel-wise ridge.

    Parameters
    ----------
    X : (n, p) features. Y : (n, v) targets, an array or an h5py dataset (streamed by voxel chunk).
    outer_splits : int (contiguous K-fold), a splitter (``split(X, groups=groups)``) or
        (train, test) pairs.
    alphas : candidate penalties. inner_cv : int (contiguous K-fold within each outer training
        set), a splitter (gets the outer-train part of ``groups``, e.g. LeaveOneGroupOut for
        leave-one-run-out), or a callable ``f(outer_train_idx) -> [(train, val), ...]`` in local rows.
    chunk_size : voxels per streamed chunk (None: about 64 MiB of targets; the statistics engine: see
        :func:`~brainalign.ridge.suffstats.default_stats_chunk`).
    engine : 'stats' (per-fold sufficient statistics, one pass over Y: :mod:`brainalign.ridge.suffstats`),
        'samples' (one :class:`FoldSolver` per outer fold, Y read once per outer fold), or 'auto' (default):
        'stats' unless a split repeats rows, ``method='svd'`` is asked for, or its operation count
        (float64 work counted twice) exceeds the sample engine's. Both give the same model and answers.

    Returns :class:`NestedResult` with r and best_alpha of shape (n_folds, v).
    """
    X = check_matrix(X, "X")
    check_finite_X(X, "X")
    n, v = Y.shape if hasattr(Y, "shape") and len(Y.shape) == 2 else (None, None)
    if n is None:
        raise DataError(f"Y: expected a 2-D (samples, voxels) array or dataset, got shape {getattr(Y, 'shape', None)}")
    if n != X.shape[0]:
        raise DataError(f"X has {X.shape[0]} rows but Y has {n} (shapes {X.shape}, {Y.shape})")
    alphas = check_alphas(alphas)
    outer = resolve_cv(outer_splits, n, X, groups=groups)
    if engine not in ENGINES:
        raise ConfigError(f"nested_cv engine {engine!r} unknown; choose one of {ENGINES}")
    outer = [(np.asarray(tr, dtype=np.int64), np.asarray(te, dtype=np.int64)) for tr, te in outer]
    inners = [_inner_splits(inner_cv, tr, X[tr], groups) for tr, _ in outer]
    if engine == "auto":
        engine = _pick_engine(X, outer, inners, alphas, method)
    if engine == "stats":
        if method != "eigh":
            raise ConfigError("engine='stats' decomposes Gram matrices (method='eigh'); use engine='samples' "
                              f"for method={method!r}")
        return _nested_stats(X, Y, outer, inners, alphas, backend, chunk_size, dtype, scoring,
                             return_cv_scores, n_jobs)
    nf = len(outer)
    r = np.full((nf, v), np.nan, np.float32)
    best = np.full((nf, v), np.nan, np.float32)
    cvs = np.full((nf, alphas.size, v), np.nan, np.float32) if return_cv_scores else None
    for k, ((tr, te), inner) in enumerate(zip(outer, inners)):
        solver = FoldSolver(X[tr], X[te], alphas, inner, backend=backend, dtype=dtype,
                            scoring=scoring, method=method, n_jobs=n_jobs)

        def sink(cols, res, k=k):
            r[k, cols], best[k, cols] = res.r, res.best_alpha
            if cvs is not None:
                cvs[k, :, cols] = res.cv_scores

        score_stream(solver, Y, tr, te, chunk=chunk_size, sink=sink)
    return NestedResult(r, best, cvs, outer)


def _pick_engine(X, outer, inners, alphas, method):
    """'stats' or 'samples' for nested_cv(engine='auto') (see its doc)."""
    from .suffstats import has_duplicates

    if method != "eigh":
        return "samples"
    for (tr, te), inner in zip(outer, inners):
        if has_duplicates(tr) or has_duplicates(te) or any(has_duplicates(a) or has_duplicates(b)
                                                           for a, b in inner):
            return "samples"
    n, p = X.shape
    A = np.size(alphas)
    stats = samples = 0.0
    for (tr, te), inner in zip(outer, inners):
        r_o = min(p, tr.size)
        samples += r_o * tr.size + r_o * te.size
        stats += 2 * 2 * r_o * p + min(r_o, te.size) * r_o
        for a, b in inner:
            r_i = min(p, np.size(a))
            samples += r_i * np.size(a) + A * np.size(b) * r_i
            stats += 2 * 2 * r_i * p + A * min(r_i, np.size(b)) * r_i
    stats += 2 * n * p
    return "stats" if stats <= samples else "samples"


def _nested_stats(X, Y, outer, inners, alphas, backend, chunk_size, dtype, scoring, return_cv_scores, n_jobs):
    """nested_cv with the statistics engine: each voxel chunk of Y is read once for every fold."""
    from .suffstats import NestedEngine, default_stats_chunk

    eng = NestedEngine(X, outer, inners, alphas, backend=backend, dtype=dtype, scoring=scoring, n_jobs=n_jobs)
    n, v = Y.shape
    nf, A = len(outer), eng.alphas.size
    r = np.full((nf, v), np.nan, np.float32)
    best = np.full((nf, v), np.nan, np.float32)
    cvs = np.full((nf, A, v), np.nan, np.float32) if return_cv_scores else None
    chunk = chunk_size or default_stats_chunk(n, X.shape[1], eng.n_atoms)
    for cols, block in prefetched(stream_chunks(Y, chunk)):
        rr, aa, cc = eng.score(eng.chunk_stats(block))
        r[:, cols], best[:, cols] = rr, aa
        if cvs is not None:
            cvs[:, :, cols] = cc
    return NestedResult(r, best, cvs, outer)


__all__ = ["NestedResult", "default_chunk", "kfold_splits", "nested_cv", "prefetched", "score_stream",
           "stream_chunks"]
