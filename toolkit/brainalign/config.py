"""The experiment config: a typed schema, YAML loading (safe_load only) and validation.

Every problem is reported as one ConfigError line that names the key path, e.g.
``config configs/x.yaml: fit.alphas[2]: expected a number, got 'ten'``.
Relative paths in the config are relative to the current working directory. String paths may use the
placeholders ``{root}`` (data.root), ``{episode}`` and ``{subject}``.
"""
from __future__ import annotations

import dataclasses
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
    audio: Optional[str] = "{root}/stimuli/{episode}.wav"  # null: use the video's audio track
    transcript: str = "{root}/stimuli/{episode}.tsv"     # .tsv (word onset duration) | .json (Speech2Text) | .srt


@dataclass
class BoldConfig:
    format: Literal["bids", "hdf5", "cifti"] = "bids"
    dir: str = "{root}/derivatives/fmriprep"              # fMRIPrep derivatives (BIDS) root, or an HDF5 file
    subjects: list[str] = field(default_factory=lambda: ["01", "02", "03", "04", "05"])
    space: str = "MNI152NLin2009cAsym"
    desc: str = "preproc"
    tr: float = 1.49
    mask: str = "{root}/derivatives/atlas/space-MNI152NLin2009cAsym_desc-brain_mask.nii.gz"
    rois: Optional[str] = "{root}/derivatives/atlas/space-MNI152NLin2009cAsym_desc-rois_dseg.nii.gz"
    roi_names: Optional[str] = "{root}/derivatives/atlas/desc-rois_dseg.tsv"
    confounds: Optional[typing.Union[Literal["minimal"], list[str]]] = None   # see brain/confounds.py


@dataclass
class DataConfig:
    root: str = "data/demo"
    episodes: list[str] = field(default_factory=lambda: ["s01e01a", "s01e01b", "s01e02a", "s01e02b"])
    stimuli: StimuliConfig = field(default_factory=StimuliConfig)
    bold: BoldConfig = field(default_factory=BoldConfig)


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
    effect_r: list[float] = field(default_factory=lambda: [0.25, 0.45])   # planted voxel-wise r range
    layer: int = -1                        # layer whose features drive the planted ROIs (-1: last)


@dataclass
class TinyModelConfig:
    hidden: int = 64
    layers: int = 4
    heads: int = 4
    vocab: int = 4096
    patch: int = 16
    n_mels: int = 32


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
    delays: list[int] = field(default_factory=lambda: [1, 2, 3, 4])   # FIR delays in TRs
    zscore: bool = True
    trim: int = 2                          # TRs dropped at each run start and end
    max_tr_mismatch: int = 2               # features vs BOLD TR counts may differ by this much (cut to the shorter)
    residuals: list[ResidualConfig] = field(default_factory=list)
    residual_alpha: float = 1.0            # ridge penalty of the residual regression (z-scored features)
    outer_folds: Optional[int] = None      # group consecutive runs into this many CV folds (null: one per run)


@dataclass
class FitConfig:
    alphas: list[float] = field(default_factory=lambda: [float(a) for a in (10.0 ** i for i in range(0, 7))])
    inner_folds: Literal["runs"] = "runs"  # inner CV leaves one training run out
    backend: Literal["numpy", "torch", "cupy", "auto"] = "numpy"
    chunk_voxels: int = 4096
    feature_sets: Optional[list[str]] = None   # null: every condition and residual
    write_maps: bool = True


@dataclass
class ContrastConfig:
    name: str = ""
    a: str = ""
    b: Optional[str] = None                # null: a vs zero


@dataclass
class StatsConfig:
    q: float = 0.05
    contrasts: list[ContrastConfig] = field(default_factory=list)
    noise_ceiling: Literal["auto", "isc", "repeats", "none"] = "auto"
    ceiling_floor: float = 0.1             # ceilings below this are not used to normalise
    ceiling_spearman_brown: bool = True
    noise_ceiling_repeats: Optional[str] = None   # per-subject HDF5 ({subject}) with /repeats (n_rep, n_trs, n_vox)
    noise_ceiling_n_avg: int = 1
    permutations: int = 0                  # 0 = off; > 0: per-subject blocked (circular-shift) permutation tests
    permutation_layer: Optional[int] = None
    permutation_feature_sets: Optional[list[str]] = None
    permutation_min_shift: int = 10        # TRs
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


@dataclass
class ReportConfig:
    layer: Optional[int] = None            # layer for ROI bar charts (null: best mean joint layer)
    title: str = "brainalign report"


STAGES = ("simulate", "finetune", "extract", "align", "fit", "stats", "report", "mlm")


@dataclass(eq=False)
class PipelineConfig:
    """``pipeline: [extract, align, ...]`` (short form) or ``pipeline: {stages: [...], fingerprint: content}``.

    Behaves like the list of stages (iteration, ``in``, indexing, ``==`` with a list), so ``cfg.pipeline``
    reads as before. ``fingerprint`` says how stage keys fingerprint input files (brainalign.pipeline.keys):
    ``mtime`` (size + mtime_ns, cheap) or ``content`` (SHA-256 of the bytes; ``--verify`` on the CLI).
    """

    stages: list[str] = field(default_factory=lambda: ["extract", "align", "fit", "stats", "report"])
    fingerprint: Literal["mtime", "content"] = "mtime"
    short: bool = field(default=False, metadata={"internal": True})   # given as a plain list

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

    def path(self, template: str, **kw) -> Path:
        return Path(template.format(root=self.data.root, **kw))


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
            raise ConfigError(f"{key}: unknown key (known here: {', '.join(sorted(fields))})")
        kwargs[k] = _convert(v, hints[k], key)
    return cls(**kwargs)


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
    if cfg.data.bold.tr <= 0:
        err("data.bold.tr", f"must be positive, got {cfg.data.bold.tr}")
    if not cfg.fit.alphas or any(a <= 0 for a in cfg.fit.alphas):
        err("fit.alphas", "needs one or more positive values")
    if any(d < 0 for d in cfg.align.delays) or not cfg.align.delays:
        err("align.delays", "needs one or more non-negative TR delays")
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


def read_yaml(path, kind: str):
    """(text, data) of a YAML file, ``yaml.safe_load`` only; a syntax error is one line with its line number."""
    path = Path(path)
    text = path.read_text()
    try:
        return text, yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{kind} {path}:{where}: not valid YAML ({getattr(e, 'problem', e)})") from None


def parse_config(data, source="<config>", text="") -> Config:
    cfg = parse_schema(Config, data, source, "config", _check_semantics)
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
        for p in parents:
            if p == "pipeline" and node is data and isinstance(node.get(p), list):
                node[p] = {"stages": node[p]}          # pipeline.fingerprint=… on the short form
            node = node.setdefault(p, {})
        node[last] = value
    if overrides:
        text = yaml.safe_dump(data, sort_keys=False)
    return parse_config(data, source=str(path), text=text)


def require_file(key: str, path: Path, what: str = "file") -> Path:
    """One line naming the config key and path when an input the config points at is missing."""
    if not Path(path).exists():
        raise ConfigError(f"{key}: {what} not found: {path}")
    return Path(path)
