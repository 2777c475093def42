"""Reading align's outputs (design.h5, bold.h5) for the fit and the permutation tests: ``FitInputs`` (opened
once per process), the fit's units of work and its cross-validation splits."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from .errors import BrainAlignError, DataError
from .h5io import check_float, open_h5, read_str_attr
from .partition import partition_layout, partition_models
from .paths import BOLD, DESIGN


@dataclass(frozen=True, order=True)
class Unit:
    """(feature set, layer, outer fold, voxel chunk): the piece of work one process or MPI rank takes."""

    fs: int       # feature-set index
    layer: int    # layer index (position in design attrs 'layers')
    fold: int     # outer fold index (= held-out run index)
    chunk: int = 0  # voxel-chunk index (FitInputs.chunks)
    by_chunk: bool = field(default=False, compare=False)   # grouped by (fs, layer, chunk): statistics engine

    @property
    def xkey(self):
        """Units with equal xkey share their setup: the design's FoldSolver (fs, layer, fold), or with
        ``by_chunk`` the chunk statistics of every outer fold (fs, layer, chunk)."""
        return ("chunk", self.fs, self.layer, self.chunk) if self.by_chunk else (self.fs, self.layer, self.fold)

    @property
    def key(self):
        return (self.fs, self.layer, self.fold, self.chunk)


def fold_splits(groups: np.ndarray, fold: int):
    """Outer split for ``fold`` and its inner leave-one-training-fold-out splits (indices into train rows).

    ``groups`` is the CV group of each row: the run index, or the outer fold index when runs are grouped
    (design.h5 ``/cv_groups``).
    """
    train = np.flatnonzero(groups != fold)
    test = np.flatnonzero(groups == fold)
    tr_groups = groups[train]
    inner = [(np.flatnonzero(tr_groups != j), np.flatnonzero(tr_groups == j)) for j in np.unique(tr_groups)]
    return train, test, inner


def voxel_chunks(n_vox: int, size: int):
    """[(start, stop)] covering range(n_vox) in chunks of ``size`` voxels (the last may be shorter)."""
    size = max(1, int(size))
    return [(a, min(a + size, n_vox)) for a in range(0, n_vox, size)]


class FitInputs:
    """Read-only access to design.h5 and bold.h5 for the fit (opened once per process)."""

    def __init__(self, cfg):
        out = cfg.out
        self.design = open_h5(out / DESIGN, "design file (run align)", require=("runs", "design"))
        try:
            self.bold = open_h5(out / BOLD, "BOLD file (run align)", require=("runs", "bold", "mask"))
        except BrainAlignError:
            self.design.close()
            raise
        try:
            self._check(cfg)
        except BrainAlignError:
            self.close()
            raise

    def _check(self, cfg):
        out = cfg.out
        self.runs = self.design["runs"][()]
        # CV group of each row: one fold per run unless align grouped runs (align.outer_folds)
        self.groups = self.design["cv_groups"][()] if "cv_groups" in self.design else self.runs
        if not np.array_equal(self.runs, self.bold["runs"][()]):
            raise DataError(f"{out / 'design.h5'} and {out / 'bold.h5'} disagree on their TR grid (re-run align)")
        self.feature_sets = list(cfg.feature_sets)
        self.models = partition_models(cfg)          # variance-partitioning subset models: units fs >= F
        self.partitions = partition_layout(cfg)
        for fs in self.feature_sets + [b for m in self.models for b in m.feature_sets]:
            if fs not in self.design["design"]:
                raise DataError(f"{out / 'design.h5'} lacks feature set {fs!r} (re-run align)")
            check_float(self.design["design"][fs], out / "design.h5", "design file")
        self.layers = [int(x) for x in self.design.attrs["layers"]]
        self.folds = read_str_attr(self.design, "folds")
        self.subjects = read_str_attr(self.bold, "subjects")
        self.n_vox = int(self.bold["mask"][()].sum())
        self.rows, self.present = {}, {}
        n_runs = int(self.runs.max()) + 1 if len(self.runs) else 0
        for s in self.subjects:
            if f"sub-{s}" not in self.bold["bold"]:
                raise DataError(f"{out / 'bold.h5'} lacks /bold/sub-{s} (re-run align)")
            ds = check_float(self.bold["bold"][f"sub-{s}"], out / "bold.h5", "BOLD file")
            present = np.asarray(ds.attrs.get("runs_present", np.arange(n_runs)), np.int64)
            self.present[s] = present
            self.rows[s] = None if len(present) == n_runs else np.flatnonzero(np.isin(self.runs, present))
            n_rows = len(self.runs) if self.rows[s] is None else len(self.rows[s])
            if ds.shape != (n_rows, self.n_vox):
                raise DataError(f"bold.h5 sub-{s} has shape {ds.shape}, expected {(n_rows, self.n_vox)} "
                                f"({len(present)} of {n_runs} runs)")
        self.chunks = voxel_chunks(self.n_vox, cfg.fit.chunk_voxels)
        self.chunk_width = max((b - a for a, b in self.chunks), default=0)

    def units(self):
        """Every unit, ordered so that units sharing a setup (Unit.xkey) are consecutive: the feature sets
        (fs < F; grouped by voxel chunk), then the partition subset models (fs = F + index in ``models``;
        grouped by outer fold)."""
        F, L, K, C = len(self.feature_sets), len(self.layers), len(self.folds), len(self.chunks)
        return ([Unit(f, li, k, c, by_chunk=True) for f in range(F) for li in range(L) for c in range(C)
                 for k in range(K)]
                + [Unit(f, li, k, c) for f in range(F, F + len(self.models)) for li in range(L) for k in range(K)
                   for c in range(C)])

    def per_fold(self, fs: str) -> bool:
        """Whether feature set ``fs`` has one design per outer fold (residual features)."""
        return bool(self.design["design"][fs].attrs.get("per_fold", 0))

    def layout(self) -> str:
        """JSON of the output geometry; shards made for another geometry are stale."""
        return json.dumps({"subjects": self.subjects, "feature_sets": self.feature_sets, "layers": self.layers,
                           "folds": self.folds, "n_trs": int(len(self.runs)), "n_vox": self.n_vox,
                           "chunk_voxels": self.chunk_width, "partitions": self.partitions,
                           "runs_present": {s: self.present[s].tolist() for s in self.subjects}}, sort_keys=True)

    def is_partition(self, unit: Unit) -> bool:
        return unit.fs >= len(self.feature_sets)

    def model(self, unit: Unit):
        """The partition subset model of a partition unit."""
        return self.models[unit.fs - len(self.feature_sets)]

    def name(self, unit: Unit) -> str:
        return self.model(unit).name if self.is_partition(unit) else self.feature_sets[unit.fs]

    def X_of(self, fs: str, layer: int, fold: int) -> np.ndarray:
        """Design matrix of feature set ``fs`` at layer index ``layer`` for outer fold ``fold``: float32."""
        ds = self.design["design"][fs]
        X = ds[fold, layer] if ds.attrs.get("per_fold", 0) else ds[layer]
        if not np.isfinite(X).all():
            raise DataError(f"design for {fs} layer {self.layers[layer]} has non-finite values (check the "
                            "features file)")
        return X

    def X(self, unit: Unit) -> np.ndarray:
        """Design matrix of ``unit``: float32 (n_trs, n_features) (a partition model: its bands stacked)."""
        if self.is_partition(unit):
            return np.concatenate([self.X_of(b, unit.layer, unit.fold) for b in self.model(unit).feature_sets], 1)
        return self.X_of(self.feature_sets[unit.fs], unit.layer, unit.fold)

    def describe(self, unit: Unit) -> str:
        a, b = self.chunks[unit.chunk]
        return f"{self.name(unit)} layer {self.layers[unit.layer]} fold {self.folds[unit.fold]} voxels {a}:{b}"

    def close(self):
        self.design.close()
        self.bold.close()
