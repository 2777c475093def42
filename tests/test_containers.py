"""The Apptainer recipes: structure (containers/check_recipes.py), environment, and the CPU
recipe's own install steps run into a fresh venv (Apptainer itself is not on these machines)."""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONTAINERS = REPO / "containers"
CPU_DEF = CONTAINERS / "brainalign-cpu.def"
GPU_DEF = CONTAINERS / "brainalign.def"
RECIPES = [CPU_DEF, GPU_DEF]


def _load_checker():
    spec = importlib.util.spec_from_file_location("check_recipes", CONTAINERS / "check_recipes.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["check_recipes"] = mod
    spec.loader.exec_module(mod)
    return mod


cr = _load_checker()


def _drop_section(text: str, name: str) -> str:
    out, skipping = [], False
    for ln in text.splitlines(keepends=True):
        if ln.startswith("%"):
            skipping = ln.split()[0] == f"%{name}"
        if not skipping:
            out.append(ln)
    return "".join(out)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipes_pass_all_checks(recipe):
    rec = cr.check_recipe(recipe)
    assert rec.header["bootstrap"] == "docker"
    pips = cr.pip_install_lines(rec)
    assert any("constraints-cpu.txt" in ln and "toolkit[" in ln for ln in pips)
    assert all("{{" not in ln for ln in pips)
    assert cr.post_variables(rec) == {"PREFIX": "/opt/brainalign", "VENV": "/opt/venv"}
    assert rec.arguments.keys() >= {"BRAINALIGN_VERSION", "BRAINALIGN_COMMIT"}


def test_gpu_recipe_builds_mpi4py_against_mpich_and_installs_cupy():
    rec = cr.check_recipe(GPU_DEF)
    post = cr.logical_lines(rec.sections["post"])
    assert any(ln.startswith("apt-get install") and " mpich " in f" {ln} " and "libmpich-dev" in ln for ln in post)
    pips = cr.pip_install_lines(rec)
    assert any("--no-binary=mpi4py" in ln for ln in pips)
    assert any("toolkit[gpu-cuda13]" in ln for ln in pips) and not any("toolkit[mpi]" in ln for ln in pips)
    assert rec.header["from"].startswith("nvidia/cuda:13.")
    assert cr.cupy_wheels(rec) == {"cupy-cuda13x": "toolkit[gpu-cuda13]"}


def test_gpu_extras_offer_both_cupy_wheels():
    import tomllib

    extras = tomllib.loads((REPO / "toolkit" / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert [r.split(">")[0] for r in extras["gpu-cuda12"]] == ["cupy-cuda12x"]
    assert [r.split(">")[0] for r in extras["gpu-cuda13"]] == ["cupy-cuda13x"]
    assert extras["gpu"] == extras["gpu-cuda13"]
    assert cr.toolkit_extras() == extras


@pytest.mark.parametrize("old,new,message", [
    ("From: nvidia/cuda:13.0.1-cudnn-runtime-ubuntu22.04", "From: nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04",
     r"header: From nvidia/cuda:12\.4\.1\S* is CUDA 12 but %post installs cupy-cuda13x \(via toolkit\[gpu-cuda13\]\)"),
    ('"$PREFIX/toolkit[gpu-cuda13]"', '"$PREFIX/toolkit[gpu-cuda12]"',
     r"is CUDA 13 but %post installs cupy-cuda12x \(via toolkit\[gpu-cuda12\]\)"),
    ('"$PREFIX/toolkit[gpu-cuda13]"', '"$PREFIX/toolkit" cupy-cuda12x', r"installs cupy-cuda12x \(via a pip line\)"),
    ('"$PREFIX/toolkit[gpu-cuda13]"', '"$PREFIX/toolkit[gpu-cuda14]"', r"toolkit extra \[gpu-cuda14\] is not defined"),
], ids=["base-12-wheel-13", "base-13-extra-12", "direct-wheel", "unknown-extra"])
def test_gpu_recipe_cuda_base_must_match_the_cupy_wheel(tmp_path, old, new, message):
    text = GPU_DEF.read_text()
    assert old in text
    broken = tmp_path / "gpu.def"
    broken.write_text(text.replace(old, new))
    with pytest.raises(cr.RecipeError, match=message) as info:
        cr.check_recipe(broken)
    assert "\n" not in str(info.value) and str(info.value).startswith(f"{broken}: ")


def test_missing_runscript_is_rejected_though_spython_accepts_it(tmp_path):
    broken = tmp_path / "broken.def"
    broken.write_text(_drop_section(CPU_DEF.read_text(), "runscript"))
    from spython.main.parse.parsers import SingularityParser

    SingularityParser(str(broken))  # spython alone says nothing: that is why the checker exists
    with pytest.raises(cr.RecipeError, match=r"missing section %runscript"):
        cr.check_recipe(broken)
    proc = subprocess.run([sys.executable, str(CONTAINERS / "check_recipes.py"), str(CPU_DEF), str(broken)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert f"ok: {CPU_DEF}" in proc.stdout
    assert proc.stderr.strip() == f"error: {broken}: missing section %runscript"


@pytest.mark.parametrize("old,new,message", [
    ("%environment", "%enviroment", r"unknown section %enviroment"),
    ("    brainalign.commit {{ BRAINALIGN_COMMIT }}\n", "", None),
    ('exec /opt/venv/bin/python /opt/brainalign/bin/brainalign "$@"', "exec /opt/venv/bin/python -V",
     r"%runscript: must `exec \.\.\. bin/brainalign"),
    ("    set -eu\n    PREFIX=", "    if then\n    PREFIX=", r"%post: bash syntax error"),
    ("brainalign.flavor cpu", "brainalign.flavor {{ FLAVOR }}", r"no default for build argument\(s\) FLAVOR"),
    ('export MKL_NUM_THREADS="${MKL_NUM_THREADS:-$_ba_threads}"', "", r"%environment: MKL_NUM_THREADS is not exported"),
    ("    toolkit /opt/brainalign/toolkit\n", "", r"%files: does not copy toolkit/"),
    ('-c "$PREFIX/toolkit/constraints-cpu.txt" ', "", r"%post: no pip line installs the toolkit with -c"),
    ("From: python:3.11-slim", "From:", r"header: no 'From:' image"),
], ids=["typo-section", "no-commit-label", "runscript", "post-syntax", "undefined-arg", "threads", "files",
        "constraints", "from"])
def test_broken_recipes_are_rejected_with_the_section_named(tmp_path, old, new, message):
    text = CPU_DEF.read_text()
    assert old in text
    broken = tmp_path / "broken.def"
    broken.write_text(text.replace(old, new))
    if message is None:  # the version label alone is not enough
        message = r"%labels: no label carries \{\{ BRAINALIGN_COMMIT \}\}"
        # keep the other commit uses from satisfying the check
        broken.write_text(broken.read_text().replace("org.opencontainers.image.revision {{ BRAINALIGN_COMMIT }}",
                                                     "org.opencontainers.image.revision none"))
    with pytest.raises(cr.RecipeError, match=message) as info:
        cr.check_recipe(broken)
    assert "\n" not in str(info.value) and str(info.value).startswith(f"{broken}: ")


def _source_environment(rec, extra_env: dict[str, str]) -> dict[str, str]:
    script = rec.substitute(rec.text("environment"), {"BRAINALIGN_COMMIT": "abc123"})
    env = {k: v for k, v in os.environ.items()
           if k not in cr.THREAD_VARS and k not in ("SLURM_CPUS_PER_TASK", "XDG_CACHE_HOME", "MPLCONFIGDIR")}
    env.update(extra_env)
    out = subprocess.run(["sh", "-c", script + "\nenv"], env=env, capture_output=True, text=True, timeout=30, check=True)
    return dict(ln.split("=", 1) for ln in out.stdout.splitlines() if "=" in ln)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_environment_threads_and_caches(recipe, tmp_path):
    rec = cr.check_recipe(recipe)
    under_slurm = _source_environment(rec, {"SLURM_CPUS_PER_TASK": "3", "TMPDIR": str(tmp_path)})
    assert [under_slurm[v] for v in cr.THREAD_VARS] == ["3", "3", "3"]
    assert under_slurm["XDG_CACHE_HOME"] == f"{tmp_path}/brainalign-cache-{os.getuid()}"
    assert under_slurm["MPLCONFIGDIR"].startswith(str(tmp_path))
    assert under_slurm["PYTHONNOUSERSITE"] == "1" and under_slurm["BRAINALIGN_GIT_COMMIT"] == "abc123"
    assert under_slurm["PATH"].startswith("/opt/venv/bin:")
    assert "_ba_threads" not in under_slurm and "_ba_cache" not in under_slurm
    laptop = _source_environment(rec, {})
    assert laptop["OMP_NUM_THREADS"] == str(len(os.sched_getaffinity(0)))
    user_set = _source_environment(rec, {"SLURM_CPUS_PER_TASK": "3", "OMP_NUM_THREADS": "5"})
    assert user_set["OMP_NUM_THREADS"] == "5" and user_set["MKL_NUM_THREADS"] == "3"


def test_build_script_without_apptainer(tmp_path):
    if shutil.which("apptainer") or shutil.which("singularity"):
        pytest.skip("apptainer is installed here: build.sh would build")
    env = {**os.environ, "PATH": os.defpath}
    plain = subprocess.run(["bash", str(CONTAINERS / "build.sh"), "cpu", "--out", str(tmp_path)],
                           capture_output=True, text=True, env=env, timeout=120)
    assert plain.returncode == 2
    assert "apptainer/singularity is not available on this machine" in plain.stderr
    soft = subprocess.run(["bash", str(CONTAINERS / "build.sh"), "--if-available", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert soft.returncode == 0, soft.stderr
    assert soft.stderr.count("ok: containers/") == 2
    assert list(tmp_path.iterdir()) == []


def _copy_files_section(rec, root: Path) -> None:
    """What Apptainer's %files does: copy each source (relative to the repo) to root/<dest>."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "*.pyc")
    for ln in rec.body("files"):
        src, dst = ln.split()
        shutil.copytree(REPO / src, root / dst.lstrip("/"), ignore=ignore)


@pytest.mark.slow
def test_cpu_recipe_install_steps_into_fresh_venv(tmp_path):
    """%files + %post pip lines + %test + %runscript of the CPU recipe, with /opt moved to tmp_path."""
    rec = cr.check_recipe(CPU_DEF)
    post_vars = cr.post_variables(rec)
    root = tmp_path / "root"
    _copy_files_section(rec, root)
    where = {name: str(root / value.lstrip("/")) for name, value in post_vars.items()}  # PREFIX, VENV
    subprocess.run([sys.executable, "-m", "venv", where["VENV"]], check=True, timeout=600)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env.update(where)
    script = "\n".join(cr.pip_install_lines(rec))
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=1200)  # a hang guard, not a speed check
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    def in_tmp(text: str) -> str:  # the image's absolute paths -> their copies under tmp_path
        for name, value in post_vars.items():
            text = text.replace(value, where[name])
        return text

    test = subprocess.run(["bash", "-c", in_tmp(rec.text("test"))], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert test.returncode == 0, test.stderr[-3000:]
    assert re.search(r"^brainalign \S+ torch 2\.13\.0\S* \| MPICH", test.stdout, re.M), test.stdout
    run = subprocess.run(["bash", "-c", in_tmp(rec.text("runscript")), "runscript", "--help"], env=env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.startswith("usage: brainalign"), run.stderr[-3000:]
    where_from = subprocess.run([f"{where['VENV']}/bin/python", "-c", "import brainalign; print(brainalign.__file__)"],
                                env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True)
    assert where_from.stdout.strip().startswith(f"{where['VENV']}/lib/")  # installed, not the checkout
