"""THE table of stages: one entry per stage, in data-flow order. From it come the CLI's stage verbs
(brainalign.cli), the order a verb runs its stages and ``status`` lists them (brainalign.pipeline), each
stage's function (``run``: "module:function", imported by the pipeline only) and what its key covers
(mechanism: brainalign.stagekeys; the check at the top of a stage: brainalign.stagecheck). The stages import
this module through stagecheck, never the pipeline; this module imports no stage.

- ``verb``: the verb that runs a stage other than its own (permutation runs under ``stats``, before it, when
  ``stats.permutations`` > 0); ``help``: the verb's help text.

A stage's key covers exactly what its entry declares:

- ``reads``: config sections (``"align"``: every key under it, including keys added later) or single keys
  (``"data.bold.tr"``) or globs (``"stats.permutation*"``); ``ignores`` removes keys inside them that do
  not change the result (execution settings such as ``model.device``). ``data.root``, ``output`` and
  ``pipeline`` never count: input files are fingerprinted instead, so a moved data root or output keeps
  its keys. ``model.<backbone section>`` of a backbone other than ``model.backbone`` does not count either.
- ``derived``: values computed from several sections (e.g. the feature sets).
- ``upstream``: the stages whose outputs it reads; their keys enter its key.
- ``inputs``: the files it reads (``Input(role, path, key)``): the data files through brainalign.datafiles
  (the readers' own lookups; ``STAGE_STREAMS`` there says which stage reads which data streams), plus
  checkpoints and TVQA data.
- ``records``: the output files that carry the key (the first is the one downstream stages read);
  ``outputs``: every file that must exist for the output to be complete; ``check``: further integrity.

Adding a config key under a declared section needs nothing here; a stage that starts reading another
section or file adds it to its entry.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from . import paths
from .datafiles import STAGE_STREAMS
from .stagekeys import Input, select_values


def _always(cfg) -> bool:
    return True


@dataclass(frozen=True)
class StageSpec:
    name: str
    reads: tuple
    records: Callable
    ignores: tuple = ()
    derived: tuple = ()                       # ((name, fn(cfg)), ...) stored as "derived.<name>"
    upstream: object = ()                     # tuple of stage names, or fn(cfg) -> tuple
    inputs: Optional[Callable] = None         # fn(cfg) -> [Input]
    outputs: Optional[Callable] = None        # fn(cfg) -> [Path] that must exist (default: records)
    check: Optional[Callable] = None          # fn(cfg) -> [problem] (e.g. fit shards present)
    enabled: Callable = _always
    produces: Optional[Callable] = None       # fn(cfg) -> [Path] this stage writes that others read as inputs
    units: Optional[Callable] = None          # fn(cfg) -> [unit id]: a stage keyed per unit (extract)
    unit_inputs: Optional[Callable] = None    # fn(cfg, unit) -> [Input]
    unit_values: Optional[Callable] = None    # fn(cfg, unit) -> {name: value}
    unit_record: Optional[Callable] = None    # fn(cfg, unit) -> (file, dataset) carrying the unit's key
    run: str = ""                             # "module:function" of the stage function f(cfg, force) -> Path
    verb: str = ""                            # the CLI verb / pipeline entry that runs it (default: its name)
    help: str = ""                            # the verb's help (a stage run by another stage's verb has none)

    @property
    def verb_of(self) -> str:
        return self.verb or self.name

    def upstream_of(self, cfg) -> tuple:
        ups = self.upstream(cfg) if callable(self.upstream) else self.upstream
        return tuple(u for u in ups if STAGES[u].enabled(cfg))

    def values(self, cfg) -> dict:
        """The config values of the stage (a unit adds its ``unit_values``: brainalign.stagekeys.Assessor)."""
        vals = select_values(cfg, self.reads, self.ignores, skip=_other_backbone(cfg))
        for name, fn in self.derived:
            vals[f"derived.{name}"] = fn(cfg)
        return vals

    def outputs_of(self, cfg) -> list:
        return list(self.outputs(cfg) if self.outputs else self.records(cfg))


def _other_backbone(cfg):
    """Skip ``model.<name>.*`` when <name> is another registered backbone's section (e.g. model.tiny for hf)."""
    from dataclasses import fields, is_dataclass

    sections = {f.name for f in fields(cfg.model) if is_dataclass(getattr(cfg.model, f.name))}
    if not sections - {cfg.model.backbone}:
        return None
    from .models.registry import available_backbones

    other = (sections & set(available_backbones())) - {cfg.model.backbone}
    return lambda key: key.split(".")[0] == "model" and key.split(".")[1] in other


# ---- input files ------------------------------------------------------------------------------------

def _checkpoint(cfg, path, role="checkpoint", key="model.checkpoint"):
    if not path:
        return []
    return [Input(role, cfg.path(path), key, kind="tree", optional=cfg.model.backbone == "hf")]


def data_inputs(cfg, streams, episodes=None) -> list:
    """The data files of ``streams`` (brainalign.datafiles: the readers' own lookups) as Inputs."""
    from .datafiles import data_files

    out, seen = [], set()
    for f in data_files(cfg, streams, episodes=episodes):
        role = f.role or f"{f.stream} {f.path.name}"
        if role in seen:                      # e.g. per-subject atlases of the same file name
            role = f"{f.stream} {f.path}"
        seen.add(role)
        out.append(Input(role, f.path, f.key))
    return out


def _split_unit(unit):
    episode, fs = unit.split("/", 1)
    condition, _, variant = fs.partition("@")
    return episode, condition, variant


def _extract_unit_inputs(cfg, unit) -> list:
    episode, _, variant = _split_unit(unit)
    if variant:
        i = next(i for i, v in enumerate(cfg.model.variants) if v.name == variant)
        ckpt = _checkpoint(cfg, cfg.model.variants[i].checkpoint, f"checkpoint of variant {variant}",
                           f"model.variants[{i}].checkpoint")
    else:
        ckpt = _checkpoint(cfg, cfg.model.checkpoint)
    return data_inputs(cfg, STAGE_STREAMS["extract"], episodes=[episode]) + ckpt


def _mlm_inputs(cfg) -> list:
    return data_inputs(cfg, STAGE_STREAMS["mlm"]) + _checkpoint(cfg, cfg.model.checkpoint)


def _report_inputs(cfg) -> list:
    """truth.json of simulated data (the planted-vs-found section), when there is one."""
    return [Input("planted truth", Path(cfg.data.root) / paths.TRUTH, "data.root", optional=True)]


def _tvqa_inputs(cfg) -> list:
    root = cfg.path(cfg.finetune.data)
    return ([Input(f"tvqa {split}", root / f"tvqa_{split}.jsonl", "finetune.data") for split in ("train", "val")]
            + [Input("tvqa frames", root / "frames", "finetune.data", kind="listing"),
               Input("tvqa subtitles", root / "subtitles", "finetune.data", kind="tree")])


def _finetune_inputs(cfg) -> list:
    return _tvqa_inputs(cfg) + _checkpoint(cfg, cfg.model.checkpoint)


# ---- outputs ----------------------------------------------------------------------------------------

def _simulate_outputs(cfg) -> list:
    """Every file simulate writes (its stage is current only while they all exist)."""
    from .brain.bids import brain_mask_path

    b, st = cfg.data.bold, cfg.data.stimuli
    root = Path(cfg.data.root)
    out = [root / paths.COMPLETE, root / paths.TRUTH] + [cfg.path(getattr(b, k) or v)
                                                         for k, v in paths.ATLAS_PATHS.items()]
    if cfg.simulate.pretrain_steps > 0:           # the pretrained demo model (what model.checkpoint then loads)
        out.append(root / paths.PRETRAINED)
    for i, ep in enumerate(cfg.data.episodes):
        out += [cfg.path(t, episode=ep) for t in (st.video, st.audio, st.transcript) if t]
        for s in b.subjects:
            p = paths.simulated_bold(cfg, s, ep, i)
            out += [p, brain_mask_path(p)]
    return out


def _finetune_model(cfg) -> Path:
    return paths.finetune_paths(cfg)[1]


def _fit_outputs(cfg) -> list:
    """scores.h5 and (fit.write_maps) every subject's maps in the space scores.h5 records."""
    path = cfg.out / paths.SCORES
    if not cfg.fit.write_maps or not path.is_file():
        return [path]
    import h5py

    from .brain.space import MapSpace

    try:
        with h5py.File(path, "r") as f:
            space = MapSpace.from_h5(f, path)
    except Exception:             # unreadable / incomplete: output_problems names the file
        return [path]
    if not space.has_maps:
        return [path]
    return [path] + [paths.subject_map(cfg.out, s, fs, space) for s in cfg.data.bold.subjects
                     for fs in cfg.feature_sets]


def _fit_check(cfg) -> list:
    """scores.h5's virtual datasets (/r, /alpha, /partition/...) rest on shard files: each must exist and be
    complete."""
    import h5py

    from .h5io import is_complete
    from .sharding.shards import virtual_files

    path = cfg.out / paths.SCORES
    names = set()
    try:
        with h5py.File(path, "r") as f:
            f.visititems(lambda _, obj: names.update(virtual_files(obj)) if isinstance(obj, h5py.Dataset) else None)
    except (OSError, KeyError):
        return [f"{path} is unreadable"]
    bad = sorted(n for n in names if not is_complete(path.parent / n))
    return [f"{len(bad)} shard file(s) of {path} are missing or incomplete (e.g. {bad[0]})"] if bad else []


def _stats_outputs(cfg) -> list:
    """stats.h5, roi_stats.csv and the group maps of the feature sets and contrasts stats.h5 records."""
    import h5py

    from .brain.space import MapSpace
    from .h5io import read_str_attr

    path = cfg.out / paths.STATS
    out = [path, cfg.out / paths.ROI_STATS_CSV]
    try:
        with h5py.File(path, "r") as g:
            fs, cs, ceil = read_str_attr(g, "feature_sets"), read_str_attr(g, "contrasts"), "noise_ceiling" in g
            if "partition" in g:
                out.append(cfg.out / paths.ROI_PARTITIONS_CSV)
        with h5py.File(cfg.out / paths.SCORES, "r") as f:
            space = MapSpace.from_h5(f, cfg.out / paths.SCORES)
    except Exception:             # unreadable / incomplete: output_problems names the file
        return out
    return out + paths.group_maps(cfg.out, fs, cs, ceil, space) + ([cfg.out / paths.ROI_SCORES_CSV] if ceil else [])


# ---- the table --------------------------------------------------------------------------------------

_MODEL_EXEC = ("model.device", "model.batch_size")              # where and how fast, not what
_MODEL_FILES = ("model.checkpoint", "model.variants")           # fingerprinted as input files / units
_ALIGN_ONLY_WINDOWS = ("windows.resample", "windows.resample_lobes")

STAGES: dict = {s.name: s for s in (
    StageSpec("simulate",
              reads=("data.episodes", "data.stimuli", "data.bold.format", "data.bold.dir", "data.bold.subjects",
                   "data.bold.space", "data.bold.desc", "data.bold.tr", "data.bold.mask", "data.bold.rois",
                   "data.bold.roi_names", "simulate", "windows", "model", "finetune.data", "finetune.n_train",
                   "finetune.n_val"),
              ignores=_MODEL_EXEC + ("model.conditions", "model.variants", "model.checkpoint", "model.layers",
                                     "model.precision"),     # it reads no model: it may pretrain the tiny one
              records=lambda cfg: [Path(cfg.data.root) / paths.COMPLETE],
              outputs=_simulate_outputs,
              produces=lambda cfg: [Path(cfg.data.root)] + _simulate_outputs(cfg),
              run="brainalign.simulate:simulate",
              help="write the embedded demo dataset (episodes as mp4+wav+TSV transcripts, BIDS/fMRIPrep-named "
                   "NIfTI BOLD with planted ROIs, mask, ROI atlas, truth.json) under data.root"),
    StageSpec("finetune",
              reads=("finetune", "model", "windows.frames", "windows.image_size"),
              ignores=("finetune.output", "finetune.n_train", "finetune.n_val", "finetune.device",
                       "finetune.num_workers", "model.conditions", "model.layers", "model.precision")
              + _MODEL_EXEC + _MODEL_FILES,
              derived=(("inputs", lambda cfg: {"frames": True, "subtitles": True}),),  # run_finetune ablations
              inputs=_finetune_inputs,
              records=lambda cfg: [paths.finetune_metrics(cfg)],
              outputs=lambda cfg: [paths.finetune_metrics(cfg), _finetune_model(cfg)],
              produces=lambda cfg: [_finetune_model(cfg)],
              run="brainalign.finetune:run_finetune",
              help="fine-tune the backbone on TVQA-format multiple-choice QA (finetune.data: tvqa_train.jsonl, "
                   "tvqa_val.jsonl, frames/, subtitles/); DDP under torchrun/srun, resumable per epoch "
                   "-> OUTPUT/finetune/model.pt (load it with model.checkpoint) + metrics.json"),
    StageSpec("extract",
              reads=("model", "windows", "data.stimuli", "data.bold.tr"),
              ignores=_MODEL_EXEC + _MODEL_FILES + ("model.conditions",) + _ALIGN_ONLY_WINDOWS,
              records=lambda cfg: [cfg.out / paths.FEATURES],
              units=lambda cfg: [f"{ep}/{fs}" for ep in cfg.data.episodes for fs in cfg.all_conditions],
              unit_inputs=_extract_unit_inputs,
              unit_values=lambda cfg, u: {"unit.condition": _split_unit(u)[1],
                                          "unit.variant": _split_unit(u)[2] or None},
              unit_record=lambda cfg, u: (paths.feature_shard(cfg, _split_unit(u)[0]), u.split("/", 1)[1]),
              run="brainalign.extract:run_extract",
              help="run the backbone on every episode's TR windows under each input condition; every layer's "
                   "pooled hidden states -> OUTPUT/features.h5 (one shard per episode, resumable)"),
    StageSpec("align",
              reads=("align", "data.episodes", "data.missing_runs", "data.bold", "windows.step") + _ALIGN_ONLY_WINDOWS,
              derived=(("conditions", lambda cfg: cfg.all_conditions),),
              upstream=("extract",),
              inputs=lambda cfg: data_inputs(cfg, STAGE_STREAMS["align"]),
              records=lambda cfg: [cfg.out / paths.DESIGN, cfg.out / paths.BOLD],
              run="brainalign.align:run_align",
              help="features onto the TR grid: per-run z-scoring, residual features (fitted on training runs "
                   "only), FIR delays, trimming -> OUTPUT/design.h5; masked, z-scored BOLD -> OUTPUT/bold.h5"),
    StageSpec("fit",
              reads=("fit",),
              ignores=("fit.backend", "fit.chunk_voxels", "fit.write_maps"),   # same numbers; maps are outputs
              derived=(("feature_sets", lambda cfg: cfg.feature_sets),),
              upstream=("align",),
              records=lambda cfg: [cfg.out / paths.SCORES],
              outputs=_fit_outputs,
              check=_fit_check,
              run="brainalign.fit:run_fit",
              help="voxel-wise ridge with nested cross-validation (outer folds = runs, per-voxel alpha from inner "
                   "folds); held-out Pearson r per subject/feature set/layer/fold -> OUTPUT/scores.h5 + NIfTI maps"),
    StageSpec("permutation",
              reads=("stats.permutations", "stats.permutation_*", "stats.q", "stats.contrasts", "stats.fdr_family"),
              upstream=("fit", "align"),
              records=lambda cfg: [cfg.out / paths.PERMUTATION],
              enabled=lambda cfg: int(cfg.stats.permutations or 0) > 0,
              run="brainalign.permutation:run_permutation",
              verb="stats"),
    StageSpec("stats",
              reads=("stats",),
              ignores=("stats.permutations", "stats.permutation_*"),
              upstream=lambda cfg: ("fit",) + (("align",) if cfg.stats.noise_ceiling in ("auto", "isc") else ()),
              inputs=lambda cfg: data_inputs(cfg, STAGE_STREAMS["stats"]),
              records=lambda cfg: [cfg.out / paths.STATS],
              outputs=_stats_outputs,
              run="brainalign.stats:run_stats",
              help="group statistics: per-ROI and per-voxel contrasts across subjects (one-sample t on Fisher-z "
                   "differences, Benjamini-Hochberg FDR) -> OUTPUT/stats.h5, roi_stats.csv, group maps"),
    StageSpec("mlm",
              reads=("mlm", "model", "windows", "data.episodes", "data.stimuli", "data.bold.tr"),
              ignores=_MODEL_EXEC + _MODEL_FILES + ("model.conditions", "model.layers") + _ALIGN_ONLY_WINDOWS,
              inputs=_mlm_inputs,
              records=lambda cfg: [cfg.out / paths.MLM],
              outputs=lambda cfg: [cfg.out / paths.MLM, cfg.out / paths.MLM_CSV],
              run="brainalign.mlm:run_mlm",
              help="masked-word prediction per input condition (mlm.conditions, default joint vs no_vision): top-1/top-5 "
                   "accuracy and loss per episode and overall with bootstrap 95-percent CIs and a paired joint - other "
                   "difference -> OUTPUT/mlm.h5, mlm.csv"),
    StageSpec("report",
              reads=("report", "name"),
              upstream=lambda cfg: ("fit", "stats", "permutation") + (("mlm",) if "mlm" in cfg.pipeline else ()),
              inputs=_report_inputs,
              records=lambda cfg: [paths.report_marker(cfg)],
              outputs=lambda cfg: [paths.report_marker(cfg), paths.report_index(cfg)],
              run="brainalign.report:run_report",
              help="figures (ROI bars with significance, layer curves, brain slices) and one HTML page "
                   "-> OUTPUT/report/index.html"),
)}

#: the stages in data-flow order: the order `status` lists them and a verb runs its stages in
ORDER = tuple(STAGES)
#: the stage verbs of the CLI and of a config's ``pipeline`` (config.STAGES is this list: tests/test_stagekeys.py)
VERBS = tuple(name for name, spec in STAGES.items() if spec.verb_of == name)


def stages_of(cfg, verb: str) -> list:
    """The specs a verb runs, in order: its own stage, after the enabled stages it also runs (``stats``:
    permutation, when ``stats.permutations`` > 0)."""
    return [spec for spec in STAGES.values()
            if spec.verb_of == verb and (spec.name == verb or spec.enabled(cfg))]
