"""The experiment config: a typed schema, YAML loading (safe_load only) and validation.

Every problem is reported as one ConfigError line that names the key path, e.g.
``config configs/x.yaml: fit.alphas[2]: expected a number, got 'ten'``.
Relative paths in the config are relative to the current working directory. Path templates may use the
placeholders of ``TEMPLATE_FIELDS`` (which ones depends on the key; see ``TEMPLATE_KEYS`` and the README):
``{root}`` (data.root), ``{subject}``, ``{episode}`` (a run as listed in data.episodes) and what is derived from
it: ``{task}`` (the run without a ``_run-N`` suffix), ``{run}`` (N), ``{season}`` (Friends season number, e.g. 1
for s01e02a; ``{season:02d}`` gives 01) and ``{movie}`` (the task without its trailing segment number, e.g.
figures for figures01).
"""
from __future__ import annotations

import dataclasses
import operator
import re
import string
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import yaml

from .errors import ConfigError

CONDITIONS = ("joint", "no_vision", "no_language", "no_audio", "vision_only", "language_only")


@dataclass
class StimuliConfig:
    video: str = "{root}/stimuli/{episode}.mp4"          # mp4/mkv with or without an audio track
    audio: Optional[str] = "{root}/stimuli/{episode}.wav"  # null: the video's track; a missing file falls back to it
    transcript: str = "{root}/stimuli/{episode}.tsv"     # .tsv (word onset duration | Algonauts per-TR) | .json | .srt
    transcript_format: Literal["auto", "words", "algonauts", "json", "srt"] = "auto"   # auto: by extension/header


@dataclass
class RoiGroupConfig:
    name: str = ""                         # the ROI's name in tables and figures
    labels: list[str] = field(default_factory=list)   # atlas label names (fnmatch patterns) or label numbers


@dataclass
class RescanConfig:
    subject: str = ""                      # a run scanned in several sessions: which session to use
    run: str = ""
    session: str = ""                      # without ses-


@dataclass
class BoldConfig:
    format: Literal["bids", "hdf5", "cifti"] = "bids"
    dir: str = "{root}/derivatives/fmriprep"              # fMRIPrep derivatives (BIDS) root, or an HDF5 file
    subjects: list[str] = field(default_factory=lambda: ["01", "02", "03", "04", "05"])
    space: str = "MNI152NLin2009cAsym"
    desc: str = "preproc"
    tr: float = 1.49
    mask: Optional[str] = None             # null: intersection of the runs' fMRIPrep brain masks; may use {subject}
    rois: Optional[str] = None             # ROI/parcel label image (dseg NIfTI); may use {subject}
    roi_names: Optional[str] = None        # BIDS dseg TSV, colour LUT (Schaefer *_order.txt) or labels list
    roi_groups: Optional[typing.Union[Literal["networks"], list[RoiGroupConfig]]] = None   # null: one ROI per label
    confounds: Optional[typing.Union[Literal["minimal"], list[str]]] = None   # see brain/confounds.py
    rescans: Literal["last", "first", "error"] = "last"   # a run scanned in several sessions (QC re-scans)
    rescan_sessions: list[RescanConfig] = field(default_factory=list)   # per-run session choice, overrides rescans


@dataclass
class DataConfig:
    root: str = "data/demo"
    episodes: list[str] = field(default_factory=lambda: ["s01e01a", "s01e01b", "s01e02a", "s01e02b"])
    stimuli: StimuliConfig = field(default_factory=StimuliConfig)
    bold: BoldConfig = field(default_factory=BoldConfig)
    missing_runs: Literal["skip", "error"] = "skip"   # a run some subject lacks: fit that subject without it


@dataclass
class SimulateConfig:
    seed: int = 0
    trs_per_run: int = 100                 # TRs per episode run (TR from data.bold.tr)
    grid: list[int] = field(default_factory=lambda: [14, 14, 10])
    fps: float = 8.0
    frame_size: int = 64
    audio_rate: int = 16000
    roi_voxels: int = 40                   # voxels per planted/null ROI
    n_null_rois: int = 2
    effect_r: list[float] = field(default_factory=lambda: [0.3, 0.5])   # planted noise ceiling range per voxel
    subject_share: float = 0.25            # subject-specific response variance / shared response variance
    pretrain_steps: int = 0                # masked-word training steps of the tiny model (0: none)


@dataclass
class TinyModelConfig:
    hidden: int = 64
    layers: int = 4
    heads: int = 4
    vocab: int = 4096
    patch: int = 16
    n_mels: int = 32


@dataclass
class MerlotReserveConfig:
    # where the 5-s segment grid sits around a TR window (models/merlot/layout.py, README "MERLOT Reserve"):
    # centred: the window's frame is shown during it and its audio enters (two passes); causal: before issue 22
    layout: Literal["centred", "causal"] = "centred"


@dataclass
class VariantConfig:
    name: str = ""                         # feature sets of this variant are named CONDITION@NAME
    checkpoint: str = ""                   # e.g. the fine-tuned model.pt


@dataclass
class ModelConfig:
    backbone: str = "tiny"
    checkpoint: Optional[str] = None
    conditions: list[str] = field(default_factory=lambda: ["joint", "no_vision", "no_language"])
    layers: Optional[list[int]] = None     # null: every layer
    device: str = "cpu"
    precision: Literal["float32", "bfloat16", "float16"] = "float32"
    batch_size: int = 16
    seed: int = 0
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    merlot_reserve: MerlotReserveConfig = field(default_factory=MerlotReserveConfig)
    variants: list[VariantConfig] = field(default_factory=list)   # more checkpoints of the same backbone


@dataclass
class WindowsConfig:
    context: Optional[float] = None        # seconds of stimulus ending at each TR's end (null: one TR)
    frames: int = 2                        # frames sampled evenly inside each window
    image_size: int = 64                   # frames are resized to image_size x image_size
    audio_rate: int = 16000                # audio is resampled to this rate
    step: Optional[float] = None           # seconds between window ends (null: one TR); else align resamples
    resample: Literal["lanczos", "average"] = "lanczos"   # window features -> TR grid when step != TR
    resample_lobes: int = 3                # Lanczos window (lobes)


@dataclass
class ResidualConfig:
    name: str = ""
    target: str = "joint"
    predictors: list[str] = field(default_factory=list)


@dataclass
class AlignConfig:
    delays: Optional[list[float]] = None   # FIR delays (null: about 1.5-9 s at the data's TR, align.default_delays)
    delay_unit: Literal["trs", "seconds"] = "trs"   # unit of align.delays (seconds: rounded to whole TRs)
    zscore: bool = True
    trim: int = 2                          # TRs dropped at each run start and end
    max_tr_mismatch: int = 2               # features vs BOLD TR counts may differ by this much (cut to the shorter)
    residuals: list[ResidualConfig] = field(default_factory=list)
    residual_alphas: list[float] = field(   # penalties of the residual regression, chosen by CV: 0.1, 0.3 ... 1e6
        default_factory=lambda: [float(f"{m}e{e}") for e in range(-1, 6) for m in (1, 3)] + [1e6])
    outer_folds: Optional[int] = None      # group consecutive runs into this many CV folds (null: one per run)


@dataclass
class PartitionConfig:
    name: str = ""
    bands: list[str] = field(default_factory=list)   # 2-4 feature sets (conditions or residuals) stacked
    n_iter: int = 20                       # band-weight vectors of the banded ridge random search


@dataclass
class FitConfig:
    alphas: list[float] = field(default_factory=lambda: [float(a) for a in (10.0 ** i for i in range(0, 7))])
    inner_folds: Literal["runs"] = "runs"  # inner CV leaves one training run out
    backend: Literal["numpy", "torch", "cupy", "auto"] = "numpy"
    chunk_voxels: int = 4096
    feature_sets: Optional[list[str]] = None   # null: every condition and residual
    write_maps: bool = True
    partitions: list[PartitionConfig] = field(default_factory=list)   # variance partitioning (partition.py)


@dataclass
class ContrastConfig:
    name: str = ""
    a: str = ""
    b: Optional[str] = None                # null: a vs zero


@dataclass
class StatsConfig:
    q: float = 0.05
    fdr_family: Literal["layer", "contrast", "all"] = "contrast"   # what one BH correction spans (fdr.py)
    contrasts: list[ContrastConfig] = field(default_factory=list)
    noise_ceiling: Literal["auto", "isc", "repeats", "none"] = "auto"
    ceiling_floor: float = 0.1             # r / ceiling only where the ceiling's 95 % interval is above this
    noise_ceiling_repeats: Optional[str] = None   # per-subject HDF5 ({subject}) with /repeats (n_rep, n_trs, n_vox)
    noise_ceiling_n_avg: int = 1
    permutations: int = 0                  # 0 = off; > 0: per-subject circular-shift permutation tests that refit the folds
    permutation_layer: Optional[int] = None
    permutation_feature_sets: Optional[list[str]] = None
    permutation_min_shift: int = 0         # TRs; 0: lags drawn from all 0..n-1 (valid); > 0 leaves lags near 0 out
    permutation_seed: int = 0


@dataclass
class FinetuneConfig:
    data: str = "{root}/tvqa"              # dir with tvqa_train.jsonl, tvqa_val.jsonl, frames/, subtitles/
    output: Optional[str] = None           # fine-tuned checkpoint (null: OUTPUT/finetune/model.pt)
    epochs: int = 4
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    seed: int = 0
    device: str = "cpu"
    precision: Literal["float32", "bfloat16", "float16"] = "float32"
    n_train: int = 400                     # synthetic TVQA set written by `brainalign simulate` (demo)
    n_val: int = 100
    fps: float = 3.0                       # rate of frames/{vid_name}/ (TVQA: 3); file k is shown from (k-1)/fps s
    max_words: int = 96                    # words per answer sequence (subtitle words are cut first)
    num_workers: int = 0                   # DataLoader worker processes per rank


@dataclass
class MlmConfig:
    conditions: list[str] = field(default_factory=lambda: ["joint", "no_vision"])
    mask_fraction: float = 0.15            # share of transcript words masked per window
    bootstrap: int = 1000                  # bootstrap resamples for the confidence intervals
    seed: int = 0
    word_class_column: Optional[str] = None   # TSV transcript column classifying words (e.g. word_class)


@dataclass
class ReportConfig:
    layer: Optional[int] = None            # report layer (null: the last layer, fixed in advance)
    title: str = "brainalign report"
    max_rois: int = 12                     # ROIs in the bar/curve figures (more: the top ones by mean r)


STAGES = ("simulate", "finetune", "extract", "align", "fit", "stats", "mlm", "report")   # report reads mlm.csv


@dataclass(eq=False)
class PipelineConfig:
    """``pipeline: [extract, align, ...]`` (short form) or ``pipeline: {stages: [...], fingerprint: content}``.

    Behaves like the list of stages (iteration, ``in``, indexing, ``==`` with a list), so ``cfg.pipeline``
    reads as before. ``fingerprint`` says how stage keys fingerprint input files (brainalign.stagekeys):
    ``mtime`` (size + mtime_ns, cheap) or ``content`` (SHA-256 of the bytes; ``--verify`` on the CLI).
    """

    stages: list[str] = field(default_factory=lambda: ["extract", "align", "fit", "stats", "report"])
    fingerprint: Literal["mtime", "content"] = "mtime"
    short: bool = field(default=False, metadata={"internal": True})   # given as a plain list
    allow_stale: bool = field(default=False, metadata={"internal": True})   # --allow-stale (brainalign.stagecheck)

    def __iter__(self):
        return iter(self.stages)

    def __len__(self):
        return len(self.stages)

    def __getitem__(self, i):
        return self.stages[i]

    def __contains__(self, stage):
        return stage in self.stages

    def __eq__(self, other):
        if isinstance(other, (list, tuple)):
            return list(self.stages) == list(other)
        if isinstance(other, PipelineConfig):
            return (self.stages, self.fingerprint) == (other.stages, other.fingerprint)
        return NotImplemented

    def __repr__(self):
        return f"PipelineConfig(stages={self.stages!r}, fingerprint={self.fingerprint!r})"


@dataclass
class Config:
    name: str = "experiment"
    output: str = "results/experiment"
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    data: DataConfig = field(default_factory=DataConfig)
    simulate: SimulateConfig = field(default_factory=SimulateConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    windows: WindowsConfig = field(default_factory=WindowsConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    mlm: MlmConfig = field(default_factory=MlmConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    # not part of the schema: filled by load_config
    source: str = field(default="", metadata={"internal": True})
    text: str = field(default="", metadata={"internal": True})

    # ---- derived names -------------------------------------------------------------------------
    @property
    def out(self) -> Path:
        return Path(self.output)

    @property
    def all_conditions(self) -> list[str]:
        """Extracted feature sets: every condition, then CONDITION@VARIANT for each model variant."""
        return list(self.model.conditions) + [f"{c}@{v.name}" for v in self.model.variants
                                              for c in self.model.conditions]

    @property
    def feature_sets(self) -> list[str]:
        names = self.all_conditions + [r.name for r in self.align.residuals]
        return list(self.fit.feature_sets) if self.fit.feature_sets else names

    def path(self, template: str, key: str = "", **kw) -> Path:
        """The path a template resolves to; ``key`` (the config key) names the culprit in errors."""
        return Path(expand(template, key, root=self.data.root, **kw))


# ---- path templates ------------------------------------------------------------------------------

TEMPLATE_FIELDS = ("root", "subject", "episode", "task", "run", "season", "movie")
_RUN_FIELDS = ("root", "episode", "task", "run", "season", "movie")
_SUBJECT_FIELDS = ("root", "subject")
TEMPLATE_KEYS = {                          # config key -> placeholders it may use
    "data.stimuli.video": _RUN_FIELDS, "data.stimuli.audio": _RUN_FIELDS,
    "data.stimuli.transcript": _RUN_FIELDS, "data.bold.dir": _SUBJECT_FIELDS,
    "data.bold.mask": _SUBJECT_FIELDS, "data.bold.rois": _SUBJECT_FIELDS, "data.bold.roi_names": _SUBJECT_FIELDS,
    "stats.noise_ceiling_repeats": _SUBJECT_FIELDS, "finetune.data": ("root",), "finetune.output": ("root",),
}
_RUN_SUFFIX = re.compile(r"^(?P<task>.+?)_run-(?P<run>[0-9A-Za-z]+)$")
_SEASON = re.compile(r"^s(?P<season>\d+)e\d+", re.IGNORECASE)
_MOVIE = re.compile(r"^(?P<movie>.*?[A-Za-z_-])\d+$")


def run_fields(episode: str) -> dict:
    """What a run name yields for templates: task and run (``figures01_run-2`` -> figures01, 2), season
    (``s01e02a`` -> 1, an int) and movie (``figures01`` -> figures); absent keys cannot be derived."""
    out = {"episode": episode}
    m = _RUN_SUFFIX.match(episode)
    out["task"], out["run"] = (m["task"], m["run"]) if m else (episode, "")
    if (m := _SEASON.match(out["task"])):
        out["season"] = int(m["season"])
    if (m := _MOVIE.match(out["task"])):
        out["movie"] = m["movie"]
    return out


class _Fields(dict):
    def __init__(self, template, key, **kw):
        super().__init__(kw)
        self.template, self.key = template, key
        if kw.get("episode") is not None and kw["episode"] != "*":
            super().update({k: v for k, v in run_fields(str(kw["episode"])).items() if k not in kw})

    def __missing__(self, name):
        where = f"{self.key}: " if self.key else ""
        if name in ("season", "movie") and "episode" in self:
            what = "a Friends run name like s01e02a" if name == "season" else "a run name ending in digits (figures01)"
            raise ConfigError(f"{where}{{{name}}} in {self.template!r} needs {what}; run {self['episode']!r} has none")
        if self.get("episode") == "*" and name in _RUN_FIELDS:
            return "*"
        raise ConfigError(f"{where}placeholder {{{name}}} in {self.template!r} cannot be filled here "
                          f"(this key knows: {', '.join(sorted(k for k in self if isinstance(k, str)))})")


def expand(template: str, key: str = "", **kw) -> str:
    """``template`` with its placeholders filled (see TEMPLATE_FIELDS); one ConfigError line naming ``key``."""
    try:
        return template.format_map(_Fields(template, key, **kw))
    except (ValueError, IndexError, AttributeError) as e:
        raise ConfigError(f"{key + ': ' if key else ''}bad path template {template!r} ({e})") from None


def template_fields(template: str, key: str) -> set:
    """The placeholder names of ``template``; ConfigError naming ``key`` on a syntax error."""
    try:
        names = {name.split(".")[0].split("[")[0] for _, name, _, _ in string.Formatter().parse(template) if name}
    except ValueError as e:
        raise ConfigError(f"{key}: bad path template {template!r} ({e}; write literal braces as {{{{ }}}})") from None
    if any(not n or n.isdigit() for n in names):
        raise ConfigError(f"{key}: bad path template {template!r} (placeholders need a name, e.g. {{root}})")
    return names


# keys that were removed or renamed: the error for an old config says what replaced them
RENAMED = {"align.residual_alpha": "replaced by align.residual_alphas, a grid the penalty is chosen from by "
                                   "cross-validation"}


# ---- generic validation --------------------------------------------------------------------------

def _typename(tp) -> str:
    origin = typing.get_origin(tp)
    if tp is float:
        return "a number"
    if tp is int:
        return "an integer"
    if tp is bool:
        return "true/false"
    if tp is str:
        return "a string"
    if origin is list:
        return f"a list ({_typename(typing.get_args(tp)[0])} each)"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return str(tp)


def _convert(value, tp, key):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        for a in args[:-1]:
            try:
                return _convert(value, a, key)
            except ConfigError:
                continue
        try:
            return _convert(value, args[-1], key)
        except ConfigError:
            if len(args) == 1:
                raise
            raise ConfigError(f"{key}: expected {' or '.join(_typename(a) for a in args)}, got {value!r}") from None
    if value is None:
        raise ConfigError(f"{key}: expected {_typename(tp)}, got null")
    if tp is PipelineConfig and isinstance(value, list):      # the short form: the list of stages
        return PipelineConfig(stages=_convert(value, list[str], key), short=True)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected {_typename(tp)}, got {type(value).__name__} {value!r}")
        (item,) = typing.get_args(tp)
        return [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: expected {_typename(tp)}, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise TypeError(f"unsupported schema type {tp} at {key}")  # pragma: no cover


def _build(cls, data: dict, prefix: str):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in fields:
            hint = f"; {RENAMED[key]}" if key in RENAMED else ""
            raise ConfigError(f"{key}: unknown key (known here: {', '.join(sorted(fields))}){hint}")
        kwargs[k] = _convert(v, hints[k], key)
    return cls(**kwargs)


def _check_partitions(cfg, err):
    """Config semantics of ``fit.partitions`` (``err(key, msg)`` raises the ConfigError)."""
    names = set(cfg.all_conditions) | {r.name for r in cfg.align.residuals}
    seen = set()
    for i, p in enumerate(cfg.fit.partitions):
        key = f"fit.partitions[{i}]"
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$", p.name or ""):
            err(f"{key}.name", f"{p.name!r} must be letters, digits, '_', '.', '+' or '-' (it names HDF5 groups)")
        if p.name in seen:
            err(f"{key}.name", f"duplicate partition name {p.name!r}")
        seen.add(p.name)
        if not 2 <= len(p.bands) <= 4:
            err(f"{key}.bands", f"needs 2 to 4 feature sets (2^m - 1 models are fitted), got {len(p.bands)}")
        if len(set(p.bands)) != len(p.bands):
            err(f"{key}.bands", "duplicate feature set")
        for j, b in enumerate(p.bands):
            if b not in names:
                err(f"{key}.bands[{j}]", f"{b!r} is neither a condition nor a residual")
        if p.n_iter < 1:
            err(f"{key}.n_iter", f"must be >= 1, got {p.n_iter}")


def _check_semantics(cfg: Config):
    def err(key, msg):
        raise ConfigError(f"{key}: {msg}")

    for i, c in enumerate(cfg.model.conditions):
        if c not in CONDITIONS:
            err(f"model.conditions[{i}]", f"unknown condition {c!r} (known: {', '.join(CONDITIONS)})")
    if len(set(cfg.model.conditions)) != len(cfg.model.conditions):
        err("model.conditions", "duplicate condition")
    for i, v in enumerate(cfg.model.variants):
        if not v.name or not all(ch.isalnum() or ch in "_-" for ch in v.name):
            err(f"model.variants[{i}].name", f"needs letters, digits, '_' or '-', got {v.name!r}")
        if not v.checkpoint:
            err(f"model.variants[{i}].checkpoint", "needs a checkpoint path")
    if len({v.name for v in cfg.model.variants}) != len(cfg.model.variants):
        err("model.variants", "duplicate variant name")
    names = set(cfg.all_conditions)
    for i, r in enumerate(cfg.align.residuals):
        key = f"align.residuals[{i}]"
        if not r.name:
            err(f"{key}.name", "a residual needs a name")
        if r.name in names:
            err(f"{key}.name", f"{r.name!r} is already a condition or residual name")
        if r.target not in cfg.all_conditions:
            err(f"{key}.target", f"{r.target!r} is not in model.conditions (or CONDITION@VARIANT)")
        if not r.predictors:
            err(f"{key}.predictors", "needs at least one condition")
        for j, p in enumerate(r.predictors):
            if p not in cfg.all_conditions:
                err(f"{key}.predictors[{j}]", f"{p!r} is not in model.conditions")
        names.add(r.name)
    for i, fs in enumerate(cfg.fit.feature_sets or []):
        if fs not in names:
            err(f"fit.feature_sets[{i}]", f"{fs!r} is neither a condition nor a residual")
    _check_partitions(cfg, err)
    for i, c in enumerate(cfg.stats.contrasts):
        key = f"stats.contrasts[{i}]"
        if not c.name:
            err(f"{key}.name", "a contrast needs a name")
        for side in ("a", "b"):
            v = getattr(c, side)
            if v is not None and v not in cfg.feature_sets:
                err(f"{key}.{side}", f"{v!r} is not a fitted feature set ({', '.join(cfg.feature_sets)})")
    for i, st in enumerate(cfg.pipeline):
        if st not in STAGES:
            err(f"pipeline{'' if cfg.pipeline.short else '.stages'}[{i}]", f"unknown stage {st!r} (known: {', '.join(STAGES)})")
    if not cfg.data.episodes:
        err("data.episodes", "needs at least one episode/run")
    if len(set(cfg.data.episodes)) != len(cfg.data.episodes):
        err("data.episodes", "duplicate episode")
    if len(cfg.data.episodes) < 3:
        err("data.episodes", "nested cross-validation by runs needs at least 3 runs")
    if not cfg.data.bold.subjects:
        err("data.bold.subjects", "needs at least one subject")
    if len(set(cfg.data.bold.subjects)) != len(cfg.data.bold.subjects):
        err("data.bold.subjects", "duplicate subject")
    for key, allowed in TEMPLATE_KEYS.items():
        value = operator.attrgetter(key)(cfg)
        if isinstance(value, str):
            bad = template_fields(value, key) - set(allowed)
            if bad:
                err(key, f"placeholder(s) {', '.join('{' + b + '}' for b in sorted(bad))} in {value!r} are not "
                         f"available here (known: {', '.join('{' + a + '}' for a in allowed)})")
    b = cfg.data.bold
    if b.format in ("hdf5", "cifti") and b.mask:
        err("data.bold.mask", f"{b.format} data has no voxel grid to mask; leave it null "
                              + ("(parcels come from data.bold.rois)" if b.format == "hdf5" else "(grayordinates)"))
    if b.format == "cifti" and b.rois:
        err("data.bold.rois", "CIFTI ROIs are the file's brain structures; leave it null")
    if b.roi_groups and not b.rois:
        err("data.bold.roi_groups", "needs an atlas in data.bold.rois" + (" (CIFTI ROIs are its structures)"
                                                                          if b.format == "cifti" else ""))
    if isinstance(b.roi_groups, list):
        if not b.roi_groups:
            err("data.bold.roi_groups", "an empty list; use null for one ROI per atlas label")
        for i, g in enumerate(b.roi_groups):
            if not g.name:
                err(f"data.bold.roi_groups[{i}].name", "an ROI needs a name")
            if not g.labels:
                err(f"data.bold.roi_groups[{i}].labels", "needs atlas label names (patterns) or numbers")
        if len({g.name for g in b.roi_groups}) != len(b.roi_groups):
            err("data.bold.roi_groups", "duplicate ROI name")
    for i, rs in enumerate(b.rescan_sessions):
        for k in ("subject", "run", "session"):
            if not getattr(rs, k):
                err(f"data.bold.rescan_sessions[{i}].{k}", "needs a value")
        if rs.subject not in b.subjects:
            err(f"data.bold.rescan_sessions[{i}].subject", f"{rs.subject!r} is not in data.bold.subjects")
        if rs.run not in cfg.data.episodes:
            err(f"data.bold.rescan_sessions[{i}].run", f"{rs.run!r} is not in data.episodes")
    if cfg.report.max_rois < 1:
        err("report.max_rois", f"must be at least 1, got {cfg.report.max_rois}")
    if cfg.data.bold.tr <= 0:
        err("data.bold.tr", f"must be positive, got {cfg.data.bold.tr}")
    if not cfg.fit.alphas or any(a <= 0 for a in cfg.fit.alphas):
        err("fit.alphas", "needs one or more positive values")
    delays = cfg.align.delays
    if delays is not None:
        if not delays or any(d < 0 for d in delays):
            err("align.delays", "needs one or more non-negative delays (or null for the default)")
        for i, d in enumerate(delays):
            if cfg.align.delay_unit == "trs" and d != int(d):
                err(f"align.delays[{i}]", f"{d} is not a whole number of TRs (set align.delay_unit: seconds)")
        if len(set(delays)) != len(delays):
            err("align.delays", "duplicate delay")
    if not cfg.align.residual_alphas or any(a <= 0 for a in cfg.align.residual_alphas):
        err("align.residual_alphas", "needs one or more positive penalties")
    k = cfg.align.outer_folds
    if k is not None and not 3 <= k <= len(cfg.data.episodes):
        err("align.outer_folds", f"needs 3 to {len(cfg.data.episodes)} folds (the number of runs), got {k}")
    if not 0 < cfg.stats.q < 1:
        err("stats.q", f"must lie in (0, 1), got {cfg.stats.q}")
    if len(cfg.simulate.grid) != 3:
        err("simulate.grid", "needs three integers (x, y, z)")
    ft = cfg.finetune
    for key, ok in (("epochs", ft.epochs >= 1), ("batch_size", ft.batch_size >= 1), ("lr", ft.lr > 0),
                    ("weight_decay", ft.weight_decay >= 0), ("warmup_steps", ft.warmup_steps >= 0),
                    ("n_train", ft.n_train >= 1), ("n_val", ft.n_val >= 1), ("fps", ft.fps > 0),
                    ("max_words", ft.max_words >= 2), ("num_workers", ft.num_workers >= 0)):
        if not ok:
            err(f"finetune.{key}", f"out of range: {getattr(ft, key)!r}")


def parse_schema(cls, data, source: str, kind: str, check=None):
    """Build a schema dataclass from YAML data and run ``check`` on it; every error is one line
    ``{kind} {source}: key.path: …``. Shared by experiment configs and cluster profiles."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{kind} {source}: top level must be a mapping, got {type(data).__name__}")
    try:
        obj = _build(cls, data, "")
        if check:
            check(obj)
    except ConfigError as e:
        raise ConfigError(f"{kind} {source}: {e}") from None
    return obj


MAX_YAML_NODES = 100_000     # values a YAML document may hold with its aliases expanded ("billion laughs")


class YAMLTooLarge(yaml.YAMLError):
    def __init__(self, problem, mark=None):
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


class BoundedSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a document whose aliases expand to more than MAX_YAML_NODES values
    (PyYAML shares an aliased object, but validating, hashing or printing the config walks every copy)."""

    def compose_document(self):
        node = super().compose_document()
        sizes: dict = {}

        def size(n, depth=0):
            k = id(n)
            if k in sizes:
                if sizes[k] is None:
                    raise YAMLTooLarge("an alias refers to a node that contains it", n.start_mark)
                return sizes[k]
            sizes[k] = None
            total = 1
            if isinstance(n, yaml.SequenceNode):
                total += sum(size(c, depth + 1) for c in n.value)
            elif isinstance(n, yaml.MappingNode):
                total += sum(size(a, depth + 1) + size(b, depth + 1) for a, b in n.value)
            if total > MAX_YAML_NODES:
                raise YAMLTooLarge(f"its aliases expand to more than {MAX_YAML_NODES} values (first past the "
                                   "limit at the node here)", n.start_mark)
            sizes[k] = total
            return total

        if node is not None:
            size(node)
        return node


def safe_load(text):
    """``yaml.safe_load`` with the alias-expansion bound of :class:`BoundedSafeLoader`."""
    return yaml.load(text, Loader=BoundedSafeLoader)


def read_yaml(path, kind: str):
    """(text, data) of a YAML file, ``yaml.safe_load`` only (aliases bounded: BoundedSafeLoader); a syntax
    error is one line with its line number."""
    path = Path(path)
    text = path.read_text()
    try:
        return text, safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{kind} {path}:{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    except RecursionError:
        raise ConfigError(f"{kind} {path}: not accepted (nested too deeply)") from None


def _expand_root(cfg: Config) -> None:
    """``{root}`` in model checkpoint paths -> data.root (so a config can load what simulate wrote)."""
    for m in [cfg.model, *cfg.model.variants]:
        if m.checkpoint and "{root}" in m.checkpoint:
            m.checkpoint = m.checkpoint.replace("{root}", cfg.data.root)


def _check_labels(data, source):
    """Subject and session labels read by YAML as numbers (``[01, 02]`` -> 1, 2; ``010`` -> 8; ``041`` -> 33)
    cannot be zero-padded back reliably, so they are refused with the fix."""
    bold = data["data"].get("bold") if isinstance(data.get("data"), dict) else None
    if not isinstance(bold, dict):
        return
    found = []
    if isinstance(bold.get("subjects"), list):
        found += [(f"data.bold.subjects[{i}]", v) for i, v in enumerate(bold["subjects"])]
    if isinstance(bold.get("rescan_sessions"), list):
        found += [(f"data.bold.rescan_sessions[{i}].{k}", r.get(k)) for i, r in enumerate(bold["rescan_sessions"])
                  if isinstance(r, dict) for k in ("subject", "session")]
    for key, v in found:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            raise ConfigError(f"config {source}: {key}: {v!r} is a number (YAML reads an unquoted 01 as 1 and 010 "
                              f"as 8); quote the labels, e.g. subjects: [\"01\", \"02\"], session: \"041\"")


def parse_config(data, source="<config>", text="") -> Config:
    if isinstance(data, dict):
        _check_labels(data, source)
    cfg = parse_schema(Config, data, source, "config", _check_semantics)
    _expand_root(cfg)
    cfg.source = source
    cfg.text = text
    return cfg


def load_config(path, overrides: Optional[dict] = None) -> Config:
    """Load and validate a YAML config (``yaml.safe_load``). ``overrides`` maps dotted keys to values."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text, data = read_yaml(path, "config")
    for dotted, value in (overrides or {}).items():
        node = data if isinstance(data, dict) else {}
        *parents, last = dotted.split(".")
        for i, p in enumerate(parents):
            if p == "pipeline" and node is data and isinstance(node.get(p), list):
                node[p] = {"stages": node[p]}          # pipeline.fingerprint=… on the short form
            if node.get(p) is None:
                node[p] = {}
            node = node[p]
            if not isinstance(node, dict):             # fit.alphas.x=1, name.x=1: no keys below a value
                where = ".".join(parents[:i + 1])
                raise ConfigError(f"--set {dotted}: {where} is a {type(node).__name__} ({_short_repr(node)}), "
                                  f"not a section; it has no key {parents[i + 1] if i + 1 < len(parents) else last!r}")
        node[last] = value
    if overrides:
        text = yaml.safe_dump(data, sort_keys=False)
    return parse_config(data, source=str(path), text=text)


def _short_repr(v, n=40) -> str:
    r = repr(v)
    return r if len(r) <= n else r[:n - 3] + "..."


def require_file(key: str, path: Path, what: str = "file") -> Path:
    """One line naming the config key and path when an input the config points at is missing."""
    if not Path(path).exists():
        raise ConfigError(f"{key}: {what} not found: {path}")
    return Path(path)
