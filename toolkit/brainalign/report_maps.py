"""Brain maps for the report, on anatomy: volume (and parcel) maps as axial slices over nilearn's bundled MNI152
template, and on the fsaverage5 cortical surface (nilearn's bundled meshes, ``vol_to_surf``; nothing is
downloaded); per-subject maps beside the group. Every function returns the written path, or None when nilearn
is not installed or the map has no volume (grayordinates: CIFTI maps are written by fit/stats instead)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .h5io import atomic_path
from .log import get_logger

log = get_logger("report")

DPI = 110                   # figures are at most 2,400 px wide at this resolution (checked by the tests)
MAX_WIDTH_IN = 20.0


def _nilearn():
    try:
        from nilearn import datasets, plotting, surface  # noqa: F401
        return True
    except ImportError:
        log.info("report: nilearn not installed; anatomical and surface figures skipped "
                 "(pip install 'brainalign[plots]')")
        return False


def _image(values, space):
    import nibabel as nib

    vol = space.volume(np.asarray(values, np.float64))
    return nib.Nifti1Image(np.nan_to_num(vol, nan=0.0).astype(np.float32), space.affine)


def _vmax(values) -> float:
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    m = float(np.abs(v).max()) if v.size else 0.0
    return m if m > 0 else 1.0


def _save(fig, path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, facecolor="white")
    return Path(path)


def template_slices_png(values, space, title: str, path, cbar_label: str = "", vmax=None,
                        n_cuts: int = 7) -> Path | None:
    """Axial slices of a map (V,) (NaN/0 = not shown) over the MNI152 template bundled with nilearn."""
    if not space.volumetric or not _nilearn():
        return None
    from matplotlib.figure import Figure
    from nilearn import datasets, plotting

    img = _image(values, space)
    vmax = vmax or _vmax(values)
    fig = Figure(figsize=(min(MAX_WIDTH_IN, 2.0 * n_cuts), 2.9))
    plotting.plot_stat_map(img, bg_img=datasets.load_mni152_template(), display_mode="z",
                                     cut_coords=_cuts(img, n_cuts), threshold=1e-6, vmax=vmax, cmap="RdBu_r",
                                     colorbar=True, title=title + (f" ({cbar_label})" if cbar_label else ""),
                                     figure=fig, annotate=True, draw_cross=False, symmetric_cbar=True,
                                     resampling_interpolation="nearest")
    return _save(fig, path)          # (display.close() needs a pyplot figure; this one is not)


def _cuts(img, n):
    """n axial cuts (mm) spread over the slices where the map is non-zero."""
    data = np.asarray(img.dataobj)
    ks = np.flatnonzero((data != 0).any(axis=(0, 1)))
    if ks.size == 0:
        ks = np.arange(data.shape[2])
    ks = ks[np.unique(np.linspace(0, ks.size - 1, min(n, ks.size)).round().astype(int))]
    return [float((img.affine @ np.array([0, 0, k, 1.0]))[2]) for k in ks]


def surface_png(values, space, title: str, path, cbar_label: str = "", vmax=None) -> Path | None:
    """A map (V,) on the fsaverage5 inflated surface: left/right x lateral/medial, sampled from the volume
    with ``nilearn.surface.vol_to_surf`` on the pial mesh (parcels: nearest, so a parcel keeps its value)."""
    if not space.volumetric or not _nilearn():
        return None
    import matplotlib
    from matplotlib.figure import Figure
    from nilearn import datasets, plotting, surface

    fs = datasets.fetch_surf_fsaverage("fsaverage5")          # bundled with nilearn: no download
    img = _image(values, space)
    vmax = vmax or _vmax(values)
    interp = "nearest_most_frequent" if space.kind == "parcels" else "linear"
    fig = Figure(figsize=(13.0, 3.4))
    fig.subplots_adjust(left=0.0, right=0.9, bottom=0.0, top=0.88, wspace=0.0)
    views = [("left", "lateral"), ("left", "medial"), ("right", "lateral"), ("right", "medial")]
    for i, (hemi, view) in enumerate(views):
        try:
            tex = surface.vol_to_surf(img, fs[f"pial_{hemi}"], interpolation=interp, radius=3.0)
        except ValueError:                  # nilearn's most-frequent sampling where the image has no voxel
            tex = surface.vol_to_surf(img, fs[f"pial_{hemi}"], interpolation="linear", radius=3.0)
        tex = np.where(np.abs(tex) > 1e-6, tex, np.nan)
        ax = fig.add_subplot(1, 4, i + 1, projection="3d")
        ax.set_box_aspect(None, zoom=1.35)
        plotting.plot_surf_stat_map(fs[f"infl_{hemi}"], tex, hemi=hemi, view=view, bg_map=fs[f"sulc_{hemi}"],
                                    axes=ax, figure=fig, colorbar=False, vmax=vmax, cmap="RdBu_r",
                                    symmetric_cbar=True, engine="matplotlib")
        ax.set_title(f"{hemi} {view}", fontsize=10)
    norm = matplotlib.colors.Normalize(-vmax, vmax)
    sm = matplotlib.cm.ScalarMappable(norm=norm, cmap="RdBu_r")
    fig.colorbar(sm, cax=fig.add_axes((0.92, 0.2, 0.012, 0.55)), label=cbar_label)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def subject_maps_png(maps, subjects, space, title: str, path, notes=None, vmax=None) -> Path | None:
    """One glass-brain row per subject (maps: (S, V), NaN = not shown); ``notes`` a line per subject."""
    if not space.volumetric or not _nilearn():
        return None
    from matplotlib.figure import Figure
    from nilearn import plotting

    S = len(subjects)
    vmax = vmax or _vmax(maps)
    height = 2.3 * S + 0.5
    top = 1 - 0.5 / height                      # room for the title
    fig = Figure(figsize=(10.0, height))
    for si, s in enumerate(subjects):
        ax = fig.add_axes((0.0, top - (si + 1) * top / S, 1.0, top / S * 0.97))
        label = f"sub-{s}" + (f": {notes[si]}" if notes else "")
        plotting.plot_glass_brain(_image(maps[si], space), threshold=1e-6, colorbar=si == 0, plot_abs=False,
                                  vmin=-vmax, vmax=vmax, cmap="RdBu_r", display_mode="lzr", axes=ax, figure=fig,
                                  title=label, annotate=False)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)
