"""Estimates and cannot-fit checks of the planned jobs (``brainalign submit``), from the cost model.

For every job of the plan :func:`size_jobs` sets ``job.estimate`` (one line: wall time, memory, data read,
or why there is none) and ``job.problems`` (one line per reason the job cannot run as planned):

- **fit**: the shape comes from OUTPUT/design.h5 and bold.h5 when align has written them (TRs, features
  per feature set, voxels, subjects, layers, outer folds) and the config (alphas, chunk_voxels, partition
  models); :func:`brainalign.cluster.cost.estimate` gives wall time, memory per rank and bytes read for
  the job's ranks and cores (one GPU per rank when the job has GPUs and ``fit.backend`` is a GPU one).
  Without those files there is no estimate yet (the line says so; submit again after align).
- the other stages are not modelled: their line says so and the profile's values are used.

SLURM ``time`` / ``mem`` of a job with an estimate come from it unless the profile sets the stage's own key
(``stages.fit.time`` / ``.mem``; ``defaults`` are for the jobs without an estimate): time = 1.5 x the estimate + 5 min (at most the partition's limit), mem per node =
1.25 x (memory per rank x ranks per node), at least 1 GiB.

Cannot-fit checks (the partition's node is described under the profile's ``partitions``):
memory per rank x ranks per node above the node's memory; a CUDA config (``fit.backend: cupy``, a
``cuda`` device for extract / mlm / finetune) on a job without GPUs, or GPUs asked of a partition that has
none; a wall time (estimated, or set by the profile) beyond the partition's ``max_time``.
``brainalign submit`` prints them with ``--dry-run`` and refuses to submit (exit 2) otherwise.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np

from .cost import Estimate, FitShape, Rates, estimate, fmt_time, slurm_time
from .profile import Profile, mem_gb, time_minutes

TIME_MARGIN, TIME_PAD_S, MEM_MARGIN = 1.5, 300.0, 1.25
GPU_BACKENDS = ("cupy", "torch")


def fit_shapes(cfg, cwd: Path) -> tuple[list[FitShape], str]:
    """The fit's shapes (one per distinct feature count) from design.h5 / bold.h5, or ([], why not)."""
    import h5py

    out = cfg.out if Path(cfg.out).is_absolute() else Path(cwd) / cfg.out
    design, bold = out / "design.h5", out / "bold.h5"
    missing = [p.name for p in (design, bold) if not p.is_file()]
    if missing:
        return [], f"{' and '.join(missing)} not written yet (align): submit the fit after align for one"
    try:
        with h5py.File(design, "r") as d, h5py.File(bold, "r") as b:
            n = int(d["runs"].shape[0])
            groups = d["cv_groups"][()] if "cv_groups" in d else d["runs"][()]
            K = int(len(np.unique(groups)))
            L = len(np.atleast_1d(d.attrs["layers"]))
            p_of = {name: int(ds.shape[-1]) for name, ds in d["design"].items()}
            v = int(np.asarray(b["mask"][()]).astype(bool).sum())
            S = len(np.atleast_1d(b.attrs["subjects"]))
    except (OSError, KeyError) as e:
        return [], f"cannot read the fit's shape from {design} / {bold}: {e}"
    from ..partition import partition_models

    fsets = [f for f in (cfg.fit.feature_sets or list(p_of)) if f in p_of]
    ps = [p_of[f] for f in fsets] + [sum(p_of.get(b_, 0) for b_ in m.feature_sets) for m in partition_models(cfg)]
    A = len(cfg.fit.alphas)
    return [FitShape(n=n, p=p, v=v, subjects=S, designs=ps.count(p), layers=L, K=K, alphas=A,
                     chunk=int(cfg.fit.chunk_voxels)) for p in sorted(set(ps))], ""


def combine(parts: list[Estimate], startup_s: float) -> Estimate:
    """One estimate for designs of different widths run by the same ranks (work adds up, memory is the max)."""
    if len(parts) == 1:
        return parts[0]
    e = parts[0]
    work = sum(x.cpu_s for x in parts)
    return Estimate(e.shape, e.engine, e.ranks, e.cores_per_rank, e.gpu,
                    max(work / e.ranks + startup_s, max(x.wall_s for x in parts)), work,
                    max(x.mem_rank_bytes for x in parts), sum(x.bytes_read for x in parts),
                    sum(x.flops for x in parts), sum(x.units for x in parts), max(x.data_passes for x in parts),
                    max(x.design_s for x in parts), max(x.chunk_s for x in parts), e.assumed)


def _spec(profile: Profile, partition: Optional[str]):
    return profile.partition_spec(partition)


def _needs_cuda(cfg, stage: str) -> Optional[str]:
    """What in the config needs CUDA for ``stage`` (None: nothing)."""
    if stage == "fit" and cfg.fit.backend == "cupy":
        return "fit.backend: cupy"
    dev = {"extract": cfg.model.device, "mlm": cfg.model.device,
           "finetune": getattr(getattr(cfg, "finetune", None), "device", "cpu")}.get(stage)
    if dev and str(dev).startswith("cuda"):
        return f"{'finetune' if stage == 'finetune' else 'model'}.device: {dev}"
    return None


def size_jobs(cfg, profile: Profile, jobs, cwd: Path, rates: Optional[Rates] = None,
              cluster: str = "slurm") -> list[str]:
    """Set ``estimate``, ``problems`` (and SLURM time/mem where the profile leaves them) on every job;
    returns notes for the plan. Off SLURM (``--cluster local|debug``) the jobs run on this machine with its
    own GPUs, so the profile's ``gpus`` are not checked against the config."""
    notes = []
    rates = rates or Rates.load()
    for job in jobs:
        res = job.resources
        spec = _spec(profile, res.partition)
        where = f"partition {res.partition or '(default)'}"
        est = None
        if job.stage == "fit":
            shapes, why = fit_shapes(cfg, cwd)
            if shapes:
                gpu = bool(job.gpus) and cfg.fit.backend in GPU_BACKENDS
                read = spec.read_gbps if spec and spec.read_gbps else None
                est = combine([estimate(s, job.ranks, res.cpus_per_task or 1, gpu, rates, read_gbps=read)
                               for s in shapes], rates.startup_s)
                job.estimate = est.line() + (f" [assumed: {est.assumed}]" if est.assumed else "")
            else:
                job.estimate = f"none: {why}"
        else:
            job.estimate = "none: only the fit is modelled (brainalign.cluster.cost); the profile's time/mem are used"
        tpn = max(1, job.ranks // max(1, job.nodes))
        max_min = time_minutes(spec.max_time, "partitions.max_time") if spec and spec.max_time else None
        if est is not None:
            if not profile.sets(job.stage, "time"):
                t = TIME_MARGIN * est.wall_s + TIME_PAD_S
                if max_min is not None and est.wall_s <= max_min * 60:
                    t = min(t, max_min * 60)
                res.time = slurm_time(t)
                job.sized.append("time")
            if not profile.sets(job.stage, "mem"):
                res.mem = f"{max(1, math.ceil(MEM_MARGIN * est.mem_rank_bytes * tpn / 2 ** 30))}G"
                job.sized.append("mem")
        # ---- cannot-fit checks
        need = _needs_cuda(cfg, job.stage)
        if need and not job.gpus and cluster == "slurm":
            job.problems.append(f"{job.name}: {need} needs a GPU but the profile gives this job none "
                                f"(stages.{job.stage}.gpus: 0)")
        if job.gpus and spec is not None and not spec.gpus:
            job.problems.append(f"{job.name}: asks for {job.gpus} GPU(s) per node but {where} has none "
                                "(profile partitions)")
        if spec is not None and spec.mem:
            node = mem_gb(spec.mem, "partitions.mem")
            if est is not None and est.mem_rank_bytes * tpn / 2 ** 30 > node:
                job.problems.append(f"{job.name}: needs {est.mem_rank_gib:.3g} GiB per rank x {tpn} ranks per node "
                                    f"= {est.mem_rank_gib * tpn:.3g} GiB, above the {node:.3g} GiB of a node in {where} "
                                    f"(fewer tasks_per_node, or a smaller fit.chunk_voxels)")
            elif job.mem_gb() > node:
                job.problems.append(f"{job.name}: mem {res.mem} per node is above the {node:.3g} GiB of a node in "
                                    f"{where}")
        if est is not None and max_min is not None and est.wall_s > max_min * 60:
            nodes = math.ceil(est.cpu_s / (tpn * max(60.0, max_min * 60 - rates.startup_s)))
            job.problems.append(f"{job.name}: estimated {fmt_time(est.wall_s)} is beyond {where}'s limit "
                                f"{spec.max_time} (about {max(nodes, job.nodes + 1)} node(s) of {tpn} ranks "
                                f"would fit)")
        if max_min is not None and job.time_min() > max_min and "time" not in job.sized:
            job.problems.append(f"{job.name}: time {res.time} is beyond {where}'s limit {spec.max_time}")
        if est is not None and "mem" not in job.sized and est.mem_rank_bytes * tpn / 2 ** 30 > job.mem_gb():
            notes.append(f"{job.name}: the profile's mem {res.mem} per node is below the estimate "
                         f"({est.mem_rank_gib * tpn:.1f} GiB for {tpn} ranks): it may run out of memory")
        if est is not None and "time" not in job.sized and est.wall_s > job.time_min() * 60:
            notes.append(f"{job.name}: the profile's time {res.time} is below the estimate "
                         f"({fmt_time(est.wall_s)}): it will be requeued{' (requeue on)' if profile.requeue else ''}")
    return notes
