"""bench/gpu_check.py's report: the summary (passed / failed / skipped, the measured evidence record for
``fit.backend: auto``) and the files gpu_check.json and gpu_check.md."""
from __future__ import annotations

import json
import os
from pathlib import Path

#: streamed-run sections whose same-size speed-up over numpy can become a gpu_evidence.py record
EVIDENCE_FROM = {"stream_cupy": "cupy", "stream_torch": "torch-cuda"}


def summarize(report: dict) -> dict:
    passed, failed, skipped = [], [], {}
    for name, sec in report["sections"].items():
        for c in sec.get("checks", []):
            (passed if c["ok"] else failed).append(f"{name}: {c['name']}" + ("" if c["ok"] else
                                                   f" (value {_fmt(c.get('value'))}, limit {_fmt(c.get('limit'))})"))
        if sec.get("status") in ("error", "timeout"):
            failed.append(f"{name}: {sec['status']}: {sec.get('reason', '')}")
        if sec.get("status") == "skipped":
            skipped[name] = sec.get("reason", "")
        else:
            for part, why in sec.get("skipped", {}).items():
                skipped[f"{name} / {part}"] = why
    return {"passed": passed, "failed": failed, "skipped": skipped, "evidence": evidence(report)}


def evidence(report: dict) -> list:
    """gpu_evidence.py records from this run: only full-size runs whose streamed section passed every
    check; speedup = numpy wall / GPU wall on the same voxels, both measured here."""
    if report.get("mode") != "full":
        return []
    env = report["sections"].get("env", {}).get("measurements", {})
    gpu = env.get("gpu", {}).get("name")
    commit = env.get("host", {}).get("git_commit", "unknown")
    out = []
    for name, backend in EVIDENCE_FROM.items():
        sec = report["sections"].get(name, {})
        speed = sec.get("measurements", {}).get("subset", {}).get("speedup_vs_numpy")
        if sec.get("status") == "ok" and gpu and speed:
            out.append({"backend": backend, "gpu": gpu, "speedup": round(float(speed), 2),
                        "date": report["started"][:10], "source": f"bench/gpu_check.py report, {commit}"})
    return out


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.3g}"
    return "-" if v is None else str(v)


def _flat(d, prefix=""):
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and prefix == "":
            yield from _flat(v, key + ".")
        elif isinstance(v, list) and len(v) > 8:
            yield key, f"[{', '.join(_fmt(x) for x in v[:4])}, ... ({len(v)} values)]"
        elif isinstance(v, list):
            yield key, "[" + ", ".join(_fmt(x) for x in v) + "]"
        elif isinstance(v, dict):
            yield key, ", ".join(f"{a}={_fmt(b)}" for a, b in v.items())
        else:
            yield key, _fmt(v)


def markdown(report: dict) -> str:
    s = report["summary"]
    env = report["sections"].get("env", {}).get("measurements", {})
    host, gpu = env.get("host", {}), env.get("gpu", {})
    pk = host.get("packages", {})
    lines = [f"# brainalign GPU check ({report['started']})", ""]
    machine = (f"GPU {gpu['name']} ({gpu.get('memory_gib', 0):.0f} GiB, CUDA {gpu.get('torch_cuda', '?')})"
               if gpu.get("name") else "no GPU")
    lines.append(f"Mode **{report['mode']}**; {machine}; {host.get('cpus', '?')} CPUs; python {host.get('python', '?')}; "
                 f"numpy {pk.get('numpy', '?')}, torch {pk.get('torch', '?')}, cupy {pk.get('cupy', 'not installed')}; "
                 f"commit {host.get('git_commit', '?')}; total {report['total_wall_s']:.1f} s.")
    if report["mode"] != "full":
        lines.append("")
        lines.append("Quick mode: small sizes that check the script and the code paths, not representative figures.")
    lines += ["", "## Summary", "",
              f"- checks passed: {len(s['passed'])}; failed: {len(s['failed'])}; skipped parts: {len(s['skipped'])}"]
    lines += [f"- FAILED {f}" for f in s["failed"]]
    lines += [f"- skipped {k}: {v}" for k, v in s["skipped"].items()]
    lines += ["", "## Sections"]
    for name, sec in report["sections"].items():
        ran = (f"{sec['wall_s']:.1f} s of its {sec['budget_s']:.0f} s budget" if sec.get("wall_s") is not None
               else "not started")
        lines += ["", f"### {name}: {sec.get('status')} ({ran})"]
        if sec.get("reason"):
            lines += ["", sec["reason"]]
        if sec.get("checks"):
            lines += ["", "| check | result | value | limit |", "|---|---|---|---|"]
            lines += [f"| {c['name']} | {'ok' if c['ok'] else '**FAILED**'} | {_fmt(c.get('value'))} | "
                      f"{_fmt(c.get('limit'))} |" + (f" {c['note']}" if c.get("note") else "") for c in sec["checks"]]
        meas = sec.get("measurements", {})
        if meas and name != "env":
            lines += [""] + [f"- {k}: {v}" for k, v in _flat(meas)]
    lines += ["", "## Evidence for `fit.backend: auto`", ""]
    if s["evidence"]:
        lines.append("Measured in this run; add to `toolkit/brainalign/ridge/gpu_evidence.py` (MEASURED):")
        lines += ["", "```python"] + [f"    {json.dumps(r)}," for r in s["evidence"]] + ["```"]
    else:
        lines.append("None from this run (a record needs a full-size run whose streamed section passed every "
                     "check on a GPU); `auto` stays on numpy.")
    return "\n".join(lines) + "\n"


def write(report: dict, outdir: Path) -> None:
    """gpu_check.json and gpu_check.md, each written to a temp name and renamed (never half-written)."""
    for name, text in (("gpu_check.json", json.dumps(report, indent=1)),
                       ("gpu_check.md", markdown(report))):
        tmp = outdir / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, outdir / name)
