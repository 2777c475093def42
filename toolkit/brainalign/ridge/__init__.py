"""Voxel-wise ridge regression with per-voxel alphas, nested CV and several array backends.

Public API::

    FoldSolver(X_train, X_test, alphas, inner_splits, backend="numpy", dtype="float32")
        .score_chunk(Y_train, Y_test) -> ChunkResult(r, best_alpha, cv_scores)
    RidgeCV, BandedRidgeCV        scikit-learn style estimators
    BandedSolver                  banded ridge's X-only work for one training set, reused over target chunks
    nested_cv, stream_chunks, score_stream, kfold_splits
    NestedEngine, ChunkStats      nested CV from per-fold sufficient statistics (one pass over Y; suffstats.py)
    pearson_r, get_backend
"""
from .backend import get_backend
from .metrics import pearson_r
from .solver import ChunkResult, FitResult, FoldSolver, factorize
from .cv import kfold_splits, resolve_cv
from .estimators import BandedRidgeCV, BandedSolver, RidgeCV, band_labels, band_weight_samples
from .nested import NestedResult, nested_cv, score_stream, stream_chunks
from .suffstats import ChunkStats, NestedEngine

__all__ = [
    "BandedRidgeCV", "BandedSolver", "ChunkResult", "ChunkStats", "NestedEngine", "band_labels", "band_weight_samples", "FitResult", "FoldSolver", "NestedResult", "RidgeCV",
    "factorize", "get_backend", "kfold_splits", "nested_cv", "pearson_r", "resolve_cv",
    "score_stream", "stream_chunks",
]
