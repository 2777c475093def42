"""What a user meets when a command line or a data tree is wrong: exit 2 and one line naming the stage, key or
path -- never a traceback (issue 23, item 3). Each case was a traceback or a wrong-reason failure before."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
import published as P  # noqa: E402

from brainalign.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs" / "demo.yaml")


def one_line_error(capsys, verb):
    """The stderr lines that are not log lines (those start with a date): exactly one, the error."""
    text = capsys.readouterr().err
    assert "Traceback" not in text, text
    lines = [ln for ln in text.splitlines() if ln.strip() and not re.match(r"\d{4}-\d\d-\d\d ", ln)]
    assert len(lines) == 1, text
    err = lines[0]
    assert err.startswith(f"brainalign {verb}: error: "), err
    return err


@pytest.mark.parametrize("argv, verb, names", [
    (["run", DEMO, "--stages", "fitt"], "run", ["'fitt'", "did you mean 'fit'"]),
    (["status", DEMO, "--stages", "fitt", "stats"], "status", ["'fitt'", "stages: "]),
    (["validate", DEMO, "--set", "fit.alphas.x=1"], "validate", ["fit.alphas.x", "fit.alphas is a list"]),
    (["validate", DEMO, "--set", "name.x=1"], "validate", ["name.x", "name is a str"]),
    (["run", DEMO, "--set", "fit.alphas.x=1"], "run", ["fit.alphas.x"]),
    (["validate", DEMO, "--set", "model.backbone=tinny"], "validate", ["model.backbone", "'tinny'", "'tiny'"]),
])
def test_bad_command_lines_are_one_line_and_exit_2(argv, verb, names, capsys):
    assert main(argv) == 2
    err = one_line_error(capsys, verb)
    for n in names:
        assert n in err, err


def test_run_rejects_an_unknown_backbone_before_any_work(tmp_path, capsys):
    """`model.backbone: tinny` stops `run` before simulate (minutes of pretraining), naming the key."""
    cfg = yaml.safe_load(Path(DEMO).read_text())
    cfg["data"]["root"], cfg["output"] = str(tmp_path / "data"), str(tmp_path / "out")
    cfg["model"]["backbone"] = "tinny"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path)]) == 2
    assert "model.backbone: unknown backbone 'tinny'" in one_line_error(capsys, "run")
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()


def test_validate_prints_a_one_line_verdict_with_overrides(capsys):
    assert main(["validate", DEMO, "--set", "fit.backend=torch", "--set", "stats.q=0.01"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith(f"config {DEMO}: ok (demo, 2 --set override(s);"), out
    assert "backbone tiny" in out
    assert main(["validate", DEMO, "--set", "stats.q=0.01", "-v"]) == 0     # -v: the resolved config too
    out = capsys.readouterr().out
    assert yaml.safe_load(out.rsplit("\nconfig ", 1)[0])["stats"]["q"] == 0.01


@pytest.fixture
def looped_tree(tmp_path):
    """A tiny Algonauts tree whose first transcript is a symbolic link to itself (ELOOP)."""
    root = tmp_path / "alg"
    P.algonauts_tree(root, subjects=("01",), runs=("s01e01a", "s01e01b", "s01e02a"), n_trs=12, missing=())
    tsv = root / "stimuli/transcripts/friends/s1/friends_s01e01a.tsv"
    tsv.unlink()
    os.symlink(tsv.name, tsv)
    cfg = P.algonauts_config(root, tmp_path / "out")
    cfg["data"]["episodes"], cfg["data"]["bold"]["subjects"] = ["s01e01a", "s01e01b", "s01e02a"], ["01"]
    path = tmp_path / "alg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, tsv


@pytest.mark.parametrize("verb", ["status", "run", "validate"])
def test_a_symlink_loop_under_the_data_root_is_one_line(looped_tree, verb, capsys):
    path, tsv = looped_tree
    assert main([verb, str(path)]) == 2
    err = one_line_error(capsys, verb)
    assert str(tsv) in err and "symbolic link loop" in err, err
    if verb != "validate":
        assert "data.stimuli.transcript" in err, err


def test_status_into_a_closed_pipe_is_one_line_and_exit_2(tmp_path):
    """`brainalign status ... | head`: the reader went away; no BrokenPipeError traceback."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "toolkit"))
    p = subprocess.Popen([sys.executable, "-m", "brainalign", "status", DEMO, "--set",
                          f"data.root={tmp_path}", "--set", f"output={tmp_path}/out"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    p.stdout.close()                          # as `head` does once it has its lines
    err = p.stderr.read().decode()
    assert p.wait(timeout=300) == 2, err
    assert err.strip() == "brainalign status: error: output closed early (broken pipe)", err
