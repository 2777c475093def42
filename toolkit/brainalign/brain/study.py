"""The study's unit space and ROIs from the config's data section: mask, parcellation, ROI names and groups.

- Volumetric BIDS data: the mask is ``data.bold.mask`` (one file, or one per subject with ``{subject}``,
  intersected), or when it is null the intersection of the fMRIPrep brain masks of every run used (each
  ``…_desc-brain_mask.nii.gz`` beside its ``…_desc-preproc_bold.nii.gz``); the log states which and how many
  voxels. ROIs: the label image ``data.bold.rois`` on the mask's grid (resampled if needed).
- HDF5 parcel data: ``data.bold.rois`` is the parcellation (e.g. Algonauts' ``…_desc-dseg_parcellation.nii.gz``);
  parcels are the units, maps are written back into it (brain.space). Without it: no ROIs, no maps.
- CIFTI: ROIs are the file's brain structures.

With ``{subject}`` in ``data.bold.rois`` every subject's atlas is read: their label sets must agree; when their
voxels differ the first subject's is used for maps and ROI labels, with a warning.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import require_file
from ..errors import DataError
from ..log import get_logger
from .space import MapSpace

log = get_logger("brain")


@dataclass
class StudySpace:
    space: MapSpace
    labels: np.ndarray            # int32 (n,) ROI id of each unit, 0 = none
    names: dict                   # ROI id -> name
    files: dict = field(default_factory=dict)   # what was read: {"mask": [...], "atlas": [...], "roi_names": [...]}
    mask: object = None           # volume data: the brain.volumes.Mask the runs are read through


def _per_subject(cfg, template, key, subjects) -> list[Path]:
    """The files of a template that may use {subject}: one per subject, or the one file."""
    from ..config import template_fields

    if "subject" in template_fields(template, key):
        return [cfg.path(template, key, subject=s) for s in subjects]
    return [cfg.path(template, key)]


def mask_files(cfg, table) -> list[Path]:
    """The brain-mask files the study mask is built from (see the module docstring)."""
    b = cfg.data.bold
    if b.format != "bids":
        return []
    if b.mask:
        return _per_subject(cfg, b.mask, "data.bold.mask", b.subjects)
    return [run.mask_path for _, run in table.items()]


def atlas_files(cfg) -> list[Path]:
    b = cfg.data.bold
    return _per_subject(cfg, b.rois, "data.bold.rois", b.subjects) if b.rois else []


def names_files(cfg) -> list[Path]:
    b = cfg.data.bold
    return _per_subject(cfg, b.roi_names, "data.bold.roi_names", b.subjects)[:1] if b.roi_names else []


def build_mask(cfg, table):
    """The study Mask: one file, or the intersection of several (per subject, or per run), logged."""
    from .volumes import Mask, _same_grid, load_mask

    b = cfg.data.bold
    files = mask_files(cfg, table)
    key = "data.bold.mask"
    what = "brain mask" if b.mask else "fMRIPrep brain mask of a run (data.bold.mask is null)"
    masks = []
    for p in files:
        require_file(key, p, what)
        masks.append(load_mask(p))
    first = masks[0]
    inter = first.data.copy()
    union = first.data.copy()
    for m in masks[1:]:
        if not _same_grid(m.shape, m.affine, first.shape, first.affine):
            raise DataError(f"brain mask {m.path} is not on the grid of {first.path} (shapes {m.shape} vs "
                            f"{first.shape} or affines differ); all runs must share one grid")
        inter &= m.data
        union |= m.data
    if len(masks) == 1:
        log.info("mask: %s (%d voxels)", first.path, int(inter.sum()))
        return first
    if not inter.any():
        raise DataError(f"the intersection of {len(masks)} brain masks is empty (first: {first.path})")
    source = ("the subjects' masks (data.bold.mask with {subject})" if b.mask else
              f"the fMRIPrep brain masks of {len(masks)} runs of {len(table.subjects)} subjects")
    log.info("mask: intersection of %s: %d voxels (union %d)", source, int(inter.sum()), int(union.sum()))
    return Mask(inter, first.affine, f"intersection of {len(masks)} masks ({first.path}, ...)")


def _roi_names(cfg):
    from .volumes import read_roi_names

    files = names_files(cfg)
    if not files:
        return None
    return read_roi_names(require_file("data.bold.roi_names", files[0], "ROI names file"))


def _group(cfg, unit_labels, names):
    """ROI id per unit and ROI names from atlas labels per unit, names {label: name} and data.bold.roi_groups."""
    from .atlas import group_labels, relabel

    of, roi_names = group_labels(names, cfg.data.bold.roi_groups)
    ids = relabel(unit_labels, of)
    present = set(np.unique(ids).tolist())
    empty = [n for k, n in roi_names.items() if k not in present]
    if empty:
        log.warning("ROIs with no unit in the data: %s", ", ".join(empty[:10]) + (" ..." if len(empty) > 10 else ""))
    return ids, roi_names


def _check_named(names, used, where, names_file):
    unnamed = sorted(set(int(k) for k in used) - set(names) - {0})
    if unnamed:
        raise DataError(f"{where}: label(s) {unnamed[:10]}{' ...' if len(unnamed) > 10 else ''} have no entry in "
                        f"{names_file}")


def _volume_space(cfg, table) -> StudySpace:
    from .volumes import load_rois

    b = cfg.data.bold
    mask = build_mask(cfg, table)
    files = {"mask": mask_files(cfg, table)}
    space = MapSpace.volume_of(mask.data, mask.affine)
    if not b.rois:
        return StudySpace(space, np.zeros(space.n, np.int32), {}, files, mask)
    atlases = atlas_files(cfg)
    names_file = names_files(cfg)[0] if b.roi_names else None
    if names_file is not None:
        require_file("data.bold.roi_names", names_file, "ROI names file")
    per = []
    for p in atlases:
        require_file("data.bold.rois", p, "ROI label image")
        per.append(load_rois(p, names_file, mask))
    labels, names = per[0]
    for p, (lab, _) in zip(atlases[1:], per[1:]):
        if not np.array_equal(lab, labels):
            log.warning("ROI labels of %s differ from %s in %d voxels; ROIs use %s", p, atlases[0],
                        int((lab != labels).sum()), atlases[0])
    ids, roi_names = _group(cfg, labels, names)
    files.update(atlas=atlases, roi_names=[names_file] if names_file else [])
    return StudySpace(space, ids, roi_names, files, mask)


def _parcel_space(cfg, table, n_columns) -> StudySpace:
    from .volumes import label_data, load_label_image

    b = cfg.data.bold
    if not b.rois:
        log.info("parcel data without data.bold.rois: no ROIs and no brain maps (set it to the parcellation)")
        return StudySpace(MapSpace("none", n_columns), np.zeros(n_columns, np.int32), {}, {})
    atlases = atlas_files(cfg)
    imgs = []
    for p in atlases:
        img = load_label_image(require_file("data.bold.rois", p, "parcellation image"))
        imgs.append((p, img, label_data(img, p)))
    p0, img0, data0 = imgs[0]
    space = MapSpace.parcels_of(data0, img0.affine, n_columns, where=f"parcellation {p0}")
    for p, _img, data in imgs[1:]:
        labs = np.unique(data[data != 0])
        if not np.array_equal(labs, space.parcel_labels):
            raise DataError(f"parcellation {p} has other labels than {p0} ({labs.size} vs "
                            f"{space.parcel_labels.size}); the subjects' parcels must be the same")
        if data.shape != data0.shape or not np.array_equal(data, data0):
            log.warning("parcellation %s differs from %s voxel-wise; maps are written into %s", p, p0, p0)
    names = _roi_names(cfg)
    if names is None:
        names = {int(k): str(int(k)) for k in space.parcel_labels}
    _check_named(names, space.parcel_labels, f"parcellation {p0}", (names_files(cfg) or ["the names file"])[0])
    ids, roi_names = _group(cfg, space.parcel_labels, names)
    log.info("parcels: %d columns mapped onto the %d labels of %s; %d ROIs", n_columns, space.parcel_labels.size,
             p0, len(roi_names))
    return StudySpace(space, ids, roi_names, {"atlas": atlases, "roi_names": names_files(cfg)})


def _cifti_space(cfg, table) -> StudySpace:
    from .cifti import brain_models, cifti_info, structure_labels

    first = table.items()[0][1].path
    labels, names = structure_labels(cifti_info(first))
    space = MapSpace("grayordinates", int(labels.shape[0]), axis=brain_models(first))
    return StudySpace(space, labels, names, {})


def build_space(cfg, table, n_columns: int | None = None) -> StudySpace:
    """The StudySpace of the config; ``n_columns`` is the parcel count of HDF5 data (read from a run)."""
    fmt = cfg.data.bold.format
    if fmt == "hdf5":
        return _parcel_space(cfg, table, n_columns)
    if fmt == "cifti":
        return _cifti_space(cfg, table)
    return _volume_space(cfg, table)
