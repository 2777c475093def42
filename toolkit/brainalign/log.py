"""Logging that names host, MPI rank / SLURM task in every line, and progress bars for long work."""
import logging
import os
import socket
import sys

from .launch import this_task

_CONFIGURED = False


def rank_info():
    """(rank, size) from MPI if initialised, else from the launcher's environment (brainalign.launch), else (0, 1)."""
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None:
        try:
            comm = mpi.COMM_WORLD
            return comm.Get_rank(), comm.Get_size()
        except Exception:  # pragma: no cover - MPI not usable
            pass
    task = this_task()
    return task.rank, task.size


class _RankFilter(logging.Filter):
    def filter(self, record):
        rank, size = rank_info()
        record.rank = f"{rank}/{size}"
        record.host = socket.gethostname()
        task = this_task().array_task
        record.task = f" task {task}" if task else ""
        return True


def setup_logging(level="INFO"):
    global _CONFIGURED
    root = logging.getLogger("brainalign")
    if not _CONFIGURED:
        handler = logging.StreamHandler(sys.stderr)
        handler.addFilter(_RankFilter())
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(host)s rank %(rank)s%(task)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        handler.brainalign = True
        root.addHandler(handler)
        root.propagate = False
        _CONFIGURED = True
    for h in root.handlers:          # the CLI called again in one process: log to the stderr of now
        if getattr(h, "brainalign", False) and h.stream is not sys.stderr:
            h.stream = sys.stderr        # not setStream: it flushes the old stream, which may be closed
    root.setLevel(level)
    return root


def get_logger(name):
    return logging.getLogger(f"brainalign.{name}")


def progress(iterable=None, total=None, desc=None, disable=None, **kw):
    """A tqdm bar on rank 0 only (and only when stderr is a terminal or BRAINALIGN_PROGRESS=1)."""
    from tqdm.auto import tqdm

    if disable is None:
        rank, _ = rank_info()
        forced = os.environ.get("BRAINALIGN_PROGRESS")
        disable = rank != 0 or (forced == "0") or (forced is None and not sys.stderr.isatty())
    return tqdm(iterable, total=total, desc=desc, disable=disable, dynamic_ncols=True, **kw)
