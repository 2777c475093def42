"""Fit stage: voxel-wise ridge encoding models with nested cross-validation.

Outer folds leave one run out; inside each outer training set the inner folds leave one training run out
and pick every voxel's alpha by mean inner-fold Pearson r; the model refit on the whole outer training set
with that alpha is scored on the held-out run (Pearson r). The design is shared by all subjects, so the
X-only work (decompositions) of one (feature set, layer, fold) unit serves every subject and voxel chunk.

A *unit* is (feature set, layer, outer fold); it is the piece of work that a process, an MPI rank or a
SLURM task takes (see brainalign.dist).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import DataError
from .h5io import atomic_h5, is_complete, open_h5, read_str_attr, str_attr
from .log import get_logger, progress

log = get_logger("fit")


@dataclass(frozen=True)
class Unit:
    fs: int       # feature-set index
    layer: int    # layer index (position in design attrs 'layers')
    fold: int     # outer fold index (= held-out run index)


def fold_splits(runs: np.ndarray, fold: int):
    """Outer split for ``fold`` and its inner leave-one-training-run-out splits (indices into train rows)."""
    train = np.flatnonzero(runs != fold)
    test = np.flatnonzero(runs == fold)
    tr_runs = runs[train]
    inner = [(np.flatnonzero(tr_runs != j), np.flatnonzero(tr_runs == j)) for j in np.unique(tr_runs)]
    return train, test, inner


def voxel_chunks(n_vox: int, size: int):
    size = max(1, int(size))
    return [(a, min(a + size, n_vox)) for a in range(0, n_vox, size)]


class FitInputs:
    """Read-only access to design.h5 and bold.h5 for the fit (opened once per process)."""

    def __init__(self, cfg):
        out = cfg.out
        self.design = open_h5(out / "design.h5", "design file (run align)", require=("runs", "design"))
        self.bold = open_h5(out / "bold.h5", "BOLD file (run align)", require=("runs", "bold", "mask"))
        self.runs = self.design["runs"][()]
        if not np.array_equal(self.runs, self.bold["runs"][()]):
            raise DataError(f"{out / 'design.h5'} and {out / 'bold.h5'} disagree on their TR grid (re-run align)")
        self.feature_sets = list(cfg.feature_sets)
        for fs in self.feature_sets:
            if fs not in self.design["design"]:
                raise DataError(f"{out / 'design.h5'} lacks feature set {fs!r} (re-run align)")
        self.layers = [int(x) for x in self.design.attrs["layers"]]
        self.folds = read_str_attr(self.design, "folds")
        self.subjects = read_str_attr(self.bold, "subjects")
        self.n_vox = int(self.bold["mask"][()].sum())
        for s in self.subjects:
            shape = self.bold["bold"][f"sub-{s}"].shape
            if shape != (len(self.runs), self.n_vox):
                raise DataError(f"bold.h5 sub-{s} has shape {shape}, expected {(len(self.runs), self.n_vox)}")

    def units(self):
        return [Unit(f, li, k) for f in range(len(self.feature_sets)) for li in range(len(self.layers))
                for k in range(len(self.folds))]

    def X(self, unit: Unit) -> np.ndarray:
        ds = self.design["design"][self.feature_sets[unit.fs]]
        X = ds[unit.fold, unit.layer] if ds.attrs.get("per_fold", 0) else ds[unit.layer]
        if not np.isfinite(X).all():
            raise DataError(f"design for {self.feature_sets[unit.fs]} layer {self.layers[unit.layer]} has "
                            "non-finite values (check the features file)")
        return X

    def close(self):
        self.design.close()
        self.bold.close()


def compute_unit(inp: FitInputs, unit: Unit, cfg, chunks=None):
    """Nested-CV ridge for one unit over every subject and voxel chunk.

    Returns (r, alpha): float32 arrays (n_subjects, n_vox) of held-out Pearson r and chosen alpha.
    """
    from .ridge import FoldSolver

    train, test, inner = fold_splits(inp.runs, unit.fold)
    X = inp.X(unit)
    solver = FoldSolver(X[train], X[test], np.asarray(cfg.fit.alphas, np.float64), inner,
                        backend=cfg.fit.backend)
    r = np.full((len(inp.subjects), inp.n_vox), np.nan, np.float32)
    alpha = np.full_like(r, np.nan)
    for si, s in enumerate(inp.subjects):
        ds = inp.bold["bold"][f"sub-{s}"]
        for a, b in chunks or voxel_chunks(inp.n_vox, cfg.fit.chunk_voxels):
            Y = ds[:, a:b]
            res = solver.score_chunk(Y[train], Y[test])
            r[si, a:b] = res.r
            alpha[si, a:b] = res.best_alpha
    return r, alpha


def write_scores_header(f, inp: FitInputs, cfg):
    """Create the datasets and attrs of scores.h5 (layout documented in the README)."""
    S, F, L, K, V = len(inp.subjects), len(inp.feature_sets), len(inp.layers), len(inp.folds), inp.n_vox
    f.attrs["subjects"] = str_attr(inp.subjects)
    f.attrs["feature_sets"] = str_attr(inp.feature_sets)
    f.attrs["layers"] = np.asarray(inp.layers, np.int64)
    f.attrs["folds"] = str_attr(inp.folds)
    f.attrs["alphas"] = np.asarray(cfg.fit.alphas, np.float64)
    f.attrs["backend"] = cfg.fit.backend
    f.attrs["roi_ids"] = inp.bold.attrs["roi_ids"]
    f.attrs["roi_names"] = inp.bold.attrs["roi_names"]
    m = f.create_dataset("mask", data=inp.bold["mask"][()])
    m.attrs["affine"] = inp.bold["mask"].attrs["affine"]
    f.create_dataset("roi_labels", data=inp.bold["roi_labels"][()])
    chunks = (1, 1, 1, 1, min(V, 65536))
    f.create_dataset("r", shape=(S, F, L, K, V), dtype=np.float32, chunks=chunks, fillvalue=np.nan)
    f.create_dataset("alpha", shape=(S, F, L, K, V), dtype=np.float32, chunks=chunks, fillvalue=np.nan)


def write_r_mean(f):
    """``r_mean`` = NaN-aware mean of ``r`` over outer folds (all-NaN voxels stay NaN)."""
    import warnings

    r = f["r"]
    S, F, L, K, V = r.shape
    out = f.create_dataset("r_mean", shape=(S, F, L, V), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # mean of an all-NaN (constant) voxel
        for s in range(S):
            out[s] = np.nanmean(r[s], axis=2)


def write_maps(cfg, scores_path):
    """Per subject and feature set a 4D NIfTI (x, y, z, layer) of fold-mean r under OUTPUT/maps/sub-XX/."""
    from .brain.volumes import load_mask, write_volume

    mask = load_mask(cfg.path(cfg.data.bold.mask))
    paths = []
    with open_h5(scores_path, "scores file") as f:
        subjects, fsets = read_str_attr(f, "subjects"), read_str_attr(f, "feature_sets")
        for si, s in enumerate(subjects):
            for fi, fs in enumerate(fsets):
                p = cfg.out / "maps" / f"sub-{s}" / f"sub-{s}_feat-{fs}_stat-r_bold.nii.gz"
                write_volume(p, f["r_mean"][si, fi].T, mask)   # (n_vox, n_layers)
                paths.append(p)
    return paths


def run_fit(cfg, force: bool = False):
    from .pipeline import config_hash

    path = cfg.out / "scores.h5"
    chash = config_hash(cfg)
    if not force and is_complete(path):
        with open_h5(path, "scores file") as f:
            if f.attrs.get("config_hash") == chash:
                log.info("fit: %s is complete for this config; skipping", path)
                return path
    inp = FitInputs(cfg)
    try:
        units = inp.units()
        log.info("fit: %d units (feature sets %d x layers %d x folds %d), %d subjects x %d voxels, backend %s",
                 len(units), len(inp.feature_sets), len(inp.layers), len(inp.folds), len(inp.subjects),
                 inp.n_vox, cfg.fit.backend)
        with atomic_h5(path, "fit", cfg.text, {"config_hash": chash}) as f:
            write_scores_header(f, inp, cfg)
            for u in progress(units, desc="fit units", unit="unit"):
                r, alpha = compute_unit(inp, u, cfg)
                f["r"][:, u.fs, u.layer, u.fold] = r
                f["alpha"][:, u.fs, u.layer, u.fold] = alpha
            write_r_mean(f)
    finally:
        inp.close()
    if cfg.fit.write_maps:
        write_maps(cfg, path)
    return path
