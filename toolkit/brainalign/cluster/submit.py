"""`brainalign submit`: run the plan (:mod:`brainalign.cluster.plan`) through submitit.

Every job runs a :class:`StageTask`: a small picklable callable that runs the job's `brainalign` commands
as subprocesses (the same command lines ``--dry-run`` prints and the sbatch scripts run), so the
submitit worker needs only the host Python, and with a container image only the command runs inside it.
Under ``srun`` with several tasks (the MPI fit) every task runs the same command; the PMI file descriptor
is passed on, so each child joins one MPI world.

Jobs are checkpointable (``profile.requeue``): on the USR2 that SLURM sends ``signal_delay_s`` before the
time limit (or on preemption) submitit calls :meth:`CheckpointableStageTask.checkpoint`, which stops the
child and resubmits the same commands without ``--force``; every stage resumes from its complete
shards/units, so the requeued job finishes the work instead of redoing it.

``--cluster slurm``: sbatch through submitit, chained with ``afterok`` (+ ``kill-on-invalid-dep``).
``--cluster local``: the same jobs as subprocesses of this process (submitit LocalExecutor), one after
the other (arrays with ``array_parallelism`` tasks at once); ``debug``: in this process (DebugExecutor).
Both always wait.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from submitit.helpers import Checkpointable, DelayedSubmission

from ..errors import BrainAlignError, ConfigError
from ..log import get_logger
from ..stagetable import VERBS
from .plan import Plan, PlannedJob, build_plan
from .profile import load_profile

log = get_logger("submit")

BAD_STATES = ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
              "SPECIAL_EXIT", "REVOKED")
TAIL_LINES = 25
# the SLURM options (Plan.slurm_options) that submitit's SlurmExecutor takes as parameters of its own; the
# others go in its additional_parameters ("mem" too: submitit writes its own mem in GB, which SLURM refuses)
SUBMITIT_PARAMETERS = ("job_name", "time", "cpus_per_task", "nodes", "ntasks_per_node", "partition", "qos",
                       "account", "gpus_per_node")


class JobFailed(BrainAlignError):
    """A submitted job failed; the message names it and its log (exit code 1)."""

    exit_code = 1


class StageFailed(RuntimeError):
    """Raised inside a job when one of its commands exits non-zero."""


# ---- what runs inside a job -----------------------------------------------------------------------

def _ignore_usr2():  # pragma: no cover - runs in the child between fork and exec
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def run_command(argv: list[str], cwd: str, env: Optional[dict] = None) -> int:
    """Run one command; its output goes to this job's log. Returns the exit status.

    The child ignores USR2 (the time-limit / preemption signal is the parent's to handle), inherits the
    PMI file descriptor under ``srun --mpi=pmi2`` and is stopped if the parent is interrupted.
    """
    pass_fds = ()
    if os.environ.get("PMI_FD", "").isdigit():
        pass_fds = (int(os.environ["PMI_FD"]),)
    sys.stdout.flush()
    sys.stderr.flush()
    environ = dict(os.environ)
    for k, v in (env or {}).items():
        environ.setdefault(k, v)      # the user's own setting wins
    proc = subprocess.Popen(argv, cwd=cwd, env=environ, pass_fds=pass_fds, preexec_fn=_ignore_usr2)
    try:
        return proc.wait()
    finally:
        if proc.poll() is None:        # interrupted (checkpoint, cancel): stop the child too
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# a stage stopped by SLURM/submitit: killed by the signal, or (brainalign.interrupt) saved its work and exited
# 128 + signum
STOPPED = tuple(x for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2) for x in (-s, 128 + s))


class StageTask:
    """Run ``commands`` (argv lists) in order in ``cwd``; raise :class:`StageFailed` on the first failure.

    ``env`` is added to the commands' environment (the caller's own values win)."""

    signal_grace_s = 90.0   # a child killed by SIGTERM/USR2: wait this long for the requeue before failing

    def __init__(self, name: str, commands: list[list[str]], cwd: str, env: Optional[dict] = None):
        self.name = name
        self.commands = [list(c) for c in commands]
        self.cwd = str(cwd)
        self.env = dict(env or {})

    def __call__(self):
        t0 = time.time()
        for argv in self.commands:
            print(f"brainalign submit: job {self.name}: $ {' '.join(argv)}", flush=True)
            rc = run_command(argv, self.cwd, self.env)
            if rc != 0:
                if rc in STOPPED:
                    # SLURM stopped the step (preemption, time limit, scancel): give submitit's USR2 handler
                    # time to requeue us, or SLURM time to kill this job, rather than record a failure
                    deadline = time.time() + self.signal_grace_s
                    while time.time() < deadline:
                        time.sleep(0.5)
                verb = next((a for a in argv if a in VERBS), argv[-1])
                how = (f" (killed by {signal.Signals(-rc).name})" if rc < 0 else
                       f" (stopped by {signal.Signals(rc - 128).name})" if rc in STOPPED else "")
                raise StageFailed(f"job {self.name}: `brainalign {verb}` exited with status {rc}{how}")
        return {"job": self.name, "seconds": round(time.time() - t0, 3),
                "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
                "slurm_array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID", ""),
                "slurm_procid": os.environ.get("SLURM_PROCID", "")}

    def __repr__(self):
        return f"{type(self).__name__}({self.name!r}, {len(self.commands)} commands)"


class CheckpointableStageTask(StageTask, Checkpointable):
    """A StageTask that submitit requeues on time limit / preemption (same commands, minus ``--force``)."""

    def checkpoint(self, *args, **kwargs):
        log.warning("job %s: checkpoint: requeueing (every stage resumes from its complete outputs)", self.name)
        again = [[a for a in c if a != "--force"] for c in self.commands]
        return DelayedSubmission(CheckpointableStageTask(self.name, again, self.cwd, self.env))


# ---- executors ----------------------------------------------------------------------------------------

def log_folder(plan: Plan, job: PlannedJob) -> Path:
    """Where a job's submitit logs go: ``<plan folder>/logs/<stage>/`` (the file names carry the job id)."""
    return plan.folder / "logs" / job.name


def _executor(plan: Plan, job: PlannedJob, dependency: Optional[str]):
    import submitit

    prof = plan.profile
    logs = log_folder(plan, job)
    if plan.cluster == "debug":
        return submitit.DebugExecutor(folder=logs)
    if plan.cluster == "local":
        ex = submitit.LocalExecutor(folder=logs, python=plan.python if prof.python else None)
        ex.update_parameters(timeout_min=job.time_min(), tasks_per_node=1, gpus_per_node=job.gpus,
                             signal_delay_s=prof.signal_delay_s)
        return ex
    ex = submitit.SlurmExecutor(folder=logs, max_num_timeout=prof.max_requeues,
                                python=plan.python if prof.python else None)
    params, extra = {"signal_delay_s": prof.signal_delay_s}, {}
    for key, value in plan.slurm_options(job).items():      # submitit's own parameter where it has one
        name = key.replace("-", "_")
        if name in SUBMITIT_PARAMETERS:
            params[name] = value
        else:
            extra[key] = value
    if prof.setup:
        params["setup"] = list(prof.setup)
    if job.ranks > 1:
        params["srun_args"] = [f"--mpi={job.mpi}"]
    if job.array_parallelism:
        params["array_parallelism"] = job.array_parallelism
    if dependency:
        extra["dependency"] = dependency
        extra["kill-on-invalid-dep"] = "yes"
    params["additional_parameters"] = extra
    ex.update_parameters(**params)
    return ex


def _tasks(plan: Plan, job: PlannedJob):
    cls = CheckpointableStageTask if plan.profile.requeue else StageTask
    return [cls(job.name if len(job.tasks) == 1 else f"{job.name}[{i}]", t, str(plan.cwd), plan.job_env(job))
            for i, t in enumerate(job.tasks)]


def _single_tasks(sjob) -> list:
    """The per-task submitit Jobs of a submitted job (MPI ranks are tasks)."""
    return [sjob.task(i) for i in range(sjob.num_tasks)] if sjob.num_tasks > 1 else [sjob]


def _tail(path, n=TAIL_LINES) -> str:
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(lines[-n:])


# ---- SLURM job states without accounting ----------------------------------------------------------

def _run(args, timeout=30) -> Optional[str]:
    try:
        p = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout if p.returncode == 0 else None


def slurm_states(job_id: str) -> dict[str, str]:
    """{SLURM id (``123`` or ``123_4``): state} from squeue (-t all keeps finished jobs for MinJobAge),
    falling back to sacct where SLURM has forgotten the job. Empty when neither knows it."""
    out = _run(["squeue", "-h", "-r", "-t", "all", "-j", str(job_id), "-o", "%i|%T"])
    states = {}
    for line in (out or "").splitlines():
        if "|" in line:
            i, s = line.strip().split("|", 1)
            states[i] = s.strip()
    if not states:
        out = _run(["sacct", "-n", "-X", "-P", "-j", str(job_id), "-o", "JobID,State"])
        for line in (out or "").splitlines():
            if "|" in line:
                i, s = line.strip().split("|", 1)
                states[i] = s.split()[0] if s else "UNKNOWN"
    return states


class Submitted:
    """One planned job after submission: its submitit job(s), SLURM id and current state."""

    def __init__(self, planned: PlannedJob, sjobs: list):
        self.planned = planned
        self.sjobs = sjobs
        first = sjobs[0].job_id
        self.job_id = first.split("_")[0] if planned.is_array else first
        self.state = "PENDING"
        self.failed_task = None

    @property
    def name(self):
        return self.planned.name

    def units(self):
        """(SLURM id, single-task submitit job) for every array task / MPI rank."""
        for sj in self.sjobs:
            for t in _single_tasks(sj):
                yield sj.job_id, t

    def poll(self) -> str:
        from submitit.core.utils import pickle_load

        slurm = slurm_states(self.job_id)
        states = []
        for sid, t in self.units():
            res = t.paths.result_pickle
            if res.exists():
                try:
                    outcome, _ = pickle_load(res)
                except Exception:   # being written
                    states.append("RUNNING")
                    continue
                if outcome == "success":
                    states.append("COMPLETED")
                    continue
                self.failed_task = t
                states.append("FAILED")
                continue
            s = slurm.get(sid) or slurm.get(self.job_id) or ("UNKNOWN" if slurm else "GONE")
            if s in BAD_STATES:
                self.failed_task = t
            states.append(s)
        for bad in ("FAILED",) + BAD_STATES:
            if bad in states:
                self.state = bad
                return bad
        if all(s == "COMPLETED" for s in states):
            self.state = "COMPLETED"
        elif any(s in ("RUNNING", "COMPLETING", "CONFIGURING") for s in states):
            n = sum(s == "COMPLETED" for s in states)
            self.state = "RUNNING" if len(states) == 1 else f"RUNNING ({n}/{len(states)} done)"
        elif "GONE" in states and all(s in ("GONE", "COMPLETED") for s in states):
            self.state = "GONE"     # SLURM forgot it and it left no result: treated as failed after a while
        else:
            self.state = next((s for s in states if s != "COMPLETED"), "PENDING")
        return self.state


# ---- submission --------------------------------------------------------------------------------------

def _stamp() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def _git_commit() -> str:
    from ..provenance import git_commit

    return git_commit()


def make_plan(cfg, cluster="slurm", profile=None, force=False, folder=None) -> Plan:
    """Load the profile and build the plan (nothing written). ``folder``: the submission folder."""
    prof = load_profile(profile)
    if folder is None:
        base = Path(prof.folder) if prof.folder else cfg.out / "submit"
        folder = base / _stamp()
    folder = Path(folder)
    return build_plan(cfg, prof, cluster, config_path=folder / "config.yaml", folder=folder, force=force,
                      git_commit=_git_commit())


def refuse_unfit(plan: Plan):
    """A plan with a job that cannot fit (brainalign.cluster.sizing) is not submitted: ConfigError (exit 2)
    naming the first problem (``--dry-run`` prints them all)."""
    probs = plan.problems
    if probs:
        more = f" (and {len(probs) - 1} more: see --dry-run)" if len(probs) > 1 else ""
        raise ConfigError(f"cannot submit: {probs[0]}{more}")


def _preflight(plan: Plan):
    import shutil

    if plan.cluster == "slurm":
        for exe in ("sbatch", "srun", "squeue"):
            if shutil.which(exe) is None:
                raise BrainAlignError(f"--cluster slurm: `{exe}` not found on PATH (use --cluster local, or run "
                                      "where SLURM's client commands are; for a test cluster see slurm/README.md)")
    img = plan.profile.container.image
    if img:
        if not Path(img).exists():
            raise ConfigError(f"profile {plan.profile.source}: container.image: not found: {img}")
        if plan.cluster != "slurm" and shutil.which(plan.profile.container.runtime) is None:
            raise ConfigError(f"profile {plan.profile.source}: container.runtime: "
                              f"`{plan.profile.container.runtime}` not found on PATH")


def _write_folder(plan: Plan, cfg):
    from ..h5io import atomic_path

    plan.folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(plan.config) as tmp:
        Path(tmp).write_text(cfg.text)
    with atomic_path(plan.folder / "plan.json") as tmp:
        Path(tmp).write_text(plan.to_json() + "\n")
    with atomic_path(plan.folder / "plan.txt") as tmp:
        Path(tmp).write_text(plan.describe() + "\n")


def _record(plan: Plan, submitted: list[Submitted]):
    from ..h5io import atomic_path

    rec = {"cluster": plan.cluster, "submitted": _dt.datetime.now().isoformat(timespec="seconds"),
           "jobs": [{"name": s.name, "job_id": s.job_id, "tasks": [sj.job_id for sj in s.sjobs],
                     "state": s.state, "logs": str(log_folder(plan, s.planned))} for s in submitted]}
    with atomic_path(plan.folder / "jobs.json") as tmp:
        Path(tmp).write_text(json.dumps(rec, indent=2) + "\n")


def _submit_slurm(plan: Plan) -> list[Submitted]:
    submitted: list[Submitted] = []
    by_name: dict[str, Submitted] = {}
    try:
        for job in plan.jobs:
            dep = ("afterok:" + ":".join(by_name[a].job_id for a in job.after)) if job.after else None
            ex = _executor(plan, job, dep)
            tasks = _tasks(plan, job)
            sjobs = ex.submit_array(tasks) if len(tasks) > 1 else [ex.submit(tasks[0])]
            s = Submitted(job, sjobs)
            submitted.append(s)
            by_name[job.name] = s
            log.info("submitted %s: SLURM job %s%s%s", job.name, s.job_id,
                     f" (array of {len(tasks)})" if len(tasks) > 1 else "",
                     f" after {dep}" if dep else "")
    except Exception as e:
        if submitted:   # do not leave half a chain queued
            _run(["scancel", *[s.job_id for s in submitted]])
        if isinstance(e, BrainAlignError):
            raise
        raise BrainAlignError(f"sbatch refused job {job.name}: {str(e).strip().splitlines()[-1] if str(e) else e}"
                              + (f" (cancelled {', '.join(s.job_id for s in submitted)})" if submitted else "")) from None
    return submitted


def _fail(plan: Plan, s: Submitted, detail: str, submitted: list[Submitted]):
    t = s.failed_task
    err = t.paths.stderr if t is not None else None
    print(f"brainalign submit: job {s.name} ({s.job_id}) {s.state}{detail}", file=sys.stderr)
    if err is not None:
        print(f"----- {err} (last {TAIL_LINES} lines) -----", file=sys.stderr)
        print(_tail(err), file=sys.stderr)
        print("-----", file=sys.stderr)
    rest = [x for x in submitted if x is not s and x.state != "COMPLETED"]
    if rest and plan.cluster == "slurm":
        _run(["scancel", *[x.job_id for x in rest]])
        for x in rest:
            x.state = "CANCELLED"
    _record(plan, submitted)
    _print_states(submitted)
    raise JobFailed(f"job {s.name} ({s.job_id}) {s.state}; log: {err or plan.folder / 'logs'}")


def _print_states(submitted: list[Submitted]):
    for s in submitted:
        print(f"  {s.name:<9} {s.job_id:<12} {s.state}")


def wait_slurm(plan: Plan, submitted: list[Submitted], poll_s: float = 2.0, gone_grace_s: float = 60.0) -> None:
    """Poll every job until the last completes; on a failure cancel the rest, print the failing task's
    stderr tail and raise :class:`JobFailed`."""
    t0 = time.time()
    last = {}
    gone_since = {}
    while True:
        for s in submitted:
            st = s.poll()
            if st != last.get(s.name):
                print(f"  {time.strftime('%H:%M:%S')} {s.name:<9} {s.job_id:<12} {st}", flush=True)
                last[s.name] = st
            if st == "GONE":
                gone_since.setdefault(s.name, time.time())
                if time.time() - gone_since[s.name] > gone_grace_s:
                    _fail(plan, s, ": SLURM no longer knows the job and it left no result", submitted)
            else:
                gone_since.pop(s.name, None)
            if st in ("FAILED",) + BAD_STATES:
                _fail(plan, s, "", submitted)
        if all(s.state == "COMPLETED" for s in submitted):
            _record(plan, submitted)
            print(f"brainalign submit: all {len(submitted)} jobs COMPLETED in {time.time() - t0:.0f} s")
            return
        time.sleep(poll_s)


def _run_here(plan: Plan) -> list[Submitted]:
    """local/debug: submit each job when the one before it has succeeded (no scheduler dependencies)."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

    done: list[Submitted] = []
    for job in plan.jobs:
        ex = _executor(plan, job, None)
        tasks = _tasks(plan, job)
        width = (job.array_parallelism or 1) if plan.cluster == "local" else len(tasks)
        sjobs = []
        s = None
        print(f"  {time.strftime('%H:%M:%S')} {job.name:<9} RUNNING ({len(tasks)} task{'s' * (len(tasks) > 1)})",
              flush=True)
        for i in range(0, len(tasks), max(1, width)):
            batch = [ex.submit(t) for t in tasks[i:i + width]]
            sjobs += batch
            s = Submitted(job, sjobs)
            s.job_id = sjobs[0].job_id if len(sjobs) == 1 else f"{sjobs[0].job_id}..{sjobs[-1].job_id}"
            for sj in batch:
                # exception() waits (local) or runs the task in this process (debug) without the debug
                # executor's pdb post-mortem; None: success
                try:
                    e = sj.exception()
                except (FailedJobError, UncompletedJobError) as err:
                    e = err
                if e is not None:
                    s.state, s.failed_task = "FAILED", (sj if plan.cluster == "local" else None)
                    done.append(s)
                    _fail(plan, s, "" if plan.cluster == "local" else f": {e}", done)
        s.state = "COMPLETED"
        done.append(s)
        print(f"  {time.strftime('%H:%M:%S')} {job.name:<9} COMPLETED", flush=True)
    return done


def submit_study(cfg, cluster: str = "slurm", profile: Optional[str] = None, dry_run: bool = False,
                 wait: bool = False, force: bool = False, emit_sbatch: Optional[str] = None,
                 poll_s: float = 2.0) -> Plan:
    """Plan the study and submit it (or print it with ``dry_run``; write sbatch scripts with
    ``emit_sbatch=DIR``). Returns the plan. Raises JobFailed (exit 1) when a waited-for job fails."""
    from ..pipeline.checkpoints import check_checkpoints

    check_checkpoints(cfg)              # before any job is planned: a missing checkpoint fails here, not in a job
    if emit_sbatch:
        from .sbatch import write_sbatch

        plan = make_plan(cfg, cluster, profile, force, folder=Path(emit_sbatch).resolve())
        if cluster != "slurm":
            raise ConfigError("--emit-sbatch writes SLURM scripts: use it with --cluster slurm")
        if not plan.jobs:
            print(plan.describe())
            return plan
        if not dry_run:
            refuse_unfit(plan)
        paths = write_sbatch(plan, cfg)
        if dry_run:
            print(plan.describe())
        print(f"brainalign submit: wrote {len(paths)} files to {plan.folder} (submit: bash "
              f"{plan.folder / 'submit.sh'})")
        return plan
    plan = make_plan(cfg, cluster, profile, force)
    if dry_run or not plan.jobs:
        print(plan.describe())
        return plan
    refuse_unfit(plan)
    _preflight(plan)
    _write_folder(plan, cfg)
    print(f"brainalign submit: {plan.name}: {len(plan.jobs)} jobs on {cluster} (plan, frozen config and logs "
          f"in {plan.folder})", flush=True)
    if cluster == "slurm":
        submitted = _submit_slurm(plan)
        _record(plan, submitted)
        print("  " + ", ".join(f"{s.name} {s.job_id}" + (f" (array of {len(s.sjobs)})" if len(s.sjobs) > 1 else "")
                               + (f" ({s.planned.ranks} ranks)" if s.planned.ranks > 1 else "") for s in submitted))
        print(f"  monitor: squeue -j {','.join(s.job_id for s in submitted)}; logs: {plan.folder / 'logs'}/"
              "<stage>/<jobid>_<task>_log.{out,err}", flush=True)
        if not wait:
            return plan
        wait_slurm(plan, submitted, poll_s=poll_s)
    else:
        from ..pipeline.lock import OutputLock

        with OutputLock(plan.output, "submit", token=plan.token):     # its jobs share the token
            submitted = _run_here(plan)
        _record(plan, submitted)
    print(f"brainalign submit: results in {plan.output}/ (report: {plan.output / 'report' / 'index.html'})")
    return plan
