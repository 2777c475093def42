#!/usr/bin/env python3
"""Check the Apptainer recipes without Apptainer: spython's parser plus our own structural checks.

spython (``SingularityParser``) parses a .def into header/install/cmd/labels but accepts nearly
anything silently (a misspelt section becomes a comment), so this script also checks what the
brainalign images promise:

- header ``Bootstrap: docker`` and a ``From:`` image; only known section names, none twice;
- sections %files %post %environment %runscript %test %labels present and non-empty;
- %files copies ``toolkit`` and ``bin``; %runscript ``exec``s bin/brainalign with ``"$@"``;
- %labels carry ``{{ BRAINALIGN_VERSION }}`` and ``{{ BRAINALIGN_COMMIT }}`` (Apptainer build
  arguments), and every ``{{ NAME }}`` used has a default in %arguments;
- %environment exports OMP/MKL/OPENBLAS_NUM_THREADS from SLURM_CPUS_PER_TASK;
- %test runs ``brainalign --help``; %post has pip install lines, one installing the toolkit with
  ``-c .../constraints-cpu.txt``;
- the shell sections pass ``bash -n`` (``sh -n`` for %environment) after argument substitution;
- an ``nvidia/cuda:MAJOR.x`` base installs CuPy for that CUDA major only: every ``cupy-cudaNNx`` that
  %post installs, directly or through a toolkit extra (read from toolkit/pyproject.toml), has NN = MAJOR.

Usage::

    containers/check_recipes.py containers/*.def          # exit 1 and one line per problem
    containers/check_recipes.py --pip-lines containers/brainalign-cpu.def

API: ``check_recipe(path) -> Recipe`` (raises RecipeError naming file and section),
``pip_install_lines(recipe) -> list[str]``, ``post_variables(recipe) -> dict``,
``read_recipe(path) -> Recipe``.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

REQUIRED_SECTIONS = ("files", "post", "environment", "runscript", "test", "labels")
KNOWN_SECTIONS = {"setup", "files", "environment", "post", "runscript", "startscript", "test", "labels",
                  "help", "arguments", "appinstall", "appfiles", "appenv", "apprun", "applabels", "apptest",
                  "apphelp", "appstart"}
LABEL_ARGS = ("BRAINALIGN_VERSION", "BRAINALIGN_COMMIT")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_ARG_RE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_PIP_RE = re.compile(r"(^|\s|/)(pip3?|-m\s+pip)\s+install\b")
_SECTION_RE = re.compile(r"^%([A-Za-z]+)\b(.*)$")
_CUPY_RE = re.compile(r"\bcupy-cuda(\d+)x\b")
_EXTRAS_RE = re.compile(r"toolkit\[([^\]]+)\]")
_CUDA_FROM_RE = re.compile(r"^(?:[\w.-]+/)*nvidia/cuda:(\d+)\.")
PYPROJECT = Path(__file__).resolve().parents[1] / "toolkit" / "pyproject.toml"


class RecipeError(ValueError):
    """A recipe problem; str() is one line naming the file and the section."""


@dataclass
class Recipe:
    """A .def file split into its header keys and raw section bodies (lines, order kept)."""

    path: Path
    header: dict[str, str] = field(default_factory=dict)
    sections: dict[str, list[str]] = field(default_factory=dict)

    def body(self, name: str) -> list[str]:
        """Non-blank, non-comment, stripped lines of section `name` (empty if absent)."""
        return [ln.strip() for ln in self.sections.get(name, []) if ln.strip() and not ln.strip().startswith("#")]

    def text(self, name: str) -> str:
        return "\n".join(self.sections.get(name, []))

    @property
    def arguments(self) -> dict[str, str]:
        """%arguments defaults: NAME=value per line."""
        out = {}
        for ln in self.body("arguments"):
            key, sep, value = ln.partition("=")
            if not sep:
                raise RecipeError(f"{self.path}: %arguments: line {ln!r} is not NAME=default")
            out[key.strip()] = value.strip()
        return out

    def substitute(self, text: str, build_args: dict[str, str] | None = None) -> str:
        """Replace {{ NAME }} by build_args[NAME] or the %arguments default."""
        values = {**self.arguments, **(build_args or {})}
        return _ARG_RE.sub(lambda m: values[m.group(1)], text)


def read_recipe(path: str | Path) -> Recipe:
    """Split a .def into header and sections (our parser; spython's is checked separately)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read recipe: {exc.strerror}") from None
    rec = Recipe(path=path)
    current = None
    for ln in lines:
        m = _SECTION_RE.match(ln)
        if m:
            name = m.group(1).lower()
            if name not in KNOWN_SECTIONS:
                raise RecipeError(f"{path}: unknown section %{m.group(1)} (known: {', '.join(sorted(KNOWN_SECTIONS))})")
            if name in rec.sections and not name.startswith("app"):
                raise RecipeError(f"{path}: section %{name} appears twice")
            current = name
            rec.sections.setdefault(name, [])
            continue
        if current is None:
            s = ln.strip()
            if s and not s.startswith("#"):
                key, sep, value = s.partition(":")
                if not sep:
                    raise RecipeError(f"{path}: header line {s!r} is not 'Key: value'")
                rec.header[key.strip().lower()] = value.strip()
        else:
            rec.sections[current].append(ln)
    return rec


def _shell_syntax(rec: Recipe, name: str, shell: str) -> None:
    exe = shutil.which(shell)
    if exe is None:
        return
    script = rec.substitute(rec.text(name))
    proc = subprocess.run([exe, "-n"], input=script, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        msg = " ".join(proc.stderr.split())
        raise RecipeError(f"{rec.path}: %{name}: {shell} syntax error: {msg}")


def _spython_check(rec: Recipe) -> None:
    try:
        from spython.main.parse.parsers import SingularityParser
    except ImportError:
        raise RecipeError(f"{rec.path}: spython is not installed (pip install spython)") from None
    try:
        parsed = SingularityParser(str(rec.path)).recipe
    except Exception as exc:  # spython raises bare Exceptions of many kinds
        raise RecipeError(f"{rec.path}: spython could not parse the recipe: {exc}") from None
    layer = next(iter(parsed.values())) if isinstance(parsed, dict) else parsed
    if (layer.fromHeader or "").strip().lower() != rec.header.get("from", "").lower():
        raise RecipeError(f"{rec.path}: header: spython read From {layer.fromHeader!r}, we read {rec.header.get('from')!r}")
    for attr, section in (("install", "post"), ("cmd", "runscript"), ("labels", "labels"), ("environ", "environment")):
        if not getattr(layer, attr, None):
            raise RecipeError(f"{rec.path}: %{section}: spython found nothing in it")


def check_recipe(path: str | Path) -> Recipe:
    """Run every check on one recipe; return it parsed, or raise RecipeError (one line)."""
    rec = read_recipe(path)
    p = rec.path
    if rec.header.get("bootstrap", "").lower() != "docker":
        raise RecipeError(f"{p}: header: 'Bootstrap: docker' expected, found {rec.header.get('bootstrap')!r}")
    if not rec.header.get("from"):
        raise RecipeError(f"{p}: header: no 'From:' image")
    for name in REQUIRED_SECTIONS:
        if name not in rec.sections:
            raise RecipeError(f"{p}: missing section %{name}")
        if not rec.body(name):
            raise RecipeError(f"{p}: section %{name} is empty")

    used = set(_ARG_RE.findall(p.read_text()))
    missing = sorted(used - set(rec.arguments))
    if missing:
        raise RecipeError(f"{p}: %arguments: no default for build argument(s) {', '.join(missing)}")
    labels = rec.text("labels")
    for arg in LABEL_ARGS:
        if not re.search(r"\{\{\s*" + arg + r"\s*\}\}", labels):
            raise RecipeError(f"{p}: %labels: no label carries {{{{ {arg} }}}}")

    sources = {ln.split()[0].rstrip("/") for ln in rec.body("files")}
    for src in ("toolkit", "bin"):
        if src not in sources:
            raise RecipeError(f"{p}: %files: does not copy {src}/ into the image")

    run = rec.body("runscript")
    if not any(ln.startswith("exec ") and "bin/brainalign" in ln and '"$@"' in ln for ln in run):
        raise RecipeError(f'{p}: %runscript: must `exec ... bin/brainalign "$@"`')

    env = rec.text("environment")
    if "SLURM_CPUS_PER_TASK" not in env:
        raise RecipeError(f"{p}: %environment: thread counts do not follow SLURM_CPUS_PER_TASK")
    for var in THREAD_VARS:
        if not re.search(r"^\s*export\s+" + var + "=", env, re.M):
            raise RecipeError(f"{p}: %environment: {var} is not exported")

    if not any("brainalign" in ln and "--help" in ln for ln in rec.body("test")):
        raise RecipeError(f"{p}: %test: does not run `brainalign --help`")

    pips = pip_install_lines(rec)
    if not pips:
        raise RecipeError(f"{p}: %post: no pip install line")
    if not any("toolkit" in ln and re.search(r"(-c|--constraint)\s+\S*constraints-cpu\.txt", ln) for ln in pips):
        raise RecipeError(f"{p}: %post: no pip line installs the toolkit with -c .../constraints-cpu.txt")

    _cuda_matches_cupy(rec)
    for name in ("post", "runscript", "test"):
        _shell_syntax(rec, name, "bash")
    _shell_syntax(rec, "environment", "sh")
    _spython_check(rec)
    return rec


def toolkit_extras(pyproject: Path = PYPROJECT) -> dict[str, list[str]]:
    """``[project.optional-dependencies]`` of the toolkit: extra name -> requirement strings."""
    try:
        data = tomllib.loads(pyproject.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise RecipeError(f"{pyproject}: cannot read the toolkit's extras: {exc}") from None
    return data.get("project", {}).get("optional-dependencies", {})


def cupy_wheels(rec: Recipe, pyproject: Path = PYPROJECT) -> dict[str, str]:
    """The CuPy wheels %post installs: ``{"cupy-cuda13x": "toolkit[gpu-cuda13]", ...}`` (wheel -> where from)."""
    extras = None
    found = {}
    for ln in pip_install_lines(rec):
        for m in _CUPY_RE.finditer(ln):
            found[m.group(0)] = "a pip line"
        for m in _EXTRAS_RE.finditer(ln):
            extras = toolkit_extras(pyproject) if extras is None else extras
            for name in (e.strip() for e in m.group(1).split(",")):
                if name not in extras:
                    raise RecipeError(f"{rec.path}: %post: toolkit extra [{name}] is not defined in {pyproject.name}")
                for req in extras[name]:
                    for c in _CUPY_RE.finditer(req):
                        found[c.group(0)] = f"toolkit[{name}]"
    return found


def _cuda_matches_cupy(rec: Recipe) -> None:
    m = _CUDA_FROM_RE.match(rec.header.get("from", ""))
    if m is None:
        return
    major = m.group(1)
    for wheel, origin in cupy_wheels(rec).items():
        if _CUPY_RE.match(wheel).group(1) != major:
            raise RecipeError(f"{rec.path}: header: From {rec.header['from']} is CUDA {major} but %post installs "
                              f"{wheel} (via {origin}); use the gpu-cuda{major} extra or another base image")


def logical_lines(lines: list[str]) -> list[str]:
    """Join backslash-continued shell lines; drop blanks and comments; strip."""
    out, cur = [], ""
    for ln in lines:
        s = ln.strip()
        if not cur and (not s or s.startswith("#")):
            continue
        if s.endswith("\\"):
            cur += s[:-1].rstrip() + " "
            continue
        out.append((cur + s).strip())
        cur = ""
    if cur:
        out.append(cur.strip())
    return out


def pip_install_lines(rec: Recipe, build_args: dict[str, str] | None = None) -> list[str]:
    """The `pip install` commands of %post, in order, continuations joined, {{ ARGS }} filled.

    They refer to the image's locations through shell variables ($VENV, $PREFIX) set earlier in
    %post, so a caller can run them elsewhere by setting those variables.
    """
    return [rec.substitute(ln, build_args) for ln in logical_lines(rec.sections.get("post", []))
            if _PIP_RE.search(ln)]


def post_variables(rec: Recipe) -> dict[str, str]:
    """Plain `NAME=value` assignments of %post (e.g. PREFIX=/opt/brainalign, VENV=/opt/venv)."""
    out = {}
    for ln in logical_lines(rec.sections.get("post", [])):
        m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)=([^\s$;&|]+)", ln)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("recipes", nargs="+", type=Path, help=".def files")
    ap.add_argument("--pip-lines", action="store_true", help="print the %%post pip install lines")
    args = ap.parse_args(argv)
    bad = 0
    for path in args.recipes:
        try:
            rec = check_recipe(path)
        except RecipeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            bad += 1
            continue
        if args.pip_lines:
            print("\n".join(pip_install_lines(rec)))
        else:
            print(f"ok: {path} (From {rec.header['from']}; {len(pip_install_lines(rec))} pip lines)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
