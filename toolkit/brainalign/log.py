"""Logging that names host, MPI rank / SLURM task in every line (dated), and progress for long work: a tqdm
bar on a terminal (log lines printed above it, never through it), else -- a SLURM log, ``make demo > log`` --
one log line every ``BRAINALIGN_PROGRESS_PCT`` % (10) or ``BRAINALIGN_PROGRESS_S`` seconds (60), whichever
comes first, with the count, the rate and the ETA."""
import logging
import os
import socket
import sys
import time

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


LOG_FORMAT = "%(asctime)s %(host)s rank %(rank)s%(task)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"        # dated: a SLURM log spans days


class BarAwareHandler(logging.StreamHandler):
    """A stream handler that prints above a live tqdm bar (``tqdm.write``) instead of through it."""

    def emit(self, record):
        from tqdm import tqdm

        if not getattr(tqdm, "_instances", None):
            return super().emit(record)
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # pragma: no cover - as logging.StreamHandler does
            self.handleError(record)


def setup_logging(level="INFO"):
    global _CONFIGURED
    root = logging.getLogger("brainalign")
    if not _CONFIGURED:
        handler = BarAwareHandler(sys.stderr)
        handler.addFilter(_RankFilter())
        handler.setFormatter(logging.Formatter(LOG_FORMAT, DATE_FORMAT))
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


class LogProgress:
    """tqdm's interface (iterate, ``update``, ``close``, ``with``) for a stream that is not a terminal: an INFO
    line ``desc: n/total (p %) in 1m02s, 3.2 unit/s, ETA 2m10s`` every ``every_pct`` % of ``total`` or every
    ``every_s`` seconds, whichever comes first, and one at the end -- never one per unit."""

    def __init__(self, iterable=None, total=None, desc=None, unit="it", every_pct=None, every_s=None,
                 logger=None, clock=time.monotonic, **_):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.unit = iterable, total, unit
        self.desc = desc or "progress"
        self.every_pct = float(every_pct if every_pct is not None else os.environ.get("BRAINALIGN_PROGRESS_PCT", 10))
        self.every_s = float(every_s if every_s is not None else os.environ.get("BRAINALIGN_PROGRESS_S", 60))
        self.log = logger or get_logger("progress")
        self.clock = clock
        self.n = 0
        self.t0 = self._last_t = clock()
        self._last_n = 0
        self._closed = False

    def __iter__(self):
        for x in self.iterable:
            yield x
            self.update(1)
        self.close()

    def __len__(self):
        return self.total or 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def set_postfix(self, *a, **kw):          # tqdm API; the log lines carry counts, rate and ETA only
        pass

    def set_description(self, desc=None, refresh=True):
        self.desc = desc or self.desc

    def _due(self, now) -> bool:
        if now - self._last_t >= self.every_s:
            return True
        if self.total:
            step = max(1.0, self.total * self.every_pct / 100)
            return int(self.n // step) > int(self._last_n // step)
        return False

    def line(self, now) -> str:
        dt = now - self.t0
        rate = self.n / dt if dt > 0 else float("nan")
        if self.total:
            left = (self.total - self.n) / rate if rate > 0 else float("nan")
            head = f"{self.desc}: {self.n}/{self.total} {self.unit}s ({100 * self.n / self.total:.0f} %)"
        else:
            left, head = float("nan"), f"{self.desc}: {self.n} {self.unit}s"
        eta = "" if self.n >= (self.total or 0) and self.total else f", ETA {fmt_seconds(left)}"
        return f"{head} in {fmt_seconds(dt)}, {rate:.3g} {self.unit}/s{eta}"

    def update(self, n=1):
        self.n += n
        now = self.clock()
        if self._due(now) and not (self.total and self.n >= self.total):   # the last line comes from close()
            self.log.info("%s", self.line(now))
            self._last_t, self._last_n = now, self.n

    def close(self):
        if self._closed:
            return
        self._closed = True
        if self.n > self._last_n or (self.n == 0 and self.total == 0):
            self.log.info("%s", self.line(self.clock()))


class _NoProgress(LogProgress):
    """Ranks other than 0 and BRAINALIGN_PROGRESS=0: counts, says nothing."""

    def update(self, n=1):
        self.n += n

    def close(self):
        self._closed = True


def fmt_seconds(s) -> str:
    if s != s or s == float("inf"):           # NaN: no rate yet
        return "?"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s" if m else f"{sec}s"


def progress(iterable=None, total=None, desc=None, disable=None, **kw):
    """Progress of long work on rank 0: a tqdm bar when stderr is a terminal (or BRAINALIGN_PROGRESS=1), else
    log lines (:class:`LogProgress`); nothing on other ranks or with BRAINALIGN_PROGRESS=0."""
    rank, _ = rank_info()
    forced = os.environ.get("BRAINALIGN_PROGRESS")
    if disable or rank != 0 or forced == "0":
        return _NoProgress(iterable, total=total, desc=desc, **kw)
    if forced == "1" or (forced is None and sys.stderr.isatty()):
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, dynamic_ncols=True, **kw)
    return LogProgress(iterable, total=total, desc=desc, **kw)
