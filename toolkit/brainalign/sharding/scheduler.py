"""Dynamic unit scheduling with design-matrix affinity, in one process or across MPI ranks.

Units that share an X (same feature set, layer, outer fold; key ``unit.xkey``) form a *group*. A worker
keeps drawing units from the group it holds, so it builds that group's solver once; when its group is
empty it opens the next untouched group; when none is left it joins the group with the most pending
units (work stealing), so the last units of a fit spread over every rank instead of idling them.

Across MPI ranks, rank 0 runs the scheduler in a :class:`Coordinator` thread that answers requests from
ranks 1..N-1 while rank 0's main thread computes units like every other rank (BLAS and sleeps release
the GIL; the thread polls with ``Iprobe`` and sleeps backing off to 20 ms, so it never busy-waits).
Workers ask for one unit at a time and piggyback how many units they finished since their last request
(the progress bar on rank 0 counts units done on every rank).
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque

TAG_REQUEST, TAG_WORK = 7101, 7102


class UnitScheduler:
    """Hands out ``units`` (objects with a hashable ``xkey``) one at a time; thread-safe.

    Stealing is cost-aware: a worker joins a group held by another only if that group's pending units take
    longer than building its solver plus one unit (mean times reported by the workers), so the tail of a
    fit does not duplicate expensive solver builds for little work. ``on_done(n)`` is called (under the
    lock) when workers report ``n`` finished units.
    """

    def __init__(self, units, on_done=None):
        self._groups: OrderedDict = OrderedDict()
        for u in units:
            self._groups.setdefault(u.xkey, deque()).append(u)
        self._fresh = deque(self._groups)
        self._held: dict = {}
        self._lock = threading.Lock()
        self._on_done = on_done
        self.n_total = sum(len(g) for g in self._groups.values())
        self.n_done = 0
        self.error = None
        self._unit_s = self._build_s = 0.0
        self._n_timed = self._n_builds = 0

    def _worth_stealing(self, pending):
        if self._n_timed == 0 or self._n_builds == 0:
            return True
        unit, build = self._unit_s / self._n_timed, self._build_s / self._n_builds
        return pending * unit > build + unit

    def next(self, worker):
        """The next unit for ``worker`` (any hashable id), or None when all are handed out or a worker failed."""
        with self._lock:
            if self.error is not None:
                return None
            key = self._held.get(worker)
            if key is None or not self._groups[key]:
                key = None
                while self._fresh:
                    k = self._fresh.popleft()
                    if self._groups[k]:
                        key = k
                        break
                if key is None:   # steal: join the group with the most pending units, if worth its build
                    key = max((k for k, g in self._groups.items() if g), key=lambda k: len(self._groups[k]),
                              default=None)
                    if key is None or not self._worth_stealing(len(self._groups[key])):
                        return None
                self._held[worker] = key
            return self._groups[key].popleft()

    def done(self, n=1, unit_s=0.0, build_s=0.0, builds=0):
        """``n`` units finished, taking ``unit_s`` seconds in all besides ``builds`` solver builds (``build_s``)."""
        with self._lock:
            self.n_done += n
            self._n_timed += n
            self._unit_s += unit_s
            self._n_builds += builds
            self._build_s += build_s
            if self._on_done and n:
                self._on_done(n)

    def fail(self, message):
        """Stop handing out work (the first failure message is kept)."""
        with self._lock:
            if self.error is None:
                self.error = message


class LocalSource:
    """Unit source for the process that owns the scheduler (single process, or MPI rank 0)."""

    def __init__(self, scheduler, worker=0):
        self.scheduler, self.worker = scheduler, worker

    def next(self):
        return self.scheduler.next(self.worker)

    def done(self, unit, unit_s=0.0, build_s=0.0, builds=0):
        self.scheduler.done(1, unit_s, build_s, builds)

    def fail(self, message):
        self.scheduler.fail(message)

    def close(self):
        pass


class RemoteSource:
    """Unit source for MPI ranks > 0: asks rank 0's Coordinator for each unit.

    The reply is awaited with a non-blocking receive and short sleeps: MPICH's blocking receive spins a
    core, which would steal CPU from the ranks computing on an oversubscribed node.
    """

    def __init__(self, comm, poll_s=0.001):
        self.comm, self.poll_s, self._finished = comm, poll_s, False
        self._stats = [0, 0.0, 0.0, 0]

    def next(self):
        self.comm.send(("next", tuple(self._stats)), dest=0, tag=TAG_REQUEST)
        self._stats = [0, 0.0, 0.0, 0]
        req = self.comm.irecv(source=0, tag=TAG_WORK)
        while True:
            ok, unit = req.test()
            if ok:
                break
            time.sleep(self.poll_s)
        self._finished = unit is None
        return unit

    def done(self, unit, unit_s=0.0, build_s=0.0, builds=0):
        st = self._stats
        st[0] += 1
        st[1] += unit_s
        st[2] += build_s
        st[3] += builds

    def fail(self, message):
        if not self._finished:        # after "no more work" the coordinator no longer listens to this rank
            self._finished = True
            self.comm.send(("error", message), dest=0, tag=TAG_REQUEST)

    def close(self):
        pass


class Coordinator(threading.Thread):
    """Serves ``scheduler`` to ranks 1..size-1 until each has been told there is no more work or has failed."""

    def __init__(self, comm, scheduler, poll_s=0.02):
        super().__init__(name="brainalign-coordinator", daemon=True)
        self.comm, self.scheduler, self.poll_s = comm, scheduler, poll_s

    def run(self):
        from mpi4py import MPI

        waiting = set(range(1, self.comm.Get_size()))
        status = MPI.Status()
        delay = 0.0005
        while waiting:
            if not self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=TAG_REQUEST, status=status):
                time.sleep(delay)                        # back off to poll_s while no request comes
                delay = min(2 * delay, self.poll_s)
                continue
            delay = 0.0005
            src = status.Get_source()
            kind, payload = self.comm.recv(source=src, tag=TAG_REQUEST)
            if kind == "error":
                self.scheduler.fail(f"rank {src}: {payload}")
                waiting.discard(src)
                continue
            self.scheduler.done(*payload)
            try:
                unit = self.scheduler.next(src)
            except Exception as e:  # pragma: no cover - a scheduler bug must not leave ranks waiting
                self.scheduler.fail(f"rank 0 coordinator: {e!r}")
                unit = None
            self.comm.send(unit, dest=src, tag=TAG_WORK)
            if unit is None:
                waiting.discard(src)
