"""The launch environment: which task of how many this process is, as its launcher says through environment
variables (mpiexec/mpirun, torchrun, srun, a SLURM array). The one reader of those variables: the rank in
every log line (brainalign.log), whether the fit starts MPI (brainalign.sharding.comm), the process group of
the fine-tuning (brainalign.finetune) and the fit's oversubscription warning (brainalign.fit).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

# (launcher, rank, size, local rank) variables, in the order they are believed: an MPI launcher's own first,
# then torchrun's, then srun's (srun also sets SLURM_* for the tasks an MPI launcher or torchrun starts)
TASK_VARIABLES = (
    ("mpi", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),                                   # MPICH / Hydra
    ("mpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),  # Open MPI
    ("torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK"),
    ("srun", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
)
# the number of tasks a launcher that MPI can join started in this step (an sbatch script's own process has
# SLURM_NTASKS of the allocation, but no step of several tasks)
STEP_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS")


def _int(value, default: int) -> int:
    try:
        return int(str(value).split("(")[0])           # SLURM_NTASKS_PER_NODE may read "2(x3)"
    except (TypeError, ValueError):
        return default


@dataclass(frozen=True)
class Task:
    """This process among those its launcher started."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0                 # its index on its node
    launcher: str = ""                  # mpi | torchrun | srun | "" (started by hand)
    step_size: Optional[int] = None     # tasks of the step MPI could join (None: no launcher; 0: it does not say)
    per_node: int = 1                   # tasks of this job on this node
    array_task: str = ""                # SLURM_ARRAY_TASK_ID
    job_id: str = ""                    # SLURM_JOB_ID


def this_task(env=None) -> Task:
    """The launch environment of this process (``env``: os.environ)."""
    env = os.environ if env is None else env
    rank, size, local, launcher = 0, 1, 0, ""
    for name, r, s, lr in TASK_VARIABLES:
        if r in env:
            rank, size, local, launcher = _int(env[r], 0), _int(env.get(s, "1"), 1), _int(env.get(lr, "0"), 0), name
            break
    step = next((int(env[k]) for k in STEP_SIZE_VARIABLES if env.get(k, "").isdigit()), None)
    if step is None and "PMIX_RANK" in env:
        step = 0
    per_node = _int(env.get("MPI_LOCALNRANKS") or env.get("SLURM_NTASKS_PER_NODE") or "1", 1) or 1
    return Task(rank, size, local, launcher, step, per_node, env.get("SLURM_ARRAY_TASK_ID", ""),
                env.get("SLURM_JOB_ID", ""))
