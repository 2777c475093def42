"""Which processes share a fit: MPI launcher detection and a communicator (MPI or one local process).

mpi4py is imported only when a launcher started us (``mpiexec``/``mpirun``: PMI_SIZE, OMPI_COMM_WORLD_SIZE,
PMIX_RANK; ``srun -n N``: SLURM_STEP_NUM_TASKS > 1) or when the mode is ``on``; a plain run needs no MPI.
The mode comes from the environment variable BRAINALIGN_MPI (auto | on | off; default auto), so that it
is not a config value (a stage key, brainalign.stagekeys, would not cover it).
"""
from __future__ import annotations

from ..errors import BrainAlignError, ConfigError
from ..launch import this_task

MODES = ("auto", "on", "off")


def launcher_size():
    """Number of tasks the launcher says it started in this step (None: no launcher; 0: a launcher that does
    not say; brainalign.launch reads the environment)."""
    return this_task().step_size


class LocalComm:
    """The subset of the mpi4py communicator API the fit uses, for a single process."""

    rank = 0
    size = 1

    def bcast(self, obj, root=0):
        return obj

    def allgather(self, obj):
        return [obj]

    def barrier(self):
        pass

    def Get_rank(self):
        return 0

    def Get_size(self):
        return 1


def world(mode: str = "auto"):
    """The communicator of this fit: mpi4py's COMM_WORLD under an MPI launcher (or ``mode='on'``), else LocalComm.

    Raises BrainAlignError when the launcher started several tasks but MPI sees one process (each task would
    redo the whole fit), and ConfigError for an unknown mode or ``on`` without mpi4py.
    """
    if mode not in MODES:
        raise ConfigError(f"BRAINALIGN_MPI (fit.mpi): expected one of {', '.join(MODES)}, got {mode!r}")
    n = launcher_size()
    if mode == "off" or (mode == "auto" and (n is None or n == 1)):
        return LocalComm()
    try:
        from mpi4py import MPI
    except ImportError:
        raise ConfigError("running under an MPI launcher (or BRAINALIGN_MPI=on) but mpi4py is not installed "
                          "(pip install 'brainalign[mpi]')") from None
    comm = MPI.COMM_WORLD
    if comm.Get_size() == 1 and n and n > 1:
        raise BrainAlignError(
            f"launched as one of {n} tasks but MPI sees a single process, so every task would redo the whole "
            "fit (under srun use --mpi=pmi2 with the MPICH wheel, or set BRAINALIGN_MPI=off)")
    return comm if comm.Get_size() > 1 else LocalComm()
