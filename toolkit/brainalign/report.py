"""The ``report`` stage: figures (matplotlib, Agg, no pyplot state), an HTML page, provenance.

Reads ``{output}/scores.h5`` and ``{output}/stats.h5`` and writes ``{output}/report/``:

- ``roi_bars.png``       mean r per ROI and feature set at the report layer, SEM error bars, subject dots,
                         significance marks (brackets for a vs b, marks above a bar for a vs zero)
- ``layer_curves.png``   mean r vs layer per ROI (one panel each), SEM bands
                         (both figures show at most ``report.max_rois`` ROIs: with more, e.g. 1,000 parcels, the
                         ones with the best group mean r of the joint feature set at the report layer; the tables
                         and roi_stats.csv keep every ROI)
- ``map_mean-r_<fs>.png`` axial mosaic of the group mean r of the joint feature set at the report layer
                         (parcels: projected into the parcellation; CIFTI grayordinates get no slice figures)
- ``glass_mean-r_<fs>.png`` nilearn glass brain of the same map, for parcel data
- ``map_contrast-<c>_t.png`` axial mosaic of each contrast's voxel-wise t, shown where q <= stats.q
- ``map_noise-ceiling.png`` axial mosaic of the subject-mean noise ceiling (when stats.h5 has one)
- ``findings.json``      when ``{data.root}/truth.json`` exists (simulated data): planted vs found, in words
                         (brainalign.findings); also the first section of index.html
- ``.complete``          JSON written last: the stage key and its record (brainalign.stagekeys)
- ``index.html``         every figure, the ROI table, the noise-normalised table (r, ceiling, r / ceiling) when
                         stats.h5 has ``/noise_ceiling``, per-subject permutation counts when a complete
                         ``permutation.h5`` exists, links to the CSV / HDF5 / NIfTI files, provenance

Every file is written atomically. The report layer is ``report.layer`` or, when null, the last layer: a rule
fixed before any result is seen, so the layer is not selected by the contrasts it displays (choosing the
layer with the best joint r and then showing joint − X at it would be circular). Under every figure and
table the report says which family each Benjamini–Hochberg correction spans (``stats.fdr_family``,
written in stats.h5 and permutation.h5).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ConfigError, DataError
from .h5io import atomic_path, open_h5, read_str_attr
from .log import get_logger
from .paths import MAPS, PERMUTATION, ROI_SCORES_CSV, SCORES, STATS, report_dir, report_index, report_marker
from .provenance import provenance
from .groupstats import ROI_STATS
from .scores import ScoresMeta, read_scores_meta

log = get_logger("report")

_PROV_KEYS = ("stage", "created", "git_commit", "brainalign_version", "host", "command", "python",
              "mpi_size", "container", "slurm")


@dataclass
class ContrastStats:
    name: str
    a: str
    b: str | None
    roi: dict                    # key -> (L, R) arrays from /roi/<name>
    t_map: np.ndarray            # (V,) t at the report layer
    q_map: np.ndarray            # (V,) q at the report layer


@dataclass
class ReportData:
    meta: ScoresMeta
    roi_r: np.ndarray            # (S, F, L, R) per-subject ROI mean r
    vox_mean_r: np.ndarray       # (F, V) group mean r at the report layer
    q: float
    layer_index: int
    layer_how: str
    contrasts: list[ContrastStats] = field(default_factory=list)
    attrs: dict = field(default_factory=dict)   # file label -> {attr: str}
    ceiling: dict | None = None  # /noise_ceiling of stats.h5: roi_ceiling (S, R), roi_normalised (S, F, L, R),
    #                              voxel (V,) subject-mean ceiling, method, formula, floor
    permutation: dict | None = None   # permutation.h5 summary (see _load_permutation)
    fdr_family: str = "layer"    # stats.h5 attr fdr_family (files written before it existed: per layer)
    partitions: list = field(default_factory=list)   # [(name, regions, {mean, ci_low, ci_high, q, significant}: (M, L, R))]

    def fdr(self, unit="ROI") -> str:
        """What one BH correction of stats.h5 spans, in words (for captions)."""
        from .fdr import family_text

        return family_text(self.fdr_family, unit)

    @property
    def joint(self) -> int:
        fs = self.meta.feature_sets
        return fs.index("joint") if "joint" in fs else 0


# ---- loading -------------------------------------------------------------------------------------

def _attrs_as_text(obj) -> dict:
    out = {}
    for k, v in obj.attrs.items():
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, np.ndarray):
            v = ", ".join(x.decode() if isinstance(x, bytes) else str(x) for x in v.ravel())
        out[k] = str(v)
    return out


def _pick_layer(cfg, meta: ScoresMeta) -> tuple[int, str]:
    """(index, how it was chosen) of the report layer: ``report.layer``, else the last layer."""
    layers = meta.layers
    if cfg.report.layer is not None:
        if cfg.report.layer in layers:
            return layers.index(cfg.report.layer), "fixed in the config: report.layer"
        if -len(layers) <= cfg.report.layer < 0:
            return cfg.report.layer % len(layers), "fixed in the config: report.layer (counted from the end)"
        raise ConfigError(f"report.layer: {cfg.report.layer} is not a layer in {meta.path} "
                          f"(layers: {', '.join(map(str, layers))})")
    return len(layers) - 1, ("the last layer (report.layer is null): a rule fixed before any result, so "
                             "independent of the contrasts displayed")


def load_report_data(cfg) -> ReportData:
    out = Path(cfg.output)
    scores_path, stats_path = out / SCORES, out / STATS
    with open_h5(scores_path, "scores file", require=("r_mean", "mask", "roi_labels")) as f:
        meta = read_scores_meta(f, scores_path)
        scores_attrs = _attrs_as_text(f)
    if not stats_path.exists():
        raise DataError(f"stats file not found: {stats_path} (run the stats stage first)")
    with open_h5(stats_path, "stats file", require=("roi/mean_r", "voxel/mean_r")) as g:
        for key, ours in (("subjects", meta.subjects), ("feature_sets", meta.feature_sets),
                          ("roi_names", meta.roi_names)):
            if read_str_attr(g, key) != ours:
                raise DataError(f"stats file {stats_path}: attr {key} differs from {scores_path}; "
                                "rerun the stats stage")
        if [int(x) for x in np.atleast_1d(g.attrs["layers"])] != meta.layers:
            raise DataError(f"stats file {stats_path}: attr layers differs from {scores_path}; rerun the stats stage")
        roi_r = g["roi/mean_r"][()]
        li, how = _pick_layer(cfg, meta)
        vox_mean_r = g["voxel/mean_r"][:, li]               # (F, V): only the report layer is shown
        names = read_str_attr(g, "contrasts") if "contrasts" in g.attrs else []
        a_s = read_str_attr(g, "contrast_a") if names else []
        b_s = read_str_attr(g, "contrast_b") if names else []
        contrasts = []
        for name, a, b in zip(names, a_s, b_s):
            gr, gv = g[f"roi/{name}"], g[f"voxel/{name}"]
            roi = {k: gr[k][()] for k in ROI_STATS + ("n_subjects", "significant")}
            contrasts.append(ContrastStats(name, a, b or None, roi, gv["t"][li].astype(np.float64),
                                           gv["q"][li].astype(np.float64)))
        ceiling = None
        if "noise_ceiling" in g:
            gc = g["noise_ceiling"]
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                voxel = np.nanmean(gc["ceiling"][()].astype(np.float64), axis=0)
            ceiling = {"roi_ceiling": gc["roi_ceiling"][()], "roi_normalised": gc["roi_normalised"][()],
                       "voxel": voxel, **_attrs_as_text(gc)}
        partitions = [(name, read_str_attr(gp, "regions"),
                       {k: gp[f"roi/{k}"][()] for k in ("mean", "ci_low", "ci_high", "q", "significant")})
                      for name, gp in (g["partition"].items() if "partition" in g else [])]
        data = ReportData(meta, roi_r, vox_mean_r, float(g.attrs["q"]), li, how, contrasts,
                          {"scores.h5": scores_attrs, "stats.h5": _attrs_as_text(g)}, ceiling,
                          _load_permutation(out / PERMUTATION, meta),
                          str(g.attrs.get("fdr_family", "layer")), partitions)
    return data


def _load_permutation(path, meta: ScoresMeta):
    """Summary of a complete permutation.h5 that matches scores.h5 (None otherwise): per subject and feature
    set (and contrast) the number of voxels with q <= q, plus the file's attrs."""
    from .h5io import is_complete

    if not is_complete(path):
        return None
    with open_h5(path, "permutation file") as g:
        if read_str_attr(g, "subjects") != meta.subjects:
            log.warning("report: %s is for other subjects than scores.h5; not shown", path)
            return None
        names = read_str_attr(g, "contrasts") if len(g.attrs.get("contrasts", [])) else []
        return {"feature_sets": read_str_attr(g, "feature_sets"), "layer": int(g.attrs["layer"]),
                "fdr": str(g.attrs.get("fdr", "Benjamini-Hochberg per subject across voxels of each test")),
                "n_perm": int(g.attrs["n_perm"]), "q": float(g.attrs["q"]),
                "r_sig": g["r/significant"][()].sum(axis=-1),                       # (S, F)
                "contrasts": {n: (g[f"contrast/{n}"].attrs["a"], g[f"contrast/{n}"].attrs["b"],
                                  g[f"contrast/{n}/significant"][()].sum(axis=-1)) for n in names},
                "n_voxels": meta.n_voxels}


def shown_rois(data: ReportData, k: int) -> np.ndarray:
    """Indices of the ROIs the bar and curve figures show: all when there are at most ``k``, else the ``k``
    with the best group mean r of the joint feature set at the report layer, best first (NaN last)."""
    R = data.roi_r.shape[-1]
    if R <= k:
        return np.arange(R)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        score = np.nanmean(data.roi_r[:, data.joint, data.layer_index, :], axis=0)
    return np.argsort(np.where(np.isfinite(score), -score, np.inf), kind="stable")[:k]


def subset_rois(data: ReportData, idx) -> ReportData:
    """A ReportData restricted to the ROIs ``idx`` (for figures; tables use every ROI)."""
    idx = np.asarray(idx, int)
    meta = dataclasses.replace(data.meta, roi_names=[data.meta.roi_names[i] for i in idx],
                               roi_ids=data.meta.roi_ids[idx])
    contrasts = [dataclasses.replace(c, roi={k: v[..., idx] for k, v in c.roi.items()}) for c in data.contrasts]
    return dataclasses.replace(data, meta=meta, roi_r=data.roi_r[..., idx], contrasts=contrasts)


# ---- figures -------------------------------------------------------------------------------------

def _figure(**kw):
    from matplotlib.figure import Figure
    return Figure(**kw)


def _colors(n):
    import matplotlib
    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _sem(x, axis=0):
    ok = np.isfinite(x)
    n = ok.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(ok, x, 0).sum(axis=axis) / n
        var = (np.where(ok, x - np.expand_dims(mean, axis), 0) ** 2).sum(axis=axis) / (n - 1)
        return mean, np.sqrt(var / n)


def stars(q) -> str:
    """'***' q < .001, '**' q < .01, else '*' (only called for significant cells)."""
    return "***" if q < 0.001 else "**" if q < 0.01 else "*"


def fig_roi_bars(data: ReportData, title: str):
    """Grouped bars: ROI x feature set at the report layer, SEM error bars, subject dots, significance."""
    meta, li = data.meta, data.layer_index
    S, F, _, R = data.roi_r.shape
    vals = data.roi_r[:, :, li, :]                       # (S, F, R)
    mean, sem = _sem(vals, axis=0)                        # (F, R)
    width = 0.8 / F
    fig = _figure(figsize=(max(5.0, 1.1 * R * max(F, 2) * 0.45 + 2), 4.6), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(R)
    colors = _colors(F)
    rng = np.random.default_rng(0)
    for fi, fs in enumerate(meta.feature_sets):
        xs = x - 0.4 + width * (fi + 0.5)
        ax.bar(xs, mean[fi], width * 0.92, yerr=sem[fi], color=colors[fi], label=fs, capsize=2,
               error_kw={"elinewidth": 1, "ecolor": "0.2"}, zorder=2)
        for ri in range(R):
            jitter = rng.uniform(-0.18, 0.18, S) * width
            ax.scatter(xs[ri] + jitter, vals[:, fi, ri], s=7, color="0.25", alpha=0.6, zorder=3, lw=0)
    top = np.nanmax(np.stack([np.nanmax(np.where(np.isfinite(vals), vals, -np.inf), axis=0),
                              np.nan_to_num(mean + sem, nan=-np.inf)]), axis=0)   # (F, R)
    finite = np.isfinite(top)
    span = (np.nanmax(top[finite]) - min(0.0, np.nanmin(top[finite]))) if finite.any() else 1.0
    step = 0.07 * (span if span > 0 else 1.0)
    level = np.where(np.isfinite(top), top, 0).max(axis=0) + step * 0.6   # (R,) next free height
    for c in data.contrasts:
        ia = meta.feature_sets.index(c.a)
        ib = meta.feature_sets.index(c.b) if c.b else None
        for ri in range(R):
            if not c.roi["significant"][li, ri]:
                continue
            s = stars(c.roi["q"][li, ri])
            xa = x[ri] - 0.4 + width * (ia + 0.5)
            if ib is None:
                ax.text(xa, level[ri], s, ha="center", va="bottom", fontsize=9)
            else:
                xb = x[ri] - 0.4 + width * (ib + 0.5)
                y = level[ri]
                ax.plot([xa, xa, xb, xb], [y, y + step * 0.3, y + step * 0.3, y], color="k", lw=0.8)
                ax.text((xa + xb) / 2, y + step * 0.25, s, ha="center", va="bottom", fontsize=9)
            level[ri] += step
    ax.set_xticks(x, meta.roi_names, rotation=30 if R > 6 else 0, ha="right" if R > 6 else "center")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_ylabel("encoding performance (Pearson r)")
    ax.set_xlabel("region of interest")
    ax.set_title(f"{title}\nlayer {meta.layers[li]}: mean ± SEM across {S} subjects", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(title="feature set", frameon=False, fontsize=8, title_fontsize=8, loc="upper left",
              bbox_to_anchor=(1.0, 1.0))
    if np.isfinite(level).any():
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, max(hi, float(np.nanmax(level)) + step))
    notes = [f"{c.name}: {c.a} vs {c.b or '0'} ({'bracket' if c.b else 'mark above ' + c.a})"
             for c in data.contrasts]
    fig.text(0.0, -0.02, f"* q<{data.q:g}, ** q<.01, *** q<.001 (one-sample t on Fisher-z differences; "
             f"{data.fdr('ROI')})" + ("\n" + "; ".join(notes) if notes else ""), fontsize=7, va="top",
             ha="left", wrap=True)
    return fig


def fig_layer_curves(data: ReportData, title: str):
    """One panel per ROI: mean r vs layer per feature set with SEM bands; the report layer dotted."""
    meta = data.meta
    S, F, L, R = data.roi_r.shape
    mean, sem = _sem(data.roi_r, axis=0)                 # (F, L, R)
    ncols = min(4, R)
    nrows = -(-R // ncols)
    fig = _figure(figsize=(3.2 * ncols + 1.5, 2.6 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)
    colors = _colors(F)
    xs = np.asarray(meta.layers)
    for ri in range(nrows * ncols):
        ax = axes.flat[ri]
        if ri >= R:
            ax.set_visible(False)
            continue
        for fi, fs in enumerate(meta.feature_sets):
            ax.plot(xs, mean[fi, :, ri], color=colors[fi], lw=1.5, marker="o", ms=3, label=fs)
            ax.fill_between(xs, mean[fi, :, ri] - sem[fi, :, ri], mean[fi, :, ri] + sem[fi, :, ri],
                            color=colors[fi], alpha=0.2, lw=0)
        ax.axvline(meta.layers[data.layer_index], color="0.5", ls=":", lw=1)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_title(meta.roi_names[ri], fontsize=10)
        ax.spines[["top", "right"]].set_visible(False)
        if L <= 12:
            ax.set_xticks(xs)
        else:
            from matplotlib.ticker import MaxNLocator
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ri % ncols == 0:
            ax.set_ylabel("Pearson r")
        if ri // ncols == nrows - 1 or ri + ncols >= R:
            ax.set_xlabel("layer")
            ax.tick_params(labelbottom=True)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, title="feature set", loc="outside right upper", frameon=False, fontsize=8)
    fig.suptitle(f"{title}\nencoding performance across layers (mean ± SEM across {S} subjects; "
                 f"dotted line = report layer)", fontsize=10)
    return fig


def _slices(mask3d, n_max=12):
    zs = np.flatnonzero(mask3d.any(axis=(0, 1)))
    if zs.size <= n_max:
        return zs
    return zs[np.unique(np.linspace(0, zs.size - 1, n_max).round().astype(int))]


def fig_mosaic(values, meta: ScoresMeta, title: str, cbar_label: str, note: str = ""):
    """Axial mosaic of a voxel/parcel map (V,) over the mask or parcellation, reoriented to RAS (left = subject's
    left).

    NaN values are transparent over the grey brain mask; colour scale symmetric around zero."""
    import nibabel as nib

    space = meta.space
    vol = space.volume(values)
    img = nib.as_closest_canonical(nib.Nifti1Image(np.stack([vol, space.brain.astype(np.float32)], -1),
                                                   space.affine))
    data = np.asarray(img.dataobj)
    vol, mask = data[..., 0], data[..., 1] > 0.5
    zs = _slices(mask)
    ncols = min(6, max(len(zs), 1))
    nrows = max(1, -(-len(zs) // ncols))
    aspect = vol.shape[1] / max(vol.shape[0], 1)
    fig = _figure(figsize=(1.9 * ncols + 1.2, 1.9 * nrows * aspect + 0.9), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    finite = vol[np.isfinite(vol)]
    vmax = float(np.abs(finite).max()) if finite.size else 1.0
    vmax = vmax if vmax > 0 else 1.0
    import matplotlib
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad=(0, 0, 0, 0))
    im = None
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= len(zs):
            continue
        k = zs[i]
        ax.imshow(mask[:, :, k].T, origin="lower", cmap="Greys", vmin=0, vmax=3, interpolation="nearest")
        im = ax.imshow(np.ma.masked_invalid(vol[:, :, k].T), origin="lower", cmap=cmap, vmin=-vmax,
                       vmax=vmax, interpolation="nearest")
        zmm = (img.affine @ np.array([0, 0, k, 1.0]))[2]
        ax.set_title(f"z = {int(round(zmm))} mm", fontsize=8)
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.8, label=cbar_label)
    fig.suptitle(title + (f"\n{note}" if note else ""), fontsize=10)
    return fig


def glass_brain_png(values, meta: ScoresMeta, title: str, path) -> Path | None:
    """A nilearn glass-brain projection of a voxel map (V,) (NaN = not shown), the standard view of a
    thresholded contrast in papers. None when nilearn is not installed or the map is not volumetric."""
    try:
        from nilearn import plotting
    except ImportError:
        log.info("report: nilearn not installed; glass-brain figures skipped (pip install 'brainalign[plots]')")
        return None
    import matplotlib.pyplot as plt
    import nibabel as nib

    if not meta.space.volumetric:                 # grayordinates / parcels without an atlas: no volume
        return None
    vol = np.nan_to_num(meta.space.volume(values), nan=0.0)
    img = nib.Nifti1Image(vol.astype(np.float32), meta.space.affine)
    vmax = float(np.abs(vol).max()) or 1.0
    with atomic_path(path) as tmp:
        display = plotting.plot_glass_brain(img, threshold=1e-6, colorbar=True, plot_abs=False, vmin=-vmax,
                                            vmax=vmax, cmap="RdBu_r", title=title, display_mode="lzry")
        display.frame_axes.figure.savefig(tmp, format="png", dpi=120, facecolor="white")
        display.close()
        plt.close("all")
    return Path(path)


def save_png(fig, path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight", facecolor="white")
    return Path(path)


# ---- HTML ----------------------------------------------------------------------------------------

_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;
text-align:right}th{background:#f2f2f2}td.l,th.l{text-align:left}tr.sig{background:#fff3cd}
figure{margin:1.5em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:13px;color:#555}
pre{background:#f7f7f7;padding:.6em;overflow:auto;font-size:12px}code{font-size:12px}"""


def _fmt(v, spec=".3g"):
    if isinstance(v, (float, np.floating)):
        return "–" if not np.isfinite(v) else format(float(v), spec)
    return html.escape(str(v))


def _roi_table(data: ReportData, layer_indices) -> str:
    meta = data.meta
    head = ("<tr><th class=l>contrast</th><th class=l>a</th><th class=l>b</th><th>layer</th>"
            "<th class=l>ROI</th><th>n</th><th>mean Δz</th><th>95% CI</th><th>t</th><th>p</th><th>q</th>"
            "<th>cohen d</th><th></th></tr>")
    rows = []
    for c in data.contrasts:
        for li in layer_indices:
            for ri, roi in enumerate(meta.roi_names):
                g = {k: v[li, ri] for k, v in c.roi.items()}
                sig = bool(g["significant"])
                rows.append(
                    f"<tr{' class=sig' if sig else ''}><td class=l>{_fmt(c.name)}</td><td class=l>{_fmt(c.a)}</td>"
                    f"<td class=l>{_fmt(c.b or '0')}</td><td>{meta.layers[li]}</td><td class=l>{_fmt(roi)}</td>"
                    f"<td>{int(g['n_subjects'])}</td><td>{_fmt(g['mean'])}</td>"
                    f"<td>[{_fmt(g['ci_low'])}, {_fmt(g['ci_high'])}]</td><td>{_fmt(g['t'])}</td>"
                    f"<td>{_fmt(g['p'])}</td><td>{_fmt(g['q'])}</td><td>{_fmt(g['cohen_d'])}</td>"
                    f"<td>{stars(g['q']) if sig else ''}</td></tr>")
    if not rows:
        return "<p>No contrasts (stats.contrasts is empty) or no ROIs.</p>"
    return f"<table>{head}{''.join(rows)}</table>"


def _provenance_html(label, attrs) -> str:
    rows = [f"<tr><th class=l>{k}</th><td class=l><code>{html.escape(attrs[k])}</code></td></tr>"
            for k in _PROV_KEYS if k in attrs]
    try:
        pk = json.loads(attrs.get("packages", "{}"))
        rows.append("<tr><th class=l>packages</th><td class=l><code>"
                    + html.escape(", ".join(f"{k} {v}" for k, v in sorted(pk.items()))) + "</code></td></tr>")
    except ValueError:
        pass
    cfg_text = attrs.get("config", "")
    return (f"<h3>{html.escape(label)}</h3><table>{''.join(rows)}</table>"
            f"<details><summary>config used for {html.escape(label)}</summary><pre>{html.escape(cfg_text)}"
            "</pre></details>")


def _mean_sem_txt(x):
    mean, sem = _sem(np.asarray(x, dtype=np.float64)[:, None], axis=0)
    return f"{_fmt(mean[0])} ± {_fmt(sem[0], '.2g')}"


def _ceiling_html(data: ReportData) -> str:
    """Raw r beside the noise ceiling and r / ceiling per ROI and feature set at the report layer."""
    c = data.ceiling
    if c is None or not data.meta.roi_names:
        return ""
    meta, li = data.meta, data.layer_index
    head = ("<tr><th class=l>ROI</th><th>ceiling</th>" + "".join(
        f"<th>r {_fmt(fs)}</th><th>r / ceiling {_fmt(fs)}</th>" for fs in meta.feature_sets) + "</tr>")
    rows = []
    for ri, roi in enumerate(meta.roi_names):
        cells = [f"<td class=l>{_fmt(roi)}</td><td>{_mean_sem_txt(c['roi_ceiling'][:, ri])}</td>"]
        for fi in range(len(meta.feature_sets)):
            cells.append(f"<td>{_mean_sem_txt(data.roi_r[:, fi, li, ri])}</td>"
                         f"<td>{_mean_sem_txt(c['roi_normalised'][:, fi, li, ri])}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<h2>Noise-normalised alignment, layer {meta.layers[li]}</h2><p>No significance test in this "
            "table (descriptive). Noise ceiling: "
            f"{html.escape(c.get('method', ''))} ({html.escape(c.get('formula', ''))}). r / ceiling is computed per "
            f"subject from the ROI-mean r and ROI-mean ceiling (NaN where the ceiling is ≤ {html.escape(c.get('floor', ''))})"
            f"; mean ± SEM across subjects. All layers: roi_scores.csv.</p><table>{head}{''.join(rows)}</table>")


def _partition_html(data: ReportData) -> str:
    """Unique and shared variance (held-out R²) per ROI and region at the report layer (stats.h5 /partition)."""
    if not data.partitions or not data.meta.roi_names:
        return ""
    meta, li = data.meta, data.layer_index
    out = []
    for name, regions, st in data.partitions:
        head = "<tr><th class=l>ROI</th>" + "".join(f"<th>{_fmt(r)}</th>" for r in regions) + "</tr>"
        rows = []
        for ri, roi in enumerate(meta.roi_names):
            cells = "".join(
                f"<td{' class=sig' if st['significant'][mi, li, ri] else ''}>{_fmt(st['mean'][mi, li, ri])} "
                f"[{_fmt(st['ci_low'][mi, li, ri])}, {_fmt(st['ci_high'][mi, li, ri])}], q {_fmt(st['q'][mi, li, ri])}"
                f"{' ' + stars(st['q'][mi, li, ri]) if st['significant'][mi, li, ri] else ''}</td>"
                for mi in range(len(regions)))
            rows.append(f"<tr><td class=l>{_fmt(roi)}</td>{cells}</tr>")
        out.append(f"<h2>Variance partitioning '{html.escape(name)}', layer {meta.layers[li]}</h2><p>Unique and "
                   "shared variance (held-out R², banded ridge on the stacked feature sets, brainalign.partition): "
                   "group mean of the subjects' ROI means [95 % CI]; one-sided t-test across subjects (variance > 0),"
                   f" q = {html.escape(data.fdr('ROI'))}. All layers: roi_partitions.csv.</p>"
                   f"<table>{head}{''.join(rows)}</table>")
    return "".join(out)


def _permutation_html(data: ReportData) -> str:
    """Per-subject voxel counts significant by circular-shift permutation (permutation.h5)."""
    pm = data.permutation
    if pm is None:
        return ""
    cols = list(pm["feature_sets"]) + [f"{n} ({a} − {b})" for n, (a, b, _) in pm["contrasts"].items()]
    head = "<tr><th class=l>subject</th>" + "".join(f"<th>{_fmt(c)}</th>" for c in cols) + "</tr>"
    rows = []
    for si, s in enumerate(data.meta.subjects):
        vals = list(pm["r_sig"][si]) + [sig[si] for _, _, sig in pm["contrasts"].values()]
        rows.append(f"<tr><td class=l>sub-{_fmt(s)}</td>" + "".join(f"<td>{int(v)}</td>" for v in vals) + "</tr>")
    return (f"<h2>Per-subject permutation tests, layer {pm['layer']}</h2><p>Voxels (of {pm['n_voxels']}) with "
            f"BH q ≤ {pm['q']:g} against {pm['n_perm']} within-run circular shifts of the BOLD (one-sided, r "
            f"greater than under misalignment); multiple comparisons: {html.escape(pm['fdr'])}; see permutation.h5."
            "</p>"
            f"<table>{head}{''.join(rows)}</table>")


def _units(meta) -> str:
    return {"parcels": "parcels", "grayordinates": "grayordinates", "none": "parcels"}.get(
        getattr(meta.space, "kind", "volume"), "voxels")


def _runs_html(meta) -> str:
    """One sentence on the runs each subject contributed when some subject lacks runs."""
    rp = meta.runs_present
    if not rp:
        return ""
    n = max((max(v) + 1 for v in rp.values() if v), default=0)
    counts = {s: len(v) for s, v in rp.items()}
    if all(c == n for c in counts.values()):
        return ""
    return (" Runs per subject (missing runs are skipped, data.missing_runs): "
            + html.escape(", ".join(f"sub-{s} {c}/{n}" for s, c in counts.items()))
            + "; the n column of the tables counts the subjects in each cell.")


def build_html(cfg, data: ReportData, figures, links, findings_section: str = "") -> str:
    """figures: [(file name, caption)]; links: [(relative href, label)]; findings_section: planted vs found."""
    meta = data.meta
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    figs = "".join(f'<figure><a href="{html.escape(n)}"><img src="{html.escape(n)}" alt="{html.escape(n)}">'
                   f"</a><figcaption>{html.escape(cap)}</figcaption></figure>" for n, cap in figures)
    link_html = "".join(f'<li><a href="{html.escape(h)}">{html.escape(lab)}</a></li>' for h, lab in links)
    n_rows = len(data.contrasts) * len(meta.layers) * len(meta.roi_names)
    all_layers = (f"<details><summary>all layers ({n_rows} rows)</summary>"
                  f"{_roi_table(data, range(len(meta.layers)))}</details>" if n_rows <= 5000 else
                  "<p>All layers: see roi_stats.csv.</p>")
    own = provenance(cfg.text, "report")
    extra_sections = _ceiling_html(data) + _partition_html(data) + _permutation_html(data)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(cfg.report.title)}</title>
<style>{_CSS}</style></head><body>
<h1>{html.escape(cfg.report.title)}</h1>
<p>Experiment <b>{html.escape(cfg.name)}</b>, report created {now}.
{len(meta.subjects)} subjects ({html.escape(', '.join(meta.subjects))}); feature sets
{html.escape(', '.join(meta.feature_sets))}; layers {html.escape(', '.join(map(str, meta.layers)))};
{len(meta.roi_names)} ROIs; {meta.n_voxels} {_units(meta)}. Report layer <b>{meta.layers[data.layer_index]}</b>
({html.escape(data.layer_how)}). Significance: q &le; {data.q:g}, {html.escape(data.fdr('ROI'))} for ROI
tests, {html.escape(data.fdr('voxel'))} for voxel maps.{_runs_html(meta)}</p>
{findings_section}
<h2>Figures</h2>{figs}
<h2>ROI statistics, layer {meta.layers[data.layer_index]}</h2>
<p>Two-sided one-sample t-test across subjects of the Fisher-z difference (a − b, or a − 0) of each
subject's ROI-mean r; q = {html.escape(data.fdr('ROI'))}. Highlighted: q &le; {data.q:g}.</p>
{_roi_table(data, [data.layer_index])}{all_layers}
{extra_sections}
<h2>Files</h2><ul>{link_html}</ul>
<h2>Provenance</h2>
{_provenance_html("scores.h5", data.attrs["scores.h5"])}
{_provenance_html("stats.h5", data.attrs["stats.h5"])}
{_provenance_html("this report", own)}
</body></html>
"""


# ---- the stage -----------------------------------------------------------------------------------

def run_report(cfg, force: bool = False) -> Path:
    """The ``report`` stage; returns the report directory ``{output}/report``. Skipped while its stage key
    (report.*, name, and the keys of scores.h5, stats.h5, permutation.h5) is current; ``report/.complete``
    (JSON: the key and its record) is written last."""
    from .stagecheck import stage_check

    out = Path(cfg.output)
    rep = report_dir(cfg)
    key = stage_check(cfg, "report", force)
    if key.current:
        return rep
    report_marker(cfg).unlink(missing_ok=True)
    data = load_report_data(cfg)
    meta, title = data.meta, cfg.report.title
    layer = meta.layers[data.layer_index]
    figures = []
    if meta.roi_names:
        idx = shown_rois(data, int(cfg.report.max_rois))
        shown = subset_rois(data, idx)
        which = ("" if len(idx) == len(meta.roi_names) else
                 f" Shown: the {len(idx)} of {len(meta.roi_names)} ROIs with the best group mean r of "
                 f"'{meta.feature_sets[data.joint]}' at layer {layer} (report.max_rois); every ROI is in the "
                 "tables below and in roi_stats.csv.")
        save_png(fig_roi_bars(shown, title), rep / "roi_bars.png")
        figures.append(("roi_bars.png", f"Encoding performance per ROI at layer {layer} (mean ± SEM across "
                        f"subjects, dots = subjects). Brackets/marks: contrasts with q ≤ {data.q:g}, "
                        f"{data.fdr('ROI')}." + which))
        save_png(fig_layer_curves(shown, title), rep / "layer_curves.png")
        figures.append(("layer_curves.png", "Encoding performance across layers per ROI (mean ± SEM); no "
                        f"significance marks (the tables' q: {data.fdr('ROI')})." + which))
    else:
        log.warning("report: scores.h5 has no ROIs; ROI figures skipped")
    fs = meta.feature_sets[data.joint]
    volumetric = meta.space.volumetric
    if volumetric:
        name = f"map_mean-r_{fs}.png"
        save_png(fig_mosaic(data.vox_mean_r[data.joint], meta, f"group mean r, {fs}, layer {layer}", "Pearson r"),
                 rep / name)
        figures.append((name, f"Group mean encoding performance of '{fs}' at layer {layer} (axial slices, RAS"
                        + (", parcels projected into the parcellation" if meta.space.kind == "parcels" else "")
                        + "); descriptive, no test."))
    else:
        log.info("report: %s data have no volume; brain figures skipped (maps: %s)", meta.space.kind,
                 "maps/ (CIFTI dscalar)" if meta.space.has_maps else "none without data.bold.rois")
    if meta.space.kind == "parcels":
        name = f"glass_mean-r_{fs}.png"
        if glass_brain_png(data.vox_mean_r[data.joint], meta, f"group mean r, {fs}, layer {layer}", rep / name):
            figures.append((name, f"Glass-brain projection (nilearn) of the group mean r of '{fs}' per parcel; "
                            "descriptive, no test."))
    for c in data.contrasts:
        if not volumetric:
            continue
        t = np.where(np.nan_to_num(c.q_map, nan=np.inf) <= data.q, c.t_map, np.nan)
        n_sig = int(np.isfinite(t).sum())
        if n_sig:
            note, shown, where = f"{n_sig} of {meta.n_voxels} voxels with q ≤ {data.q:g}", t, f"q ≤ {data.q:g}"
        else:   # nothing survives: show the unthresholded map rather than an empty brain, and say so
            note, shown, where = (f"no voxel survives q ≤ {data.q:g}; unthresholded t shown", c.t_map,
                                  "unthresholded")
        name = f"map_contrast-{c.name}_t.png"
        save_png(fig_mosaic(shown, meta, f"{c.name}: {c.a} vs {c.b or '0'}, layer {layer}, t ({where})",
                            "t", note), rep / name)
        figures.append((name, f"Voxel-wise t of {c.a} − {c.b or '0'} (Fisher z) at layer {layer}; {note}; "
                        f"q: {data.fdr('voxel')}."))
        if n_sig:
            name = f"glass_contrast-{c.name}_t.png"
            if glass_brain_png(t, meta, f"{c.name}, layer {layer}: t where q ≤ {data.q:g}", rep / name):
                figures.append((name, "Glass-brain projection (nilearn) of the same thresholded t map; q: "
                                f"{data.fdr('voxel')}."))
    if data.ceiling is not None and volumetric:
        name = "map_noise-ceiling.png"
        save_png(fig_mosaic(data.ceiling["voxel"], meta, f"noise ceiling ({data.ceiling.get('method', '')}), "
                            "mean across subjects", "ceiling (r)"), rep / name)
        figures.append((name, "Noise ceiling: the highest r a model could reach per voxel "
                        f"({data.ceiling.get('formula', '')}); mean across subjects; descriptive, no test."))
    links = [("../roi_stats.csv", "roi_stats.csv — tidy ROI statistics, all contrasts and layers"),
             ("../stats.h5", "stats.h5 — group statistics"), ("../scores.h5", "scores.h5 — encoding scores")]
    if (out / ROI_SCORES_CSV).is_file() and data.ceiling is not None:
        links.insert(1, ("../roi_scores.csv", "roi_scores.csv — mean r, noise ceiling and r / ceiling per ROI"))
    if data.permutation is not None:
        links.append(("../permutation.h5", "permutation.h5 — per-subject circular-shift permutation tests"))
    if data.partitions:
        links.insert(1, ("../roi_partitions.csv", "roi_partitions.csv — unique/shared variance tests per ROI"))
    maps = sorted(p for p in (out / MAPS / "group").glob("*") if p.name.endswith((".nii.gz", ".dscalar.nii")))
    links += [(f"../maps/group/{p.name}", f"maps/group/{p.name}") for p in maps]
    from . import findings

    section = findings.build(cfg, data)         # simulated data: what was planted vs what was found
    if section is not None:
        with atomic_path(rep / "findings.json") as tmp:
            Path(tmp).write_text(json.dumps(section, indent=2) + "\n", encoding="utf-8")
        links.insert(0, ("findings.json", "findings.json — planted vs found (simulated data)"))
        for line in section["sentences"]:
            log.info("report: %s", line)
    with atomic_path(report_index(cfg)) as tmp:
        Path(tmp).write_text(build_html(cfg, data, figures, links, findings.to_html(section)), encoding="utf-8")
    with atomic_path(report_marker(cfg)) as tmp:
        Path(tmp).write_text(json.dumps(key.json_fields(), indent=1, sort_keys=True) + "\n")
    log.info("report: wrote %s (%d figures)", report_index(cfg), len(figures))
    return rep
