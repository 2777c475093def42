"""Submit details a user meets (issue 23, item 6), all without starting SLURM: the emitted sbatch keeps an
environment reference of a profile bind expandable on the node ($USER), local-run logs are found by stage,
and a job waits for the jobs whose outputs it reads (the demo's mlm does not wait for stats)."""
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from brainalign.cli import main
from brainalign.cluster.sbatch import shell_word

ROOT = Path(__file__).resolve().parents[1]


def demo_config(tmp_path, **over):
    cfg = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    cfg["data"]["root"], cfg["output"] = str(tmp_path / "data"), str(tmp_path / "out")
    cfg.update(over)
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def bash(script: str, **env) -> str:
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True,
                          env={"PATH": os.environ["PATH"], **env}).stdout


@pytest.mark.parametrize("arg", ["/scratch/$USER:/scratch/$USER", "${USER}_x", "it's $USER", 'a "b" `c` $(d) $USER',
                                 "plain/path", "with space", "100$", "$"])
def test_shell_word_is_one_word_and_expands_only_variables(arg):
    expect = arg.replace("${USER}", "alice").replace("$USER", "alice")
    assert bash(f"printf '%s\\n' {shell_word(arg)}", USER="alice") == expect + "\n"


def test_emitted_sbatch_expands_the_profile_bind_on_the_node(tmp_path, monkeypatch, capsys):
    """configs/cluster/example-gpu.yaml binds /scratch/$USER; where the plan is made USER may be unset (a
    container, cron): the sbatch line must not single-quote it, so the node's shell expands it."""
    monkeypatch.delenv("USER", raising=False)
    out = tmp_path / "sb"
    assert main(["submit", str(demo_config(tmp_path)), "--cluster", "slurm", "--emit-sbatch", str(out),
                 "--profile", str(ROOT / "configs" / "cluster" / "example-gpu.yaml")]) == 0
    line = next(ln.strip() for ln in (out / "01-simulate.sbatch").read_text().splitlines()
                if ln.strip().startswith("step "))
    assert "'/scratch/$USER" not in line
    argv = bash("step() { printf '%s\\n' \"$@\"; }\n" + line, USER="alice").splitlines()
    binds = [b for flag, b in zip(argv, argv[1:]) if flag == "--bind"]
    assert "/scratch/alice:/scratch/alice" in binds and "/datasets/cneuromod:/datasets/cneuromod:ro" in binds, argv
    assert argv[-2:] == ["simulate", str(out / "config.yaml")]


def test_the_demo_plan_runs_mlm_without_waiting_for_stats(tmp_path, capsys):
    """mlm reads the stimuli and the pretrained model (simulate), not fit or stats: it waits for simulate only;
    report reads mlm.csv and stats.h5: it waits for both."""
    sb = tmp_path / "sb"
    assert main(["submit", str(demo_config(tmp_path)), "--cluster", "slurm", "--emit-sbatch", str(sb)]) == 0
    jobs = {j["name"]: j for j in json.loads((sb / "plan.json").read_text())["jobs"]}
    assert jobs["mlm"]["after"] == ["simulate"]
    assert set(jobs["report"]["after"]) >= {"mlm", "stats", "fit"}
    assert set(jobs["stats"]["after"]) >= {"fit"} and "mlm" not in jobs["stats"]["after"]
    assert jobs["align"]["after"] == ["simulate", "extract"]
    chain = (sb / "submit.sh").read_text()
    assert 'mlm=$(submit mlm 06-mlm.sbatch "$simulate")' in chain
    assert 'report=$(submit report 07-report.sbatch "$simulate:$fit:$stats:$mlm")' in chain


def test_local_run_logs_are_named_by_stage(tmp_path, capsys):
    """--cluster local (subprocesses, no SLURM): each job's logs in logs/<stage>/."""
    cfg = demo_config(tmp_path, pipeline=["simulate"], simulate={"trs_per_run": 20, "grid": [8, 8, 6],
                                                                  "roi_voxels": 6, "pretrain_steps": 0})
    data = yaml.safe_load(cfg.read_text())
    data["model"]["checkpoint"] = None
    data["data"]["episodes"] = ["s01e01a", "s01e01b", "s01e02a"]
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["submit", str(cfg), "--cluster", "local"]) == 0
    (folder,) = (tmp_path / "out" / "submit").iterdir()
    logs = sorted(p.relative_to(folder / "logs").as_posix() for p in (folder / "logs").rglob("*_log.*"))
    assert logs and all(p.startswith("simulate/") for p in logs), logs
    err = next(p for p in (folder / "logs" / "simulate").glob("*_log.err"))
    assert "stage simulate: done" in err.read_text()
    rec = json.loads((folder / "jobs.json").read_text())
    assert rec["jobs"][0]["logs"] == str(folder / "logs" / "simulate")
