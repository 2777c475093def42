"""Where every stage writes: the one home of the output file names (under ``output``) and of the files
``simulate`` writes under ``data.root``. The stages, the stage table (brainalign.stagetable), the pipeline and
the report import them from here; no other module spells a file name of another stage."""
from __future__ import annotations

import re
from pathlib import Path

# ---- under output -----------------------------------------------------------------------------------
FEATURES = "features.h5"                 # extract: the assembled file (virtual datasets over the shards)
FEATURE_SHARDS = "features"              # extract: one {episode}.h5 per episode
DESIGN = "design.h5"                     # align
BOLD = "bold.h5"                         # align
SCORES = "scores.h5"                     # fit
FIT_SHARDS = "fit_shards"                # fit: the shard files scores.h5's virtual datasets rest on
PERMUTATION = "permutation.h5"           # permutation
STATS = "stats.h5"                       # stats
ROI_STATS_CSV = "roi_stats.csv"          # stats
ROI_PARTITIONS_CSV = "roi_partitions.csv"   # stats, with fit.partitions
ROI_SCORES_CSV = "roi_scores.csv"        # stats, with a noise ceiling
MAPS = "maps"                            # fit: maps/sub-XX/; stats: maps/group/
REPORT = "report"                        # report: report/index.html, report/.complete
MLM = "mlm.h5"                           # mlm
MLM_CSV = "mlm.csv"                      # mlm
FINETUNE = "finetune"                    # finetune: finetune/metrics.json, finetune/model.pt
COMPLETE = ".complete"                   # completion marker of a directory output (report, data.root)

# ---- under data.root (simulate) ---------------------------------------------------------------------
TRUTH = "truth.json"
PRETRAINED = "model/tiny-pretrained.pt"
# where the demo's study mask and ROI atlas go when data.bold.mask / rois / roi_names are null (then align uses
# the per-run fMRIPrep-style brain masks written beside each BOLD run, and no ROIs)
ATLAS_PATHS = {"mask": "{root}/derivatives/atlas/space-MNI152NLin2009cAsym_desc-brain_mask.nii.gz",
               "rois": "{root}/derivatives/atlas/space-MNI152NLin2009cAsym_desc-rois_dseg.nii.gz",
               "roi_names": "{root}/derivatives/atlas/desc-rois_dseg.tsv"}
EPISODES_PER_SESSION = 2


def feature_shard(cfg, episode) -> Path:
    return cfg.out / FEATURE_SHARDS / f"{episode}.h5"


def report_dir(cfg) -> Path:
    return cfg.out / REPORT


def report_index(cfg) -> Path:
    return cfg.out / REPORT / "index.html"


def report_marker(cfg) -> Path:
    return cfg.out / REPORT / COMPLETE


def finetune_paths(cfg) -> tuple:
    """(work dir {output}/finetune, fine-tuned backbone path: a .pt file, for ``hf`` a directory)."""
    work = cfg.out / FINETUNE
    default = work / ("model" if cfg.model.backbone == "hf" else "model.pt")
    return work, (cfg.path(cfg.finetune.output) if cfg.finetune.output else default)


def finetune_metrics(cfg) -> Path:
    return cfg.out / FINETUNE / "metrics.json"


def safe_name(name: str) -> str:
    """A feature-set name as it appears in a file name."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name)


def subject_map(out, subject: str, feature_set: str, space) -> Path:
    """fit's map of one subject and feature set (``space``: brain.space.MapSpace, which names the file)."""
    return Path(out) / MAPS / f"sub-{subject}" / space.map_name(f"sub-{subject}_feat-{feature_set}_stat-r")


def group_maps(out, feature_sets, contrasts, ceiling: bool = False, space=None) -> list[Path]:
    """The group maps the stats stage writes (last axis / map = layer; NIfTI with NaN outside the mask or
    parcels, or CIFTI dscalar for grayordinates), then (with a noise ceiling) the subject-mean ceiling map.
    None for a space without maps (parcel data without an atlas)."""
    if space is not None and not space.has_maps:
        return []
    name = space.map_name if space is not None else (lambda stem: f"{stem}_bold.nii.gz")
    d = Path(out) / MAPS / "group"
    return ([d / name(f"group_feat-{safe_name(fs)}_stat-r") for fs in feature_sets]
            + [d / name(f"group_contrast-{c}_stat-{k}") for c in contrasts for k in ("t", "q")]
            + ([d / name("group_stat-ceiling")] if ceiling else []))


def session_of(index: int) -> str:
    """The BIDS session of the demo's ``index``-th episode."""
    return f"{index // EPISODES_PER_SESSION + 1:03d}"


def simulated_bold(cfg, subject: str, episode: str, index: int) -> Path:
    """Where simulate writes a subject's BOLD run of the ``index``-th episode."""
    from .brain.bids import bold_name

    b = cfg.data.bold
    ses = session_of(index)
    return (cfg.path(b.dir) / f"sub-{subject}" / f"ses-{ses}" / "func"
            / bold_name(subject, episode, b.space, b.desc, ses))
