"""Cluster profiles: where and with what resources `brainalign submit` runs each stage.

A profile is a YAML file (``configs/cluster/NAME.yaml``), validated like the experiment config with the
same generic machinery (:func:`brainalign.config.parse_schema`): typed keys, and one ``ConfigError`` line naming
the key path at fault, e.g. ``profile configs/cluster/x.yaml: stages.fit.tasks_per_node: expected an
integer, got 'two'``. Every key is optional; see ``configs/cluster/example-gpu.yaml`` for all of them.

Per stage resources fall back to ``defaults`` key by key (a key left out, or null, under
``stages.fit`` takes the value under ``defaults``).
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional


from ..config import STAGES, parse_schema, read_yaml
from ..errors import ConfigError

REPO = Path(__file__).resolve().parents[3]
PROFILE_DIR = REPO / "configs" / "cluster"
DEFAULT_PROFILE = "local"


@dataclass
class Resources:
    """What one job of a stage asks SLURM for (null: inherit from ``defaults``)."""

    time: Optional[str] = None             # wall time: MINUTES, HH:MM:SS, MM:SS or D-HH[:MM[:SS]]
    mem: Optional[str] = None              # memory per node: e.g. 8G, 500M, 1T (no unit: MB, like SLURM)
    cpus_per_task: Optional[int] = None
    gpus: Optional[int] = None             # GPUs per node (submitit gpus_per_node -> --gpus-per-node)
    partition: Optional[str] = None        # overrides the profile-wide partition
    qos: Optional[str] = None              # overrides the profile-wide qos
    constraint: Optional[str] = None       # --constraint, e.g. "a100|h100"
    sbatch_args: Optional[list[str]] = None  # extra "--key=value" / "--flag" sbatch options (added to the global ones)


@dataclass
class ExtractResources(Resources):
    episodes_per_task: int = 1             # episodes per array task (a "model shard")
    array_parallelism: int = 64            # array tasks running at once (%N)


@dataclass
class FitResources(Resources):
    nodes: int = 1
    tasks_per_node: int = 1                # MPI ranks per node: the fit runs as nodes x tasks_per_node ranks


@dataclass
class StagesProfile:
    simulate: Resources = field(default_factory=Resources)
    extract: ExtractResources = field(default_factory=ExtractResources)
    align: Resources = field(default_factory=Resources)
    fit: FitResources = field(default_factory=FitResources)
    stats: Resources = field(default_factory=Resources)
    report: Resources = field(default_factory=Resources)
    finetune: Resources = field(default_factory=Resources)
    mlm: Resources = field(default_factory=Resources)


@dataclass
class ContainerProfile:
    image: Optional[str] = None            # Apptainer/Singularity image (.sif); null: run on the host
    runtime: str = "apptainer"             # executable: apptainer or singularity
    binds: list[str] = field(default_factory=list)  # extra --bind SRC[:DST[:OPTS]] (data, scratch)
    exec_args: list[str] = field(default_factory=list)  # extra `apptainer exec` options, e.g. [--cleanenv]
    python: str = "python3"                # interpreter inside the image


@dataclass
class PartitionSpec:
    """What one node of a partition has: used by the estimates and the cannot-fit checks of ``submit``."""

    name: str = ""                         # partition name; "" describes the cluster's default partition
    cpus: Optional[int] = None             # cores per node
    mem: Optional[str] = None              # memory per node (8G, 500M, 1T)
    gpus: int = 0                          # GPUs per node
    max_time: Optional[str] = None         # the partition's wall-time limit (SLURM time format)
    read_gbps: Optional[float] = None      # read bandwidth of one rank from the data's filesystem (GB/s)


@dataclass
class Profile:
    name: str = ""
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    python: Optional[str] = None           # interpreter for bin/brainalign on the nodes (null: the one running submit)
    mpi: Literal["pmi2", "pmix", "none"] = "pmi2"   # srun --mpi=TYPE for the fit (pmi2: MPICH wheel)
    requeue: bool = True                   # checkpoint + requeue on preemption / time limit
    max_requeues: int = 3                  # time-limit requeues per job (submitit max_num_timeout)
    signal_delay_s: int = 120              # USR2 this long before the time limit (then checkpoint + requeue)
    setup: list[str] = field(default_factory=list)       # shell lines run before each job (module load ...)
    sbatch_args: list[str] = field(default_factory=list)  # extra sbatch options for every job
    folder: Optional[str] = None           # submission folder (logs, plan, frozen config); null: OUTPUT/submit
    container: ContainerProfile = field(default_factory=ContainerProfile)
    defaults: Resources = field(default_factory=Resources)
    stages: StagesProfile = field(default_factory=StagesProfile)
    partitions: list[PartitionSpec] = field(default_factory=list)   # node sizes and limits per partition
    source: str = field(default="", metadata={"internal": True})

    def partition_spec(self, partition: Optional[str]) -> Optional[PartitionSpec]:
        """The description of ``partition`` (None or "": the default partition), or None if not described."""
        want = partition or ""
        return next((s for s in self.partitions if s.name == want), None)

    def sets(self, stage: str, key: str) -> bool:
        """Whether the profile gives ``key`` for ``stage`` itself (``stages.<stage>.<key>``; a job with an
        estimate takes its time/mem from the estimate over ``defaults``)."""
        return getattr(getattr(self.stages, stage), key) is not None

    def resources(self, stage: str) -> Resources:
        """The resolved resources of ``stage`` (stage keys over ``defaults`` over built-in defaults)."""
        own = getattr(self.stages, stage)
        merged = {}
        for f in dataclasses.fields(Resources):
            v = getattr(own, f.name)
            merged[f.name] = v if v is not None else getattr(self.defaults, f.name)
        merged["sbatch_args"] = list(self.sbatch_args) + list(self.defaults.sbatch_args or []) + list(
            own.sbatch_args or [])
        merged["partition"] = merged["partition"] or self.partition
        merged["qos"] = merged["qos"] or self.qos
        for k, v in BUILTIN.items():
            if merged[k] is None:
                merged[k] = v
        return dataclasses.replace(own, **merged)   # keeps stage-only keys (episodes_per_task, nodes, ...)


BUILTIN = {"time": "01:00:00", "mem": "4G", "cpus_per_task": 1, "gpus": 0}


# ---- value parsing ----------------------------------------------------------------------------------

_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def time_minutes(text: str, key: str = "time") -> int:
    """SLURM time formats -> whole minutes (rounded up). ``ConfigError`` naming ``key`` if unreadable."""
    s = str(text).strip()
    m = _TIME.match(s)
    if not m:
        raise ConfigError(f"{key}: expected a SLURM time (MINUTES, HH:MM:SS, D-HH:MM), got {text!r}")
    d, a, b, c = m.groups()
    if d is not None:      # D-HH[:MM[:SS]]
        secs = int(d) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
    elif c is not None:    # HH:MM:SS
        secs = int(a) * 3600 + int(b) * 60 + int(c)
    elif b is not None:    # MM:SS
        secs = int(a) * 60 + int(b)
    else:                  # MM
        secs = int(a) * 60
    if secs <= 0:
        raise ConfigError(f"{key}: must be positive, got {text!r}")
    return math.ceil(secs / 60)


_MEM = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]?)B?$", re.I)


def mem_gb(text: str, key: str = "mem") -> float:
    """``8G`` / ``500M`` / ``1T`` / ``2048`` (MB) -> GB as a float (submitit ``mem_gb``)."""
    m = _MEM.match(str(text).strip())
    if not m:
        raise ConfigError(f"{key}: expected memory like 8G, 500M or 1T, got {text!r}")
    val, unit = float(m.group(1)), (m.group(2) or "M").upper()
    gb = val * {"K": 1 / 1024 ** 2, "M": 1 / 1024, "G": 1.0, "T": 1024.0}[unit]
    if gb <= 0:
        raise ConfigError(f"{key}: must be positive, got {text!r}")
    return gb


def sbatch_option(arg: str, key: str) -> tuple[str, object]:
    """``--mail-type=END`` -> ("mail-type", "END"); ``--exclusive`` -> ("exclusive", True)."""
    if not isinstance(arg, str) or not arg.startswith("--") or len(arg) < 3 or " " in arg.split("=", 1)[0]:
        raise ConfigError(f"{key}: expected a long sbatch option like --mail-type=END, got {arg!r}")
    name, sep, value = arg[2:].partition("=")
    return name, (value if sep else True)


def _check(p: Profile):
    def res_checks(res: Resources, key: str):
        if res.time is not None:
            time_minutes(res.time, f"{key}.time")
        if res.mem is not None:
            mem_gb(res.mem, f"{key}.mem")
        for name in ("cpus_per_task",):
            v = getattr(res, name)
            if v is not None and v < 1:
                raise ConfigError(f"{key}.{name}: must be at least 1, got {v}")
        if res.gpus is not None and res.gpus < 0:
            raise ConfigError(f"{key}.gpus: must be 0 or more, got {res.gpus}")
        for i, a in enumerate(res.sbatch_args or []):
            sbatch_option(a, f"{key}.sbatch_args[{i}]")

    res_checks(p.defaults, "defaults")
    for st in STAGES:
        res_checks(getattr(p.stages, st), f"stages.{st}")
    for i, a in enumerate(p.sbatch_args):
        sbatch_option(a, f"sbatch_args[{i}]")
    ex, fit = p.stages.extract, p.stages.fit
    for key, v in (("stages.extract.episodes_per_task", ex.episodes_per_task),
                   ("stages.extract.array_parallelism", ex.array_parallelism),
                   ("stages.fit.nodes", fit.nodes), ("stages.fit.tasks_per_node", fit.tasks_per_node),
                   ("max_requeues", p.max_requeues + 1)):
        if v < 1:
            raise ConfigError(f"{key}: must be at least 1, got {v}")
    seen = set()
    for i, spec in enumerate(p.partitions):
        key = f"partitions[{i}]"
        if spec.name in seen:
            raise ConfigError(f"{key}.name: partition {spec.name or '(default)'!r} is described twice")
        seen.add(spec.name)
        if spec.mem is not None:
            mem_gb(spec.mem, f"{key}.mem")
        if spec.max_time is not None:
            time_minutes(spec.max_time, f"{key}.max_time")
        for name in ("cpus", "read_gbps"):
            v = getattr(spec, name)
            if v is not None and v <= 0:
                raise ConfigError(f"{key}.{name}: must be positive, got {v}")
        if spec.gpus < 0:
            raise ConfigError(f"{key}.gpus: must be 0 or more, got {spec.gpus}")
    if p.signal_delay_s < 0:
        raise ConfigError(f"signal_delay_s: must be 0 or more, got {p.signal_delay_s}")
    for i, b in enumerate(p.container.binds):
        if not b or b.startswith(":") or b.count(":") > 2:
            raise ConfigError(f"container.binds[{i}]: expected SRC[:DST[:OPTS]], got {b!r}")
    if p.container.image is not None and not p.container.image.strip():
        raise ConfigError("container.image: empty; use null to run without a container")


def parse_profile(data, source: str = "<profile>") -> Profile:
    prof = parse_schema(Profile, data, source, "profile", _check)
    prof.source = source
    if not prof.name:
        prof.name = Path(source).stem
    return prof


def find_profile(name_or_path: Optional[str]) -> Path:
    """A path to an existing file, or a name under configs/cluster/ (``gpu`` -> configs/cluster/gpu.yaml)."""
    spec = name_or_path or DEFAULT_PROFILE
    p = Path(spec)
    if p.is_file():
        return p
    if "/" not in spec and not spec.endswith((".yaml", ".yml")):
        cand = PROFILE_DIR / f"{spec}.yaml"
        if cand.is_file():
            return cand
    known = sorted(q.stem for q in PROFILE_DIR.glob("*.yaml")) if PROFILE_DIR.is_dir() else []
    raise ConfigError(f"cluster profile not found: {spec} (a YAML file, or one of: {', '.join(known) or 'none'} "
                      f"under {PROFILE_DIR})")


def load_profile(name_or_path: Optional[str] = None) -> Profile:
    path = find_profile(name_or_path)
    _, data = read_yaml(path, "profile")
    return parse_profile(data, str(path))
