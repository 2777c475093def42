"""Stopping cleanly on the signals a cluster sends: SIGTERM (SLURM's time limit, scancel, preemption, and
what submitit's checkpoint sends a stage it stops), SIGINT (Ctrl-C) and SIGUSR1 (a common
``--signal=USR1@N`` / SUBMITIT_PREEMPT_SIGNAL choice).

While a stage runs (:func:`on_signals` around it, brainalign.pipeline.run_stage) such a signal raises
:class:`Interrupted` in the main thread. The stage's loops catch it on the way out, save the units they
finished (fit: the rank's buffered shard units; extract: the conditions of the episode in hand;
permutation: the subjects done; finetune: the last complete epoch is already on disk), set
``Interrupted.kept`` to a sentence saying what was kept, and re-raise; the CLI prints one line with it and
exits ``128 + signum`` (143 for SIGTERM). A re-run of the same command resumes from what was kept.

How it composes with submitit: its job wrapper binds SIGUSR2 (the checkpoint/requeue signal) and logs
SIGTERM/SIGCONT; brainalign's jobs run stages as child processes that ignore SIGUSR2
(brainalign.cluster.submit), so the wrapper checkpoints, requeues and then stops the child with SIGTERM,
which lands here. A signal that is ignored when the stage starts stays ignored; a Python handler that
was installed before (e.g. submitit's own, when a stage runs inside the wrapper's process) is called
after the stage has saved its work.
"""
from __future__ import annotations

import contextlib
import signal
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class Interrupted(BaseException):
    """A stop signal arrived while a stage ran. A BaseException, so ``except Exception`` blocks of the
    stages do not swallow it. ``kept``: what the stage saved (set by the stage on the way out)."""

    def __init__(self, signum: int, kept: str = ""):
        super().__init__(signum)
        self.signum = int(signum)
        self.kept = kept
        self.stage = ""                   # set by brainalign.pipeline.run_stage

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __str__(self):
        return (f"{self.stage + ' ' if self.stage else ''}interrupted by {self.name}: "
                + (self.kept or "outputs finished before it are kept; a re-run resumes from them"))


_state = {"raised": None}


def _raise(signum, frame):
    if _state["raised"] is not None:      # a second signal while the first one's work is being saved
        return
    _state["raised"] = signum
    raise Interrupted(signum)


@contextlib.contextmanager
def on_signals():
    """Within the block, SIGTERM/SIGINT/SIGUSR1 raise :class:`Interrupted` (main thread only; elsewhere a
    no-op). The previous handlers come back after the block; a previous Python handler of the signal that
    interrupted the block is then called (it may exit, e.g. submitit's requeue)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    _state["raised"] = None
    for s in SIGNALS:
        old = signal.getsignal(s)
        if old is signal.SIG_IGN:
            continue                      # nohup, or a parent that keeps the signal for itself
        previous[s] = old
        signal.signal(s, _raise)
    try:
        yield
    except Interrupted as e:
        for s, old in previous.items():
            signal.signal(s, old)
        previous = {}
        old = signal.getsignal(e.signum)
        if callable(old) and old not in (signal.default_int_handler, _raise):
            old(e.signum, None)
        raise
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
