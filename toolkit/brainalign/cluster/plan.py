"""The submission plan: which jobs run which `brainalign` commands, with what resources, after what.

The plan is pure data built from the config and the cluster profile; ``brainalign submit`` prints it
(``--dry-run``), submits it through submitit (:mod:`brainalign.cluster.submit`) or renders it as sbatch
scripts (:mod:`brainalign.cluster.sbatch`). The same commands run in every case.

Jobs, in order, each waiting (``afterok``) for the one before it; a stage whose output is current (its stage
key, brainalign.stagekeys, as ``brainalign status`` reports it) gets no job and a note says so:

``simulate``  one task (only if the config's pipeline has it)
``extract``   an array: task i runs ``brainalign extract CONFIG --episodes <its episodes>``
              (``stages.extract.episodes_per_task`` episodes per task; GPUs if the profile asks)
``align``     ``brainalign extract CONFIG`` (assembles features.h5 from the complete shards; loads no
              model) then ``brainalign align CONFIG``
``fit``       one MPI job: ``nodes x tasks_per_node`` ranks (srun --mpi=TYPE), each running ``brainalign fit``
``stats``     one task
``report``    one task

A *command* is a full argv: ``[python, REPO/bin/brainalign, verb, CONFIG, ...]``, or with a container image
``[apptainer, exec, --bind ..., IMAGE, python3, REPO/bin/brainalign, verb, CONFIG, ...]``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import shutil
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import ConfigError
from ..stagetable import VERBS
from .profile import REPO, Profile, Resources, mem_gb, sbatch_option, time_minutes

BIN = REPO / "bin" / "brainalign"
CLUSTERS = ("slurm", "local", "debug")


@dataclass
class PlannedJob:
    """One submission. ``tasks[i]`` is the list of commands (argv lists) array task ``i`` runs in order;
    a job with one task is not an array. ``ranks`` > 1: every task runs on that many MPI ranks."""

    name: str
    stage: str
    tasks: list[list[list[str]]]
    resources: Resources
    after: list[str] = field(default_factory=list)
    ranks: int = 1
    nodes: int = 1
    mpi: Optional[str] = None              # srun --mpi type (slurm) for ranks > 1
    launcher: Optional[str] = None         # "srun" (slurm) | "mpiexec" (local/debug) | None
    episodes: list[list[str]] = field(default_factory=list)   # extract: each array task's episodes
    array_parallelism: Optional[int] = None
    gpus: int = 0
    env: dict = field(default_factory=dict)   # extra environment of every command (OMP_NUM_THREADS)
    estimate: str = ""                     # the cost model's line (brainalign.cluster.sizing), or why none
    sized: list[str] = field(default_factory=list)      # resources taken from the estimate ("time", "mem")
    problems: list[str] = field(default_factory=list)   # why the job cannot run as planned (submit refuses)

    @property
    def is_array(self) -> bool:
        return self.stage == "extract"

    def time_min(self) -> int:
        return time_minutes(self.resources.time, f"stages.{self.stage}.time")

    def mem_gb(self) -> float:
        return mem_gb(self.resources.mem, f"stages.{self.stage}.mem")

    def sbatch_options(self) -> dict:
        """Extra sbatch options (profile ``sbatch_args`` + constraint), as submitit additional_parameters."""
        opts = {}
        for i, a in enumerate(self.resources.sbatch_args or []):
            k, v = sbatch_option(a, f"stages.{self.stage}.sbatch_args[{i}]")
            opts[k] = v
        if self.resources.constraint:
            opts["constraint"] = self.resources.constraint
        return opts


@dataclass
class Plan:
    name: str
    cluster: str
    profile: Profile
    config: Path                           # the frozen config every job reads
    source_config: str                     # the config the user gave
    folder: Path                           # submission folder: plan, frozen config, logs
    cwd: Path                              # jobs run here (relative paths in the config resolve here)
    output: Path
    jobs: list[PlannedJob]
    python: str
    notes: list[str] = field(default_factory=list)
    launch: dict = field(default_factory=dict)   # display name -> argv prefix ("BA": host/container command)
    # the jobs of one submission are one holder of the output's lock (brainalign.pipeline.lock)
    token: str = field(default_factory=lambda: f"submit-{uuid.uuid4().hex[:16]}")

    def job_env(self, job: "PlannedJob") -> dict:
        """The extra environment of ``job``'s commands: its own plus the submission's lock token."""
        from ..pipeline.lock import TOKEN_ENV

        return {**job.env, TOKEN_ENV: self.token}

    def job(self, name: str) -> PlannedJob:
        return next(j for j in self.jobs if j.name == name)

    def slurm_options(self, job: PlannedJob) -> dict:
        """The SLURM options of ``job``, spelled as sbatch spells them (``{"cpus-per-task": 2, "requeue":
        True, ...}``): the one translation of the profile's resources into SLURM's terms. brainalign.cluster.sbatch
        writes them as ``#SBATCH`` lines, brainalign.cluster.submit hands them to submitit. The array, the log
        files and the requeue signal are each writer's own (submitit sets them itself)."""
        prof, r = self.profile, job.resources
        opts = {"job-name": f"ba-{self.name}-{job.name}", "time": job.time_min(),
                "mem": f"{max(1, round(job.mem_gb() * 1024))}M",     # in M: submitit's own "mem" writes 1GB,
                "cpus-per-task": r.cpus_per_task, "nodes": job.nodes,  # which SLURM refuses
                "ntasks-per-node": job.ranks // job.nodes}
        for k, v in (("partition", r.partition), ("qos", r.qos), ("account", prof.account)):
            if v:
                opts[k] = v
        if job.gpus:
            opts["gpus-per-node"] = job.gpus
        if prof.requeue:
            opts["requeue"] = True
        opts.update(job.sbatch_options())
        return opts
    @property
    def problems(self) -> list[str]:
        return [p for j in self.jobs for p in j.problems]

    # ---- presentation --------------------------------------------------------------------------
    def to_dict(self) -> dict:
        jobs = []
        for j in self.jobs:
            d = dataclasses.asdict(j)
            d["resources"] = dataclasses.asdict(j.resources)
            d["time_min"] = j.time_min()
            d["mem_gb"] = j.mem_gb()
            d["commands"] = [[shlex.join(c) for c in t] for t in j.tasks]
            del d["tasks"]
            jobs.append(d)
        return {"name": self.name, "cluster": self.cluster, "profile": self.profile.source,
                "config": str(self.config), "source_config": self.source_config, "folder": str(self.folder),
                "cwd": str(self.cwd), "output": str(self.output), "python": self.python,
                "container": dataclasses.asdict(self.profile.container), "notes": list(self.notes),
                "jobs": jobs}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def describe(self) -> str:
        p = self.profile
        img = p.container.image
        lines = [
            f"brainalign submit plan: {self.name} ({len(self.jobs)} jobs, cluster {self.cluster}, "
            f"profile {p.name} = {p.source})",
            f"  config   {self.source_config} (frozen copy: {self.config})",
            f"  workdir  {self.cwd}   output {self.output}   logs {self.folder / 'logs'}",
            f"  account  {p.account or '-'}   partition {p.partition or '(default)'}   qos {p.qos or '-'}   "
            f"requeue {'on (checkpointable: USR2 ' + str(p.signal_delay_s) + ' s before the limit)' if p.requeue else 'off'}",
            f"  container {img if img else 'none (host python ' + self.python + ')'}",
        ]
        subs = []
        for key, prefix in self.launch.items():
            if any(shlex.join(prefix) == a for a, _ in subs):
                continue
            if any(c[:len(prefix)] == prefix for j in self.jobs for t in j.tasks for c in t):
                lines.append(f"  {key:<8} = {shlex.join(prefix)}")
                subs.append((shlex.join(prefix), "$" + key))
        lines.append(f"  CONFIG   = {self.config}")
        subs.append((shlex.quote(str(self.config)), "$CONFIG"))

        def show(argv):
            text = shlex.join(argv)
            for a, b in subs:
                text = text.replace(a, b)
            return text

        for k, j in enumerate(self.jobs, 1):
            r = j.resources
            if j.is_array:
                per = max(len(e) for e in j.episodes) if j.episodes else 1
                kind = (f"array of {len(j.tasks)} tasks ({per} episode{'s' if per > 1 else ''} each, "
                        f"at most {j.array_parallelism} at once)")
            elif j.ranks > 1:
                how = (f"srun --mpi={j.mpi}" if j.launcher == "srun" else
                       f"mpiexec -n {j.ranks}" if j.launcher == "mpiexec" else "?")
                kind = f"MPI job: {j.ranks} ranks = {j.nodes} node(s) x {j.ranks // j.nodes} tasks ({how})"
            else:
                kind = "one task"
            lines.append(f"[{k}] {j.name:<8} {kind}")
            src = f" (from the estimate: {', '.join(j.sized)})" if j.sized else ""
            lines.append(f"      resources: time {r.time} ({j.time_min()} min)  mem {r.mem}/node  "
                         f"cpus/task {r.cpus_per_task}  gpus/node {r.gpus}  partition {r.partition or '(default)'}"
                         + (f"  qos {r.qos}" if r.qos else "")
                         + (f"  constraint {r.constraint}" if r.constraint else "")
                         + (f"  sbatch {' '.join(r.sbatch_args)}" if r.sbatch_args else "") + src)
            if j.estimate:
                lines.append(f"      estimate: {j.estimate}")
            for prob in j.problems:
                lines.append(f"      CANNOT FIT: {prob}")
            lines.append("      after: " + (", ".join(f"{a} (afterok)" for a in j.after) if j.after else "-"))
            n = len(j.tasks)
            for idx in (range(n) if n <= 6 else [0, 1, 2, None, n - 2, n - 1]):
                if idx is None:
                    lines.append(f"      ... {n - 5} more tasks ...")
                    continue
                prefix = (f"task {idx}: " if j.is_array else
                          "each rank: " if j.ranks > 1 and j.launcher == "srun" else "")
                for c in j.tasks[idx]:
                    lines.append(f"      {prefix}$ {show(c)}")
        for n in self.notes:
            lines.append(f"note: {n}")
        return "\n".join(lines)


# ---- construction ----------------------------------------------------------------------------------

def _under(path: Path, roots) -> bool:
    return any(path == r or r in path.parents for r in roots)


def container_binds(plan_paths, profile: Profile) -> list[str]:
    """--bind specs: the checkout, the working directory, data root and output (outside those), then extras."""
    binds, roots = [], []
    for p in plan_paths:
        p = Path(p).resolve()
        if not _under(p, roots):
            roots.append(p)
            binds.append(str(p))
    return binds + [os.path.expandvars(b) for b in profile.container.binds]


def waits_for(cfg, stage: str, planned: list) -> list:
    """The planned jobs (by stage name) a stage's job waits for (afterok): its upstream stages' (permutation
    runs in the stats job) and those of the stages that write its input files (simulate, finetune) -- not
    simply the job before it, so e.g. mlm, which reads only the stimuli and the model, does not wait for stats."""
    from ..stagetable import STAGES as SPECS

    need = {SPECS[u].verb_of for u in SPECS[stage].upstream_of(cfg)}
    need |= {sp.verb_of for s, sp in SPECS.items() if sp.produces is not None and s != stage}
    if stage == "align":
        need.add("extract")            # the align job assembles features.h5 from the extract array's shards
    return [j for j in planned if j in need]


def _launch_prefix(profile: Profile, python: str, binds: list[str], gpus: int, git_commit: str) -> list[str]:
    c = profile.container
    if not c.image:
        return [python, str(BIN)]
    argv = [c.runtime, "exec"]
    if gpus > 0 and "--nv" not in c.exec_args and "--rocm" not in c.exec_args:
        argv.append("--nv")
    argv += list(c.exec_args)
    for b in binds:
        argv += ["--bind", b]
    argv += ["--env", f"BRAINALIGN_GIT_COMMIT={git_commit}"]   # no git inside the image
    return argv + [os.path.expandvars(c.image), c.python, str(BIN)]


def _mpiexec() -> Optional[str]:
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


@contextlib.contextmanager
def _in_dir(path: Path):
    here = Path.cwd()
    try:
        os.chdir(path)
        yield
    finally:
        os.chdir(here)


def complete_episodes(cfg, cwd: Path) -> list[str]:
    """Episodes whose every extraction unit is current (paths resolved in ``cwd``)."""
    from ..extract import shard_status

    with _in_dir(cwd):
        return [e for e in cfg.data.episodes if shard_status(cfg, e) == "complete"]


def stage_states(cfg, cwd: Path) -> dict:
    """{stage: State} of every planned stage as ``brainalign status`` sees it (resolved in ``cwd``)."""
    from ..stagecheck import assessor

    with _in_dir(cwd):
        a = assessor(cfg, planning=True)
        return {s: a.state(s) for s in VERBS if s in cfg.pipeline}


def build_plan(cfg, profile: Profile, cluster: str = "slurm", *, config_path, folder, force: bool = False,
               cwd=None, git_commit: str = "unknown") -> Plan:
    """The jobs for ``cfg.pipeline`` on ``cluster`` with ``profile``'s resources (nothing is written)."""
    if cluster not in CLUSTERS:
        raise ConfigError(f"--cluster: expected one of {', '.join(CLUSTERS)}, got {cluster!r}")
    cwd = Path(cwd or os.getcwd()).resolve()
    folder = Path(folder)
    folder = folder if folder.is_absolute() else cwd / folder
    config_path = Path(config_path)
    config_path = config_path if config_path.is_absolute() else cwd / config_path
    out = cfg.out if cfg.out.is_absolute() else cwd / cfg.out
    data_root = Path(cfg.data.root)
    data_root = data_root if data_root.is_absolute() else cwd / data_root
    python = profile.python or sys.executable
    binds = container_binds([REPO, cwd, data_root, out, folder], profile)
    notes = []
    conf = str(config_path)
    force_arg = ["--force"] if force else []

    launch = {"BA": _launch_prefix(profile, python, binds, 0, git_commit),
              "BA_GPU": _launch_prefix(profile, python, binds, 1, git_commit)}

    def cmd(stage, argv, gpus=0):
        return list(launch["BA_GPU" if gpus else "BA"]) + argv

    jobs: list[PlannedJob] = []
    order = [s for s in VERBS if s in cfg.pipeline]
    if list(cfg.pipeline) != order:
        notes.append(f"pipeline {' '.join(cfg.pipeline)} is run in stage order: {' '.join(order)}")
    states = {} if force else stage_states(cfg, cwd)      # stage keys: current outputs get no job
    for stage in order:
        res = profile.resources(stage)
        after = waits_for(cfg, stage, [j.name for j in jobs])
        gpus = int(res.gpus or 0)
        st = states.get(stage)
        # the align job also assembles features.h5 from the extract array's shards: it runs when they are redone
        redo_shards = "extract" in states and not states["extract"].current
        if st is not None and st.current and not (stage == "align" and redo_shards):
            notes.append(f"{stage}: {st.output} is current (stage key {st.key}); no job")
            continue
        if stage == "extract":
            per = res.episodes_per_task
            eps = list(cfg.data.episodes)
            if not force:        # resume: episodes whose every unit is current need no array task
                done = complete_episodes(cfg, cwd)
                if done:
                    notes.append(f"extract: {len(done)} of {len(eps)} episode shards are current and are kept "
                                 f"({', '.join(done)})")
                eps = [e for e in eps if e not in done]
                if not eps:
                    continue
            groups = [eps[i:i + per] for i in range(0, len(eps), per)]
            tasks = [[cmd(stage, ["extract", conf, "--episodes", *g] + force_arg, gpus)] for g in groups]
            jobs.append(PlannedJob("extract", stage, tasks, res, after, episodes=groups,
                                   array_parallelism=min(res.array_parallelism, len(groups)), gpus=gpus))
            if gpus and cfg.model.device == "cpu":
                notes.append("stages.extract.gpus > 0 but the config's model.device is cpu: the GPUs will idle "
                             "(set model.device: cuda)")
        elif stage == "align":
            steps = []
            if "extract" in order:   # features.h5 from the shards; never --force (that would re-extract)
                steps.append(cmd(stage, ["extract", conf], gpus))
            steps.append(cmd(stage, ["align", conf] + force_arg, gpus))
            jobs.append(PlannedJob("align", stage, [steps], res, after, gpus=gpus))
        elif stage == "fit":
            nodes, tpn = res.nodes, res.tasks_per_node
            ranks = nodes * tpn
            job = PlannedJob("fit", stage, [], res, after, ranks=ranks, nodes=nodes, gpus=gpus)
            base = cmd(stage, ["fit", conf] + force_arg, gpus)
            if ranks > 1 and cluster == "slurm":
                if profile.mpi == "none":
                    raise ConfigError(f"profile {profile.source}: mpi: none but stages.fit asks for {ranks} ranks")
                job.mpi, job.launcher = profile.mpi, "srun"
                job.tasks = [[base]]
            elif ranks > 1:
                if nodes > 1:
                    notes.append(f"--cluster {cluster} runs on this machine: the fit uses {tpn} ranks on 1 node")
                    job.ranks, job.nodes = tpn, 1
                mpiexec = _mpiexec()
                if mpiexec and job.ranks > 1:
                    job.launcher = "mpiexec"
                    job.tasks = [[[mpiexec, "-n", str(job.ranks)] + base]]
                else:
                    if job.ranks > 1:
                        notes.append("no mpiexec found: the fit runs as one process")
                    job.ranks = 1
                    job.tasks = [[base]]
            else:
                job.tasks = [[base]]
            jobs.append(job)
        else:
            jobs.append(PlannedJob(stage, stage, [[cmd(stage, [stage, conf] + force_arg, gpus)]], res, after,
                                   gpus=gpus))
    for j in jobs:   # BLAS threads = the cores SLURM gives each task (or this machine's cores / ranks)
        if cluster == "slurm":
            j.env["OMP_NUM_THREADS"] = str(j.resources.cpus_per_task)
        elif j.ranks > 1:
            j.env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // j.ranks))
    if not order:
        raise ConfigError(f"config {cfg.source}: pipeline is empty: nothing to submit")
    if not jobs:
        notes.append("every stage is current: nothing to submit (--force recomputes)")
    for j in jobs:   # fail early on unreadable resources
        j.time_min()
        j.mem_gb()
    if profile.container.image and cluster != "slurm":
        notes.append(f"the container runs on this machine: {profile.container.runtime} must be installed here")
    from .sizing import size_jobs

    notes += size_jobs(cfg, profile, jobs, cwd, cluster=cluster)   # estimates, SLURM time/mem, cannot-fit checks
    for j in jobs:
        j.time_min()
        j.mem_gb()
    return Plan(name=cfg.name, cluster=cluster, profile=profile, config=config_path,
                source_config=cfg.source, folder=folder, cwd=cwd, output=out, jobs=jobs, python=python,
                notes=notes, launch=launch)
