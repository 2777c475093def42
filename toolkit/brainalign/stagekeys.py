"""Stage keys: an output is current only while what it was made from is unchanged.

Every stage declares (in :mod:`brainalign.stagetable`, one table) the config sections/keys it reads,
its upstream stages and its input files. Its *key* is a hash of

- the parsed values of those config keys (not the YAML text: comments and unrelated keys do not count),
- the keys of its upstream outputs (so downstream stages follow a re-run upstream),
- a fingerprint of every input file: size + mtime_ns (``pipeline.fingerprint: mtime``, the default) or the
  SHA-256 of its bytes (``pipeline.fingerprint: content`` or ``--verify``).

Content hashes are recorded whenever a stage runs (the inputs it is about to read are hashed once, then
stored in its record), and a git-annex symlink (DataLad) carries its SHA-256 in its key for free. So in the
default mtime mode a file whose size or mtime changed is re-hashed and compared with the stored hash: a
``touch``, a copy or a ``datalad get`` that resets mtimes does not make a stage stale; ``--verify`` hashes
every input and confirms equality (and that an annexed file's bytes match its key).

The key and the *record* (those values, upstream keys and per-file fingerprints, as JSON) are stored in the
output's provenance: HDF5 attrs ``stage_key`` / ``stage_record`` (brainalign.h5io), or the ``stage_key`` /
``stage_record`` fields of a JSON completion file. An output is *current* when it is complete, every file
of the stage is present, and the stored record equals what the stage would read now; otherwise the
differences are the reasons logged ("bold sub-01 task-s01e01a changed (size)").

Two views of the upstream keys: a stage about to run uses the key stored in the upstream output it will
read (never a key it has not read); ``brainalign status`` and ``brainalign submit`` plan ahead and use the
key each upstream stage *will* have (its stored key when current, else the key of a re-run).
"""
from __future__ import annotations

import errno
import fnmatch
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Optional

from .errors import BrainAlignError, DataError
from .log import get_logger

log = get_logger("pipeline")

KEY_ATTR = "stage_key"
RECORD_ATTR = "stage_record"
GLOBAL_IGNORES = ("data.root", "output", "pipeline")   # never part of a key (files are fingerprinted instead)
MAX_REASONS = 4                                         # reasons shown in one log line


# ---- input files ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Input:
    """One input a stage reads. ``role`` is how a user knows it ("bold sub-01 task-s01e01a"), ``key`` the
    config key that points at it. ``kind``: ``file``; ``tree`` (a directory: every file below it, e.g. a
    Hugging Face checkpoint directory); ``listing`` (a directory of directories, e.g. TVQA frames: the
    entries' names and mtimes only). An ``optional`` input that does not exist is recorded by name
    (e.g. a Hugging Face hub id)."""

    role: str
    path: Path
    key: str = ""
    kind: str = "file"
    optional: bool = False


class MissingInput(DataError):
    """A required input file does not exist: one line naming it and the config key."""

    def __init__(self, inp: Input):
        self.input = inp
        super().__init__(f"{inp.key + ': ' if inp.key else ''}{inp.role} not found: {inp.path}")


_SHA: dict = {}      # (path, inode, size, mtime_ns, ctime_ns) -> sha256: each file is hashed once per process
#: a git-annex key with a SHA-256 backend (SHA256E-s<size>--<hash>.<ext>, SHA256-s<size>--<hash>), as the last
#: component of an annexed file's symlink target (.git/annex/objects/xx/yy/KEY/KEY)
_ANNEX_KEY = re.compile(r"^SHA256E?-s(\d+)--([0-9a-f]{64})(?:\.[^/]*)?$")


def annex_sha256(path) -> Optional[str]:
    """The SHA-256 an annexed file's symlink names (its git-annex key), without reading the file; None when
    ``path`` is not a symlink to a SHA256/SHA256E annex object."""
    try:
        target = os.readlink(path)
    except OSError:                       # not a symlink (or gone)
        return None
    m = _ANNEX_KEY.match(os.path.basename(target))
    return m.group(2) if m else None


def _sha_file(path: Path, st, verify: bool = False) -> str:
    """SHA-256 of a file's bytes; an annexed file's key is taken as its hash unless ``verify`` (then the bytes
    are hashed and must match the key: one line naming the file when they do not)."""
    key_sha = annex_sha256(path)
    if key_sha is not None and not verify:
        return key_sha
    k = (str(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)    # ctime: utime cannot reset it
    if k not in _SHA:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _SHA[k] = h.hexdigest()
    if key_sha is not None and _SHA[k] != key_sha:
        raise DataError(f"{path}: content does not match its git-annex key {os.path.basename(os.readlink(path))} "
                        "(corrupt or modified annexed file; `git annex fsck` it)")
    return _SHA[k]


def _digest(lines) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:32]


def fingerprint(inp: Input, content: bool = False) -> dict:
    """{role, name, size, mtime_ns, stat[, sha256]} of an input (``stat`` = what the mtime mode compares)."""
    p = Path(inp.path)
    try:
        st = p.stat()
    except (FileNotFoundError, NotADirectoryError):
        if inp.optional:
            return {"role": inp.role, "name": str(inp.path), "absent": True, "stat": "absent"}
        raise MissingInput(inp) from None
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        raise DataError(f"{inp.key + ': ' if inp.key else ''}{inp.role}: symbolic link loop at {p}") from None
    fp = {"role": inp.role, "name": p.name}
    if not p.is_dir():
        fp.update(size=st.st_size, mtime_ns=st.st_mtime_ns, stat=f"{st.st_size}:{st.st_mtime_ns}")
        if content or annex_sha256(p) is not None:         # an annex key is free: always recorded
            fp["sha256"] = _sha_file(p, st, verify=content)
        return fp
    if inp.kind == "listing":
        entries = sorted(os.scandir(p), key=lambda e: e.name)
        lines = [f"{e.name} {e.stat().st_mtime_ns}" for e in entries]
        fp.update(size=len(entries), mtime_ns=max((e.stat().st_mtime_ns for e in entries), default=0),
                  stat=_digest(lines))
        return fp
    files = sorted((q.relative_to(p).as_posix(), q) for q in p.rglob("*") if q.is_file())
    stats = [(rel, q.stat()) for rel, q in files]
    fp.update(size=sum(s.st_size for _, s in stats), mtime_ns=max((s.st_mtime_ns for _, s in stats), default=0),
              files=len(stats), stat=_digest(f"{rel} {s.st_size} {s.st_mtime_ns}" for rel, s in stats))
    if content:
        fp["sha256"] = _digest(f"{rel} {_sha_file(q, s, verify=True)}" for (rel, q), (_, s) in zip(files, stats))
    return fp


def content_hash(inp: Input) -> Optional[str]:
    """The sha256 entry ``fingerprint(inp, content=True)`` would give (None for listings and absent inputs)."""
    try:
        return fingerprint(inp, content=True).get("sha256")
    except MissingInput:
        return None


def _input_changed(old: dict, new: dict, inp: Input) -> Optional[str]:
    """Why an input differs from its stored fingerprint (None: unchanged). A file whose size and mtime
    changed is hashed when the stored record has its content hash, so a touched file is not a change."""
    if old.get("name") != new.get("name"):
        return f"now {new.get('name')}, was {old.get('name')}"
    if bool(old.get("absent")) != bool(new.get("absent")):
        return "appeared" if old.get("absent") else "gone"
    if old.get("size") != new.get("size"):
        return "size"
    if "sha256" in old:
        if old.get("stat") == new.get("stat") and "sha256" not in new:
            return None
        if "sha256" not in new:
            sha = content_hash(inp)
            if sha is not None:
                new["sha256"] = sha
        return None if new.get("sha256") == old["sha256"] else "content"
    if old.get("stat") != new.get("stat"):
        return "mtime" if "files" not in new and inp.kind != "listing" else "files"
    return None


# ---- config values ----------------------------------------------------------------------------------

def flat_config(cfg) -> dict:
    """Every schema key of ``cfg`` as a dotted path -> JSON value (nested sections flattened; lists kept)."""
    out = {}

    def walk(obj, prefix):
        for f in fields(obj):
            if f.metadata.get("internal"):
                continue
            v = getattr(obj, f.name)
            key = f"{prefix}{f.name}"
            if is_dataclass(v):
                walk(v, key + ".")
            else:
                out[key] = json.loads(json.dumps(v, default=asdict))    # lists of sections as dicts

    walk(cfg, "")
    return out


def matches(key: str, pattern: str) -> bool:
    """``stats`` covers ``stats.q``; ``stats.permutation*`` is a glob; ``fit.alphas`` is one key."""
    return key == pattern or key.startswith(pattern + ".") or fnmatch.fnmatchcase(key, pattern)


def select_values(cfg, reads, ignores=(), skip=None) -> dict:
    """The config values a stage reads: keys matching ``reads`` minus ``ignores`` and the global ignores;
    ``skip(key)`` drops more (e.g. other backbones' sections)."""
    out = {}
    for k, v in flat_config(cfg).items():
        if not any(matches(k, r) for r in reads):
            continue
        if any(matches(k, i) for i in tuple(ignores) + GLOBAL_IGNORES) or (skip and skip(k)):
            continue
        out[k] = v
    return out


def _short(v, n=60) -> str:
    s = json.dumps(v)
    return s if len(s) <= n else s[: n - 3] + "..."


# ---- records ----------------------------------------------------------------------------------------

def hash_key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def units_key(stage: str, keys: dict) -> str:
    """The key of a stage keyed per unit (extract): a hash of its units' keys."""
    return hash_key({"stage": stage, "units": keys})


@dataclass
class Expected:
    """What a stage (or one unit of it) reads now; ``record()`` is what its output stores."""

    stage: str
    unit: Optional[str]
    fingerprint: str
    config: dict
    upstream: dict
    inputs: list
    sources: dict = field(default_factory=dict)     # role -> Input (for lazy hashing; not stored)

    def hash_inputs(self) -> "Expected":
        """Record the content hash of every file/tree input that has none yet (a stage about to run: the hash
        is computed once here and stored, so a later touch of an unchanged file is recognised as unchanged)."""
        for fp in self.inputs:
            inp = self.sources.get(fp["role"])
            if "sha256" not in fp and not fp.get("absent") and inp is not None and inp.kind != "listing":
                sha = content_hash(inp)
                if sha is not None:
                    fp["sha256"] = sha
        return self

    @property
    def key(self) -> str:
        ins = sorted([fp["role"], fp["name"], fp.get("sha256") or fp["stat"]] for fp in self.inputs)
        return hash_key({"stage": self.stage, "unit": self.unit, "config": self.config,
                         "upstream": self.upstream, "inputs": ins})

    def record(self) -> dict:
        rec = {"stage": self.stage, "key": self.key, "fingerprint": self.fingerprint, "config": self.config,
               "upstream": self.upstream, "inputs": sorted(self.inputs, key=lambda fp: fp["role"])}
        if self.unit is not None:
            rec["unit"] = self.unit
        return rec


def compare(stored: dict, exp: Expected, upstream_reason=None) -> tuple[list, list]:
    """(reasons, notes): why ``stored`` is not what ``exp`` reads now (empty: current), and remarks."""
    reasons, notes = [], []
    sc, ec = stored.get("config") or {}, exp.config
    for k in sorted(set(sc) | set(ec)):
        if k not in sc:
            reasons.append(f"{k} is new (= {_short(ec[k])})")
        elif k not in ec:
            reasons.append(f"{k} is no longer read")
        elif json.dumps(sc[k], sort_keys=True) != json.dumps(ec[k], sort_keys=True):
            reasons.append(f"{k} changed ({_short(sc[k])} -> {_short(ec[k])})")
    su, eu = stored.get("upstream") or {}, exp.upstream
    for u in sorted(set(su) | set(eu)):
        if su.get(u) != eu.get(u):
            reasons.append(upstream_reason(u) if upstream_reason else f"upstream {u} changed")
    old = {fp["role"]: fp for fp in stored.get("inputs") or []}
    unverified = 0
    for fp in exp.inputs:
        prev = old.pop(fp["role"], None)
        if prev is None:
            reasons.append(f"new input {fp['role']}")
            continue
        why = _input_changed(prev, fp, exp.sources.get(fp["role"]) or Input(fp["role"], Path(fp["name"])))
        if why:
            reasons.append(f"{fp['role']} changed ({why})")
        elif "sha256" in fp and "sha256" not in prev:
            unverified += 1
    reasons += [f"{role} is no longer an input" for role in sorted(old)]
    if unverified:
        notes.append(f"{unverified} input(s) were recorded without content hashes (pipeline.fingerprint mtime): "
                     "checked by size and mtime only")
    return reasons, notes


# ---- stored records ---------------------------------------------------------------------------------

@dataclass
class Stored:
    status: str                 # missing | incomplete | unkeyed | ok
    key: Optional[str] = None
    record: Optional[dict] = None
    path: Optional[Path] = None
    detail: str = ""


def read_record(path, dataset: Optional[str] = None) -> Stored:
    """The record stored with an output: an HDF5 file's root (or ``dataset``'s) attrs, or a JSON file."""
    path = Path(path)
    if not path.exists():
        return Stored("missing", path=path)
    if path.suffix == ".h5":
        import h5py

        from .h5io import COMPLETE_ATTR, read_long_attr

        try:
            with h5py.File(path, "r") as f:
                if not f.attrs.get(COMPLETE_ATTR, 0):
                    return Stored("incomplete", path=path, detail="no completion marker")
                obj = f
                if dataset is not None:
                    if dataset not in f:
                        return Stored("missing", path=path, detail=f"no dataset {dataset}")
                    obj = f[dataset]
                key = obj.attrs.get(KEY_ATTR)
                if key is None:
                    return Stored("unkeyed", key=f"file:{path.stat().st_size}:{path.stat().st_mtime_ns}",
                                  path=path)
                text = read_long_attr(obj, RECORD_ATTR)
        except (OSError, KeyError) as e:
            return Stored("incomplete", path=path, detail=f"unreadable ({type(e).__name__})")
        key = key.decode() if isinstance(key, bytes) else str(key)
        return Stored("ok", key=key, record=json.loads(text) if text else {}, path=path)
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return Stored("incomplete", path=path, detail="unreadable")
    if not isinstance(d, dict) or KEY_ATTR not in d:
        return Stored("unkeyed", key=f"file:{path.stat().st_size}:{path.stat().st_mtime_ns}", path=path)
    return Stored("ok", key=str(d[KEY_ATTR]), record=d.get(RECORD_ATTR) or {}, path=path)


def output_problems(paths) -> list:
    """Reasons an output is not complete: a missing file, or an HDF5 file without its completion marker."""
    from .h5io import is_complete

    out = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            out.append(f"{p} is missing")
        elif p.suffix == ".h5" and not is_complete(p):
            out.append(f"{p} is incomplete or corrupt (no completion marker)")
    return out


# ---- assessment -------------------------------------------------------------------------------------

@dataclass
class State:
    """Where a stage (or unit) stands: ``current`` (skip), ``stale`` (recompute: ``reasons``), ``missing``
    (never made), ``off`` (disabled by the config). ``key`` is the key its output has (current) or will have."""

    stage: str
    status: str
    reasons: list = field(default_factory=list)
    key: Optional[str] = None
    expected: Optional[Expected] = None
    notes: list = field(default_factory=list)
    units: dict = field(default_factory=dict)
    output: str = ""
    changed: list = field(default_factory=list)   # its output has a key, made from other values/inputs than now

    @property
    def current(self) -> bool:
        return self.status in ("current", "off")

    def why(self, n=MAX_REASONS) -> str:
        more = len(self.reasons) - n
        return "; ".join(self.reasons[:n]) + (f" (+{more} more)" if more > 0 else "")

    @property
    def record(self) -> dict:
        return self.expected.record() if self.expected is not None else {}

    @property
    def attrs(self) -> dict:
        """Provenance attrs of an output made now (brainalign.h5io.atomic_h5 ``extra``)."""
        return {KEY_ATTR: self.key, RECORD_ATTR: json.dumps(self.record, sort_keys=True)}

    def json_fields(self) -> dict:
        """The same for a JSON completion file."""
        return {KEY_ATTR: self.key, RECORD_ATTR: self.record}


class Assessor:
    """Assesses stages of one config against ``specs`` ({name: spec}, the table of brainalign.stagetable;
    brainalign.stagecheck.assessor passes it). ``planning=True``: upstream keys are the keys upstream stages
    will have (status, submit); ``False``: the keys stored in the upstream outputs (a stage about to run)."""

    def __init__(self, cfg, specs: dict, planning: bool = True, content: Optional[bool] = None,
                 values: Optional[dict] = None):
        self.cfg, self.planning = cfg, planning
        self.values = values or {}             # {stage: {name: value}}: run-time arguments that shape a result
        self.content = cfg.pipeline.fingerprint == "content" if content is None else content
        self.specs = specs
        self._states: dict = {}
        self._config: dict = {}                # {stage: its config values}: the same for every unit
        self._ups: dict = {}
        self._produced: dict = {}

    @property
    def mode(self) -> str:
        return "content" if self.content else "mtime"

    # -- pieces --
    def _inputs(self, stage, inputs, reasons, raise_missing):
        """Fingerprints of ``inputs``; a missing one is raised (one line naming it) or becomes a reason.
        Planning, an input that a pending stage (simulate, finetune) will write is a reason too."""
        fps, sources = [], {}
        for inp in inputs:
            try:
                fps.append(fingerprint(inp, self.content))
                sources[inp.role] = inp
            except MissingInput as e:
                if raise_missing:
                    raise
                producer = self._pending_producer(inp.path, stage)
                reasons.append(f"{inp.role} will be written by {producer}" if producer else str(e))
                continue
            producer = self._pending_producer(inp.path, stage)
            if producer:
                reasons.append(f"{inp.role} will be rewritten by {producer}")
        return fps, sources

    def _pending_producer(self, path, stage) -> Optional[str]:
        """Planning: the stage of the pipeline that writes ``path`` (or a folder above it) and is not current."""
        if not self.planning:
            return None
        p = Path(os.path.abspath(path))
        for name, spec in self.specs.items():
            if spec.produces is None or name == stage or name not in self.cfg.pipeline:
                continue
            if name not in self._produced:
                self._produced[name] = {Path(os.path.abspath(q)) for q in spec.produces(self.cfg)}
            if (p in self._produced[name] or any(q in self._produced[name] for q in p.parents)) \
                    and not self.state(name).current:
                return name
        return None

    def _upstream(self, spec):
        if spec.name in self._ups:
            return self._ups[spec.name]
        keys, why = {}, {}
        for u in spec.upstream_of(self.cfg):
            if self.planning:
                st = self.state(u)
                keys[u] = st.key
                why[u] = f"upstream {u} will re-run" if not st.current else f"upstream {u} changed"
            else:
                s = read_record(self.specs[u].records(self.cfg)[0])
                keys[u] = s.key
                why[u] = f"upstream {u} changed" if s.key else f"upstream {u} output is missing"
        self._ups[spec.name] = keys, why
        return keys, why

    def expected(self, stage, unit=None) -> tuple:
        """(Expected, reasons about missing inputs) of ``stage`` (or one unit) as it would run now."""
        spec = self.specs[stage]
        reasons = []
        if stage not in self._config:
            self._config[stage] = spec.values(self.cfg)
        values = dict(self._config[stage])
        if unit is not None and spec.unit_values is not None:
            values.update(spec.unit_values(self.cfg, unit))
        values.update(self.values.get(stage, {}))
        ups = self._upstream(spec)[0] if unit is None else {}
        # about to run: a missing input is an error, unless an upstream output is missing too (then the
        # stage's own reader says that first)
        raise_missing = not self.planning and all(v is not None for v in ups.values())
        try:
            inputs = (spec.inputs(self.cfg) if spec.inputs else []) if unit is None else spec.unit_inputs(self.cfg, unit)
        except BrainAlignError as e:         # an input cannot even be located (no such directory, ...)
            if raise_missing:
                raise
            pending = [p for p in self.cfg.pipeline if self.specs[p].produces is not None and p != stage
                       and not self.state(p).current]
            reasons.append(f"inputs will be written by {pending[0]}" if pending else str(e))
            inputs = []
        fps, sources = self._inputs(stage, inputs, reasons, raise_missing)
        return Expected(stage, unit, self.mode, values, ups, fps, sources), reasons

    # -- states --
    def state(self, stage) -> State:
        if stage not in self._states:
            self._states[stage] = State(stage, "stale", ["(being assessed)"])    # guards a cycle
            self._states[stage] = self._assess(stage)
        return self._states[stage]

    def _assess(self, stage) -> State:
        spec = self.specs[stage]
        if not spec.enabled(self.cfg):
            return State(stage, "off", ["disabled by the config"])
        if spec.units is not None:
            return self._assess_units(stage)
        exp, reasons = self.expected(stage)
        _, up_why = self._upstream(spec)
        records = [Path(p) for p in spec.records(self.cfg)]
        stored = read_record(records[0])
        st = State(stage, "stale", [], None, exp, output=str(records[0]))
        if stored.status == "missing" and not any(p.exists() for p in records):
            st.status, st.reasons = "missing", [f"no {records[0]} yet"] + reasons
            st.key = self._run_key(exp)
            return st
        problems = output_problems(spec.outputs_of(self.cfg))
        for p in records[1:]:
            other = read_record(p)
            if other.status == "ok" and stored.key is not None and other.key != stored.key:
                problems.append(f"{p} and {records[0]} come from different runs")
        if not problems and spec.check is not None:
            problems += spec.check(self.cfg)
        if stored.status == "ok":
            diff, st.notes = compare(stored.record, exp, upstream_reason=lambda u: up_why.get(u, f"upstream {u}"))
            st.changed = list(diff)
        elif stored.status == "unkeyed":
            diff = [f"{records[0]} has no stage key (made by hand or by an older brainalign)"]
        else:
            diff = []
        st.reasons = reasons + diff + problems
        if st.reasons:
            st.key = self._run_key(exp)
        else:
            st.status, st.key = "current", stored.key
        return st

    def _run_key(self, exp: Expected) -> str:
        """The key of a stale stage (unit): about to run, its inputs' content hashes are recorded first."""
        if not self.planning:
            exp.hash_inputs()
        return exp.key

    def unit_state(self, stage, unit) -> State:
        spec = self.specs[stage]
        exp, reasons = self.expected(stage, unit)
        path, dataset = spec.unit_record(self.cfg, unit)
        stored = read_record(path, dataset)
        st = State(stage, "stale", list(reasons), None, exp, output=f"{path}:{dataset}")
        if stored.status == "ok":
            diff, st.notes = compare(stored.record, exp)
            st.reasons += diff
            st.changed = list(diff)
        elif stored.status == "missing":
            st.status = "missing"
            st.reasons.insert(0, "not made yet")
        elif stored.status == "unkeyed":
            st.reasons.append(f"{path}:{dataset} has no stage key")
        else:
            st.reasons.append(f"{path} is incomplete or corrupt")
        if st.reasons:
            st.key = self._run_key(exp)
        else:
            st.status, st.key = "current", stored.key
        return st

    def _assess_units(self, stage) -> State:
        spec = self.specs[stage]
        units = {u: self.unit_state(stage, u) for u in spec.units(self.cfg)}
        keys = {u: s.key for u, s in units.items()}
        record_path = Path(spec.records(self.cfg)[0])
        exp = Expected(stage, None, self.mode, {}, {}, [])
        st = State(stage, "stale", [], units_key(stage, keys), exp, units=units,
                   output=str(record_path))
        todo = [u for u, s in units.items() if not s.current]
        stored = read_record(record_path)
        if stored.status == "missing" and all(s.status == "missing" for s in units.values()):
            st.status, st.reasons = "missing", [f"no {record_path} yet ({len(units)} units to make)"]
            return st
        if todo:
            st.reasons.append(f"{len(todo)} of {len(units)} units to redo: " + "; ".join(
                f"{u}: {units[u].reasons[0]}" for u in todo[:MAX_REASONS]) + (" ..." if len(todo) > MAX_REASONS else ""))
        if stored.status == "missing":
            st.reasons.append(f"no {record_path} yet")
        elif stored.status == "unkeyed":
            st.reasons.append(f"{record_path} has no stage key (made by hand or by an older brainalign)")
        elif stored.status != "ok":
            st.reasons.append(f"{record_path} is incomplete or corrupt ({stored.detail})")
        elif not todo and (stored.record or {}).get("units") != keys:
            st.reasons.append(f"{record_path} was assembled from other units")
            st.changed.append(st.reasons[-1])
        st.changed = [f"{u}: {s.changed[0]}" for u, s in units.items() if s.changed] + st.changed
        if not st.reasons:
            st.status, st.key = "current", stored.key
        return st
