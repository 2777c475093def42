"""sbatch scripts from the plan, for users who do not use submitit.

``brainalign submit CONFIG --cluster slurm --emit-sbatch DIR`` writes into DIR:
``config.yaml`` (the frozen config the scripts read), ``NN-<job>.sbatch`` (one per job, from
``slurm/templates/job.sbatch``), ``submit.sh`` (from ``slurm/templates/submit.sh``: sbatch every
script in order with ``--dependency=afterok``), ``plan.txt`` and ``plan.json``. Logs go to DIR/logs/.
Templates use ``@NAME@`` placeholders (like ``slurm/local/slurm.conf.in``).
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

from .plan import Plan, PlannedJob
from .profile import REPO

TEMPLATES = REPO / "slurm" / "templates"


def fill(template: str, values: dict) -> str:
    """Replace every ``@KEY@``; a placeholder left unfilled is a bug (ValueError)."""
    out = re.sub(r"@([A-Z_]+)@", lambda m: values[m.group(1)] if m.group(1) in values else m.group(0), template)
    left = sorted(set(re.findall(r"@([A-Z_]+)@", out)))
    if left:
        raise ValueError(f"unfilled template placeholders: {', '.join(left)}")
    return out


def _flag(key: str, value) -> str:
    return f"#SBATCH --{key}" if value is True else f"#SBATCH --{key}={value}"


def sbatch_header(plan: Plan, job: PlannedJob) -> list[str]:
    """The ``#SBATCH`` lines: the job's SLURM options (Plan.slurm_options), its log files, array and requeue
    signal."""
    logs = plan.folder / "logs"
    pattern = "%A_%a" if job.is_array else "%j"
    h = {}
    for k, v in plan.slurm_options(job).items():
        h[k] = v
        if k == "ntasks-per-node":
            h.update({"output": f"{logs}/{job.name}_{pattern}.out", "error": f"{logs}/{job.name}_{pattern}.err",
                      "open-mode": "append"})
            if job.is_array:
                h["array"] = f"0-{len(job.tasks) - 1}%{job.array_parallelism}"
        elif k == "requeue" and plan.profile.requeue:
            h["signal"] = f"B:USR2@{plan.profile.signal_delay_s}"
    return [_flag(k, v) for k, v in h.items()]


_VAR = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*|\{[A-Za-z_][A-Za-z0-9_]*\})")


def shell_word(arg: str) -> str:
    """``arg`` as one shell word; an environment reference left in it (``/scratch/$USER`` from a profile's
    binds, unset where the plan was made) stays expandable on the node: double quotes, not single."""
    if not _VAR.search(arg):
        return shlex.quote(arg)
    parts, last = [], 0
    for m in _VAR.finditer(arg):
        parts.append(re.sub(r'([\\"`$])', r"\\\1", arg[last:m.start()]) + m.group(0))
        last = m.end()
    parts.append(re.sub(r'([\\"`$])', r"\\\1", arg[last:]))
    return '"' + "".join(parts) + '"'


def _step(argv: list[str]) -> str:
    return "step " + " ".join(shell_word(a) for a in argv)


def job_body(plan: Plan, job: PlannedJob) -> str:
    if job.is_array:
        lines = ['case "$SLURM_ARRAY_TASK_ID" in']
        for i, task in enumerate(job.tasks):
            eps = " ".join(job.episodes[i]) if job.episodes else ""
            lines.append(f"    {i})  # {eps}".rstrip())
            lines += [f"        {_step(c)}" for c in task]
            lines.append("        ;;")
        lines += ['    *) echo "brainalign: no task $SLURM_ARRAY_TASK_ID in this array" >&2; exit 2 ;;', "esac"]
        return "\n".join(lines)
    (task,) = job.tasks
    if job.ranks > 1:   # every rank runs the same command under srun
        srun = ["srun", f"--mpi={job.mpi}", "-n", str(job.ranks), "--ntasks-per-node", str(job.ranks // job.nodes)]
        return "\n".join(_step(srun + c) for c in task)
    return "\n".join(_step(c) for c in task)


def render_job(plan: Plan, job: PlannedJob) -> str:
    kind = (f"array of {len(job.tasks)} tasks" if job.is_array else
            f"MPI, {job.ranks} ranks" if job.ranks > 1 else "one task")
    return fill((TEMPLATES / "job.sbatch").read_text(), {
        "JOB": job.name, "KIND": kind, "PLAN": str(plan.folder / "plan.txt"),
        "SBATCH": "\n".join(sbatch_header(plan, job)), "WORKDIR": shlex.quote(str(plan.cwd)),
        "SETUP": "\n".join(plan.profile.setup) or "# (none)", "REQUEUE": "1" if plan.profile.requeue else "0",
        "ENV": "\n".join(f"export {k}=${{{k}:-{shlex.quote(v)}}}" for k, v in plan.job_env(job).items()),
        "BODY": job_body(plan, job)})


def script_name(i: int, job: PlannedJob) -> str:
    return f"{i:02d}-{job.name}.sbatch"


def render_submit(plan: Plan) -> str:
    chain = []
    for i, job in enumerate(plan.jobs, 1):
        var = job.name.replace("-", "_")
        after = ' "' + ":".join(f"${a.replace('-', '_')}" for a in job.after) + '"' if job.after else ""
        chain.append(f'{var}=$(submit {job.name} {script_name(i, job)}{after})')
    return fill((TEMPLATES / "submit.sh").read_text(), {"NAME": plan.name, "CHAIN": "\n".join(chain)})


def write_sbatch(plan: Plan, cfg) -> list[Path]:
    """Write the frozen config, one sbatch script per job, submit.sh and the plan into ``plan.folder``."""
    from ..h5io import atomic_path

    d = plan.folder
    (d / "logs").mkdir(parents=True, exist_ok=True)
    files = {plan.config: cfg.text, d / "plan.txt": plan.describe() + "\n", d / "plan.json": plan.to_json() + "\n",
             d / "submit.sh": render_submit(plan)}
    for i, job in enumerate(plan.jobs, 1):
        files[d / script_name(i, job)] = render_job(plan, job)
    for path, text in files.items():
        with atomic_path(path) as tmp:
            Path(tmp).write_text(text)
        if path.suffix in (".sh", ".sbatch"):
            path.chmod(0o755)
    return list(files)
