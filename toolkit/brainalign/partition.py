"""Variance partitioning: unique and shared variance of feature spaces by banded ridge on stacked designs.

A partition (``fit.partitions: [{name, bands: [fs1, fs2, ...], n_iter}]``) names m feature sets (conditions
or residuals of design.h5). The fit stage fits one banded ridge model (brainalign.ridge.BandedSolver: one
penalty per band and voxel, band weights by random search, ``n_iter`` weight vectors, the first uniform)
for every non-empty subset S of the bands on the stacked design [X_b for b in S], with the fit's nested CV
(outer folds by run, inner folds leave one training fold out, inner criterion R²), and scores each on the
held-out fold by R² = 1 − SSE / SS_tot (scikit-learn's ``r2_score`` per voxel). These are extra fit units
(one per subset model, layer, fold and voxel chunk) in the same scheduler and shards as the feature sets.

From the fold-mean held-out R²(S), the variance explained by exactly the bands T (a region of the Venn
diagram) follows by Möbius inversion (de Heer et al. 2017; Lescroart et al. 2015)::

    g(T) = R²(all) − R²(all \\ T)          (variance of the bands in T not explained without them)
    ρ(T) = Σ_{∅≠T'⊆T} (−1)^{|T|−|T'|} g(T')

so for two bands: unique a = R²(ab) − R²(b), shared = R²(a) + R²(b) − R²(ab). ``unique b`` is ρ({b}),
``shared a+b`` is ρ({a, b}). Held-out R² can be negative and regions of noisy voxels can be negative
too; the group tests (stats) ask whether a region's variance is > 0 on average across subjects.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np

CONCENTRATION = (0.1, 1.0)     # Dirichlet concentrations of the band-weight search (himalaya's default)
SEED = 0                       # band weights are a fixed function of (n_bands, n_iter)


def subsets(n_bands: int) -> list[tuple[int, ...]]:
    """Non-empty subsets of range(n_bands), by size then lexicographic: (0,), (1,), ..., (0, 1), ..."""
    return [c for k in range(1, n_bands + 1) for c in combinations(range(n_bands), k)]


def model_names(bands) -> list[str]:
    """Name of each subset model, e.g. 'joint+no_vision'."""
    return ["+".join(bands[i] for i in s) for s in subsets(len(bands))]


def region_names(bands) -> list[str]:
    """Name of each region (same order as :func:`subsets`): 'unique joint', 'shared joint+no_vision', ..."""
    return [("unique " if len(s) == 1 else "shared ") + "+".join(bands[i] for i in s) for s in subsets(len(bands))]


def regions_from_r2(r2, axis=0):
    """Möbius inversion (module doc): R² of every subset model -> variance of every region.

    r2: array with the 2^m − 1 subset models along ``axis`` in :func:`subsets` order. Returns float64 of the
    same shape, the regions in the same order (ρ(T) for each subset T).
    """
    r2 = np.moveaxis(np.asarray(r2, dtype=np.float64), axis, 0)
    M = r2.shape[0]
    m = int(round(np.log2(M + 1)))
    if 2 ** m - 1 != M:
        raise ValueError(f"regions_from_r2: {M} models is not 2^m - 1 for any m")
    subs = subsets(m)
    index = {frozenset(s): i for i, s in enumerate(subs)}
    full = frozenset(range(m))

    def r2_of(s):
        return r2[index[s]] if s else np.zeros(r2.shape[1:])

    g = {frozenset(t): r2_of(full) - r2_of(full - frozenset(t)) for t in subs}
    out = np.empty_like(r2)
    for i, t in enumerate(subs):
        out[i] = sum((-1) ** (len(t) - len(tp)) * g[frozenset(tp)]
                     for k in range(1, len(t) + 1) for tp in combinations(t, k))
    return np.moveaxis(out, 0, axis)


def heldout_r2(y, pred):
    """Per-column R² = 1 − Σ(y − pred)² / Σ(y − mean(y))² (scikit-learn ``r2_score``, raw values); NaN where y
    is constant or either input is non-finite. float32 (v,)."""
    y = np.asarray(y, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    ok = np.isfinite(y).all(0) & np.isfinite(pred).all(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        sst = ((y - y.mean(0)) ** 2).sum(0)
        r2 = 1.0 - ((y - pred) ** 2).sum(0) / sst
    return np.where(ok & (sst > 0), r2, np.nan).astype(np.float32)


def band_weights(n_bands: int, n_iter: int) -> np.ndarray:
    """The band-weight vectors searched (n_iter, n_bands): one band -> [[1]]; else the first uniform, the rest
    Dirichlet samples (brainalign.ridge.band_weight_samples, seed SEED)."""
    from .ridge import band_weight_samples

    if n_bands == 1:
        return np.ones((1, 1))
    return band_weight_samples(n_iter, n_bands, CONCENTRATION, SEED)


@dataclass(frozen=True)
class PartitionModel:
    """One subset model of a partition: the fit unit's 'feature set' for partition units."""

    partition: str
    bands: tuple          # feature-set names of the whole partition
    subset: tuple         # indices into bands of this model
    n_iter: int

    @property
    def name(self) -> str:
        return f"{self.partition}:" + "+".join(self.bands[i] for i in self.subset)

    @property
    def feature_sets(self) -> list[str]:
        return [self.bands[i] for i in self.subset]


def partition_models(cfg) -> list[PartitionModel]:
    """Every subset model of every ``fit.partitions`` entry, partitions in config order."""
    return [PartitionModel(p.name, tuple(p.bands), s, int(p.n_iter))
            for p in cfg.fit.partitions for s in subsets(len(p.bands))]


def partition_layout(cfg) -> list:
    """What the partition units depend on, for the fit's shard layout."""
    return [[p.name, list(p.bands), int(p.n_iter)] for p in cfg.fit.partitions]


def write_partitions(f, models: list[PartitionModel]):
    """Under scores.h5 ``/partition/{name}``: ``r2`` (S, M, L, V) fold-mean held-out R² of the partition's
    subset models and ``variance`` (S, M, L, V) of its regions, from the virtual ``/partition/r2``."""
    import warnings

    from .h5io import str_attr

    if not models:
        return
    allr2 = f["partition/r2"]
    S, _, L, _, V = allr2.shape
    by_name: dict = {}
    for i, m in enumerate(models):
        by_name.setdefault(m.partition, []).append(i)
    for name, idx in by_name.items():
        bands = list(models[idx[0]].bands)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)        # all-NaN (constant) voxels stay NaN
            mean = np.stack([np.nanmean(allr2[:, i], axis=2) for i in idx], axis=1)   # (S, M, L, V)
        g = f.create_group(f"partition/{name}")
        g.attrs["bands"] = str_attr(bands)
        g.attrs["models"] = str_attr(model_names(bands))
        g.attrs["regions"] = str_attr(region_names(bands))
        g.attrs["first_model"] = idx[0]
        g.create_dataset("r2", data=mean.astype(np.float32))
        g.create_dataset("variance", data=regions_from_r2(mean, axis=1).astype(np.float32))


# ---- group statistics (the stats stage) --------------------------------------------------------------

ROI_KEYS = ("t", "p", "mean", "ci_low", "ci_high", "cohen_d")
CSV_COLUMNS = ("partition", "region", "layer", "roi", "n_subjects", "mean", "ci_low", "ci_high", "t", "p", "q",
               "significant")


def _greater(res):
    """One-sided p (mean > 0) from :func:`brainalign.groupstats.one_sample_t`'s two-sided result, in place."""
    p, t = res["p"], res["t"]
    with np.errstate(invalid="ignore"):
        res["p"] = np.where(np.isnan(p), np.nan, np.where(t > 0, p / 2, 1 - p / 2))
    return res


@dataclass
class PartitionStats:
    """One-sided one-sample t-tests across subjects (H1: the region's variance > 0) of every region of one
    partition. One-sided because only positive variance is a finding: held-out R² of a larger model on noise
    is lower (over-fitting), so regions of null voxels are slightly negative, not evidence of anything."""

    name: str
    bands: list
    regions: list
    roi_value: np.ndarray     # (S, M, L, R) per subject: nan-mean of the region's variance over the ROI's voxels
    roi: dict                 # ROI_KEYS + "n" + later "q", "significant": (M, L, R)
    vox: dict                 # t, p, mean (+ q, significant): (M, L, V) float32


def partition_group_stats(f, meta) -> list[PartitionStats]:
    """Group tests of every partition in an open scores.h5 (nothing when it has no ``/partition``)."""
    from .h5io import read_str_attr
    from .groupstats import one_sample_t, roi_means

    out = []
    for name in (read_str_attr(f, "partitions") if "partitions" in f.attrs else []):
        g = f[f"partition/{name}"]
        var = g["variance"]
        S, M, L, V = var.shape
        roi_value = np.empty((S, M, L, len(meta.roi_ids)))
        vox = {k: np.empty((M, L, V), np.float32) for k in ("t", "p", "mean")}
        for li in range(L):                                   # one layer at a time
            x = var[:, :, li, :].astype(np.float64)           # (S, M, V)
            roi_value[:, :, li] = roi_means(x, meta.roi_labels, meta.roi_ids)
            res = _greater(one_sample_t(x, axis=0))
            for k in vox:
                vox[k][:, li] = res[k]
        roi = _greater(one_sample_t(roi_value, axis=0))
        out.append(PartitionStats(name, read_str_attr(g, "bands"), read_str_attr(g, "regions"), roi_value,
                                  roi, vox))
    return out


def test_names(ps: PartitionStats) -> list[str]:
    """Names of a partition's tests in the FDR families (one per region)."""
    return [f"{ps.name}/{r}" for r in ps.regions]


def write_partition_stats(g, parts: list[PartitionStats]):
    """stats.h5 ``/partition/{name}/roi/...`` and ``/voxel/...`` (layout in docs/file-layouts.md)."""
    from .h5io import str_attr

    for ps in parts:
        gp = g.create_group(f"partition/{ps.name}")
        gp.attrs["bands"] = str_attr(ps.bands)
        gp.attrs["regions"] = str_attr(ps.regions)
        gr = gp.create_group("roi")
        gr.create_dataset("value", data=ps.roi_value)
        for k in ROI_KEYS + ("q",):
            gr.create_dataset(k, data=np.asarray(ps.roi[k], np.float64))
        gr.create_dataset("n_subjects", data=ps.roi["n"].astype(np.int32))
        gr.create_dataset("significant", data=ps.roi["significant"])
        gv = gp.create_group("voxel")
        for k, arr in ps.vox.items():
            gv.create_dataset(k, data=arr, compression="gzip", shuffle=True, chunks=True)


def partition_rows(parts: list[PartitionStats], layers, roi_names) -> list[dict]:
    """Rows of ``roi_partitions.csv`` (CSV_COLUMNS)."""
    rows = []
    for ps in parts:
        for mi, region in enumerate(ps.regions):
            for li, layer in enumerate(layers):
                for ri, roi in enumerate(roi_names):
                    rows.append({"partition": ps.name, "region": region, "layer": layer, "roi": roi,
                                 "n_subjects": int(ps.roi["n"][mi, li, ri]),
                                 **{k: ps.roi[k][mi, li, ri] for k in ("mean", "ci_low", "ci_high", "t", "p", "q")},
                                 "significant": int(ps.roi["significant"][mi, li, ri])})
    return rows
