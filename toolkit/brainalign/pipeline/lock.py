"""One run per output folder at a time.

Every verb that writes stage outputs holds ``OUTPUT/.brainalign.lock/`` while it runs: a directory with one
entry per holding process (``<host>-<pid>.json``: host, pid, process start, verb, start time, token). A
second run finds a live entry of another holder and stops with one line naming it (exit 2);
``brainalign status`` lists the live entries ("a run is in progress").

One holder may be several processes: the MPI ranks of one job (only rank 0 enters, the other ranks follow
it) and the jobs of one ``brainalign submit`` (they carry the submission's token in BRAINALIGN_LOCK_TOKEN:
entries with the same token do not exclude each other, so an extraction array's tasks run side by side).

Stale entries are dropped: on the same host, when the pid is gone or is another process (its start time
differs); on another host, when the entry's heartbeat (its mtime, refreshed every HEARTBEAT_S by a thread)
is older than BRAINALIGN_LOCK_STALE_S seconds (default 300). The check-and-enter step is itself serialised
by an O_EXCL guard file, so two runs that start together cannot both enter.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Optional

from ..errors import BrainAlignError, output_error
from ..log import get_logger, rank_info

log = get_logger("lock")

LOCK_DIR = ".brainalign.lock"
TOKEN_ENV = "BRAINALIGN_LOCK_TOKEN"
HEARTBEAT_S = 30.0
GUARD_WAIT_S = 10.0


class OutputLocked(BrainAlignError):
    """Another run holds the output folder."""


def stale_after() -> float:
    return float(os.environ.get("BRAINALIGN_LOCK_STALE_S") or 300)


def _proc_start(pid: int) -> Optional[str]:
    """The start time of ``pid`` (clock ticks since boot; field 22 of /proc/PID/stat), None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int) -> bool:
    """``pid`` runs (a zombie, killed but not reaped, e.g. where no init reaps orphans, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def describe(entry: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.get("started", 0)))
    verb = entry.get("verb") or "a run"
    return f"`brainalign {verb}` on host {entry.get('host')}, pid {entry.get('pid')}, since {since}"


def _stale(entry: dict, path: Path) -> Optional[str]:
    if entry.get("host") == socket.gethostname():
        pid = int(entry.get("pid", -1))
        if not _alive(pid):
            return f"pid {pid} is gone"
        start = _proc_start(pid)
        if entry.get("proc_start") and start and start != entry["proc_start"]:
            return f"pid {pid} is another process now"
        return None
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        return "gone"
    return f"no heartbeat for {age:.0f} s" if age > stale_after() else None


def holders(out) -> list:
    """The live entries of ``out``'s lock (stale ones are left alone here: status only reads)."""
    d = Path(out) / LOCK_DIR
    live = []
    for p in sorted(d.glob("*.json")) if d.is_dir() else ():
        try:
            entry = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if _stale(entry, p) is None:
            live.append(entry)
    return live


@contextlib.contextmanager
def _guard(d: Path):
    """A short mutex around reading and entering the lock (an O_EXCL file; one older than 60 s is dead)."""
    g = d / ".guard"
    t0 = time.monotonic()
    while True:
        try:
            fd = os.open(g, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            os.close(fd)
            break
        except FileExistsError:
            try:
                if time.time() - g.stat().st_mtime > 60:
                    g.unlink()
                    continue
            except FileNotFoundError:
                continue
            if time.monotonic() - t0 > GUARD_WAIT_S:
                raise OutputLocked(f"cannot enter the lock {d}: {g} is held for over {GUARD_WAIT_S:.0f} s "
                                   "(delete it if no brainalign runs on this output)") from None
            time.sleep(0.05)
    try:
        yield
    finally:
        try:
            g.unlink()
        except FileNotFoundError:
            pass


class OutputLock:
    """``with OutputLock(cfg.out, verb):`` holds the output folder (see the module doc)."""

    def __init__(self, out, verb: str, token: Optional[str] = None):
        self.dir = Path(out) / LOCK_DIR
        self.verb = verb
        self.token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        self.path: Optional[Path] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def acquire(self):
        if rank_info()[0] != 0:            # MPI ranks > 0 (and torchrun workers) follow rank 0
            return self
        try:
            self._enter()
        except OSError as e:               # a full disk, a read-only or foreign output folder: one line
            err = output_error(e, self.dir)
            if err is None:
                raise
            raise err from None
        self._thread = threading.Thread(target=self._beat, name="brainalign-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _enter(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        host, pid = socket.gethostname(), os.getpid()
        with _guard(self.dir):
            for p in sorted(self.dir.glob("*.json")):
                try:
                    entry = json.loads(p.read_text())
                except (OSError, ValueError):
                    entry = {}
                why = _stale(entry, p) if entry else "unreadable"
                if why:
                    log.warning("removing a stale lock entry %s (%s)", p, why)
                    p.unlink(missing_ok=True)
                    continue
                if entry.get("pid") == pid and entry.get("host") == host:
                    continue
                if self.token and entry.get("token") == self.token:
                    continue                  # another job of the same submission
                hint = f"; if that run is gone, delete {p}" if entry.get("host") != host else ""
                raise OutputLocked(f"{self.dir.parent} is in use by {describe(entry)} (one run per output "
                                   f"folder at a time{hint})")
            self.path = self.dir / f"{host}-{pid}.json"
            entry = {"host": host, "pid": pid, "proc_start": _proc_start(pid), "verb": self.verb,
                     "started": time.time(), "token": self.token}
            tmp = self.path.with_suffix(".tmp")
            try:
                tmp.write_text(json.dumps(entry))
                os.replace(tmp, self.path)
            finally:
                tmp.unlink(missing_ok=True)

    def _beat(self):
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self):
        self._stop.set()
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            try:
                self.dir.rmdir()
            except OSError:
                pass
            self.path = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False
