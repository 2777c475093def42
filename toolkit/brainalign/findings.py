"""Planted vs found: a simulated dataset's ``truth.json`` beside what the stats and mlm stages found, in words.

When ``{data.root}/truth.json`` exists (``brainalign simulate`` writes it), the report opens with this
section and writes ``report/findings.json``. For every ROI of the truth and every contrast of stats.h5 at
the report layer, a verdict:

* the contrast was planted there (``expect``): ``found`` (significant in the planted direction),
  ``opposite`` (significant, wrong direction) or ``not found``;
* it was planted null there (``expect_null``; every contrast in a null ROI): ``null`` or ``false positive``;
* neither: ``unplanted`` when significant (an effect of the analysed model, e.g. joint features that dilute
  one modality), else nothing is said.

A truth contrast ``{"a": "residual", "target": T, "without": [m, ...]}`` matches a contrast of a residual
feature set vs 0 whose target is T and whose predictors include, for each modality m, a condition without
m (e.g. ``crossmodal`` = joint − f(no_vision, no_language)). Masked-word prediction (``mlm.csv`` with a
``word_class`` column) is compared with the truth's frame-predictable words: joint − no_vision top-1 with
its bootstrap CI, per word class.
"""
from __future__ import annotations

import csv
import html
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .log import get_logger
from .paths import MLM_CSV, TRUTH

log = get_logger("report")

SEED_STUDY = "Dong & Toneva (2023)"
FOUND, OPPOSITE, NOT_FOUND, NULL, FALSE_POSITIVE, UNPLANTED = (
    "found", "opposite", "not found", "null", "false positive", "unplanted")


@dataclass
class Finding:
    roi: str
    contrast: str
    a: str
    b: str | None
    expect: str            # "positive" | "null" | "none"
    verdict: str | None
    mean_dz: float
    q: float
    significant: bool
    requires: str = ""     # what the planted effect needs of the model (e.g. the interaction)


def load_truth(cfg) -> dict | None:
    """The truth.json under data.root, or None (real data, or a file that is not a brainalign truth)."""
    path = Path(cfg.data.root) / TRUTH
    if not path.is_file():
        return None
    try:
        truth = json.loads(path.read_text())
    except ValueError:
        log.warning("report: %s is not valid JSON; no planted-vs-found section", path)
        return None
    return truth if isinstance(truth, dict) and isinstance(truth.get("rois"), list) else None


def _lacks(condition: str, modality: str) -> bool:
    from .models.conditions import CONDITION_MODALITIES

    base = condition.split("@", 1)[0]
    return base in CONDITION_MODALITIES and modality not in CONDITION_MODALITIES[base]


def matches(spec: dict, contrast, cfg) -> bool:
    """Whether a stats contrast (name, a, b) is the truth's contrast ``spec`` (see the module docstring)."""
    if spec.get("a") != "residual":
        return contrast.a == spec.get("a") and (contrast.b or None) == spec.get("b")
    if contrast.b:
        return False
    for r in cfg.align.residuals:
        if r.name == contrast.a and r.target == spec.get("target"):
            return all(any(_lacks(p, m) for p in r.predictors) for m in spec.get("without", []))
    return False


def roi_findings(truth: dict, data, cfg) -> list[Finding]:
    """One Finding per (truth ROI present in the stats, contrast) at the report layer."""
    names = data.meta.roi_names
    li = data.layer_index
    out = []
    for roi in truth["rois"]:
        if roi["name"] not in names:
            continue
        ri = names.index(roi["name"])
        null = roi.get("expect_null", [])
        for c in data.contrasts:
            mean, q = float(c.roi["mean"][li, ri]), float(c.roi["q"][li, ri])
            sig = bool(c.roi["significant"][li, ri])
            pos = [s for s in roi.get("expect", []) if matches(s, c, cfg)]
            if pos:
                expect = "positive"
                verdict = FOUND if sig and mean > 0 else OPPOSITE if sig else NOT_FOUND
            elif null == "all" or any(matches(s, c, cfg) for s in null):
                expect, verdict = "null", FALSE_POSITIVE if sig else NULL
            else:
                expect, verdict = "none", UNPLANTED if sig else None
            out.append(Finding(roi["name"], c.name, c.a, c.b, expect, verdict, mean, q, sig,
                               pos[0].get("requires", "") if pos else ""))
    return out


def mlm_findings(cfg, truth: dict) -> list[dict]:
    """joint − no_vision (the mlm reference minus each other condition) top-1 over all episodes, per word
    class of the truth; [] without a classified mlm.csv."""
    words = truth.get("words") or {}
    path = Path(cfg.output) / MLM_CSV
    if not words or not path.is_file():
        return []
    with open(path, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("episode") == "all" and "-" in r.get("condition", "")]
    out = []
    for r in rows:
        if r.get("word_class") not in (words.get("frame_predictable"), words.get("other")):
            continue
        lo, hi = float(r["top1_ci_low"]), float(r["top1_ci_high"])
        ref, other = r["condition"].split("-", 1)
        out.append({"contrast": r["condition"], "a": ref, "b": other, "word_class": r["word_class"],
                    "n_words": int(r["n_words"]), "top1_diff": float(r["top1"]), "ci_low": lo, "ci_high": hi,
                    "ci_excludes_0": bool(lo > 0 or hi < 0),
                    "expect": "positive" if r["word_class"] == words.get("frame_predictable") else "null"})
    return out


def _fmt(x) -> str:
    return "–" if not np.isfinite(x) else f"{x:.3g}"


def sentences(truth: dict, found: list[Finding], mlm: list[dict], ceiling: dict | None, layer) -> list[str]:
    """The section in words: what was planted and what was found, including what was not."""
    desc = {r["name"]: r.get("responds_to", "") for r in truth["rois"]}

    def stat(f):
        return f"mean Δz {_fmt(f.mean_dz)}, q {_fmt(f.q)}"

    def cell(f):
        return f"{f.a} {'vs ' + f.b if f.b else 'vs 0'} ({f.contrast}) in {f.roi}"

    out = []
    for f in (f for f in found if f.expect == "positive"):
        what = f"{f.roi} responds to {desc.get(f.roi, 'a planted signal')}"
        if f.verdict == FOUND:
            out.append(f"Planted and found: {what}; {cell(f)} is significant in the planted direction ({stat(f)}).")
        elif f.verdict == OPPOSITE:
            out.append(f"Planted but found reversed: {what}; {cell(f)} is significant in the opposite "
                       f"direction ({stat(f)}).")
        elif f.requires:
            out.append(f"Planted but not found: {what}, but {cell(f)} is not significant ({stat(f)}). Finding "
                       f"it needs {f.requires}; the analysed model's do not: its joint representation adds "
                       f"nothing detectably brain-relevant beyond its unimodal ones, "
                       f"which is what {SEED_STUDY} report for pre-trained MERLOT Reserve. The residual method "
                       f"itself finds this ROI in features that carry the interaction (README, The demo "
                       f"dataset).")
        else:
            out.append(f"Planted but not found: {what}, but {cell(f)} is not significant ({stat(f)}).")
    nulls = [f for f in found if f.expect == "null"]
    fp = [f for f in nulls if f.verdict == FALSE_POSITIVE]
    for kind, rois in (("all", [r["name"] for r in truth["rois"] if r.get("expect_null") == "all"]),
                       ("some", [r["name"] for r in truth["rois"] if r.get("expect_null") not in ("all", None, [])])):
        cells = [f for f in nulls if f.roi in rois]
        clean = [r for r in rois if not any(f.roi == r and f.verdict == FALSE_POSITIVE for f in cells)]
        if not cells or not clean:
            continue
        if kind == "all":
            out.append(f"Planted null and found null: no contrast is significant in {', '.join(clean)} "
                       "(ROIs driven by nothing).")
        else:
            names = sorted({f.contrast for f in cells if f.roi in clean})
            out.append(f"Planted null and found null: {', '.join(names)} is not significant in "
                       f"{', '.join(clean)} (ROIs driven by one modality only).")
    for f in fp:
        out.append(f"False positive: {cell(f)} was planted null but is significant ({stat(f)}).")
    for f in (f for f in found if f.verdict == UNPLANTED):
        direction = ">" if f.mean_dz > 0 else "<"
        out.append(f"Not planted, found: {f.a} {direction} {f.b or '0'} in {f.roi} ({stat(f)}), a property of "
                   "the analysed model's features, not of the simulated brain.")
    if ceiling:
        parts = [f"{roi} planted {_fmt(v['planted'])}, estimated {_fmt(v['estimated'])}" for roi, v in ceiling.items()]
        out.append(f"Noise ceiling (r of the shared response with one subject's BOLD, mean over subjects): "
                   f"{'; '.join(parts)}.")
    words = truth.get("words") or {}
    for m in mlm:
        ci = f"{_fmt(m['top1_diff'])} [{_fmt(m['ci_low'])}, {_fmt(m['ci_high'])}]"
        if m["expect"] == "positive":
            verdict = ("vision helps predict them, the seed study's first finding" if m["ci_excludes_0"] and
                       m["top1_diff"] > 0 else "no gain found (not as planted)")
            out.append(f"Masked-word prediction, the {m['n_words']} words the frames predict ({words.get('rule', '')}):"
                       f" top-1 {m['a']} − {m['b']} = {ci} (95 % bootstrap CI); {verdict}.")
        else:
            verdict = ("no gain, the CI includes 0, as planted" if not m["ci_excludes_0"] else
                       "a difference the frames should not give (not as planted)")
            out.append(f"Masked-word prediction, the {m['n_words']} other words: top-1 {m['a']} − {m['b']} = {ci}; "
                       f"{verdict}.")
    if layer is not None:
        out.insert(0, f"All ROI statements at the report layer {layer}.")
    return out


def ceiling_comparison(truth: dict, data) -> dict | None:
    """{roi: {"planted", "estimated"}} for planted ROIs when stats.h5 has a noise ceiling."""
    if data.ceiling is None:
        return None
    names = data.meta.roi_names
    out = {}
    for r in truth["rois"]:
        planted = r.get("planted_ceiling")
        if planted and r["name"] in names:
            est = np.asarray(data.ceiling["roi_ceiling"], np.float64)[:, names.index(r["name"])]
            out[r["name"]] = {"planted": float(np.mean(list(planted.values()))), "estimated": float(np.nanmean(est))}
    return out or None


def build(cfg, data) -> dict | None:
    """Everything of the section as plain data (written to report/findings.json); None without a truth."""
    truth = load_truth(cfg)
    if truth is None:
        return None
    found = roi_findings(truth, data, cfg)
    mlm = mlm_findings(cfg, truth)
    ceiling = ceiling_comparison(truth, data)
    layer = data.meta.layers[data.layer_index]
    return {"truth": str(Path(cfg.data.root) / TRUTH), "layer": layer,
            "rois": [asdict(f) for f in found], "mlm": mlm, "ceiling": ceiling,
            "sentences": sentences(truth, found, mlm, ceiling, layer)}


def to_html(section: dict | None) -> str:
    if not section:
        return ""
    rows = "".join(
        f"<tr{' class=sig' if f['significant'] else ''}><td class=l>{html.escape(f['roi'])}</td>"
        f"<td class=l>{html.escape(f['contrast'])}</td><td class=l>{html.escape(f['expect'])}</td>"
        f"<td>{_fmt(f['mean_dz'])}</td><td>{_fmt(f['q'])}</td><td class=l>{html.escape(f['verdict'] or '')}</td></tr>"
        for f in section["rois"])
    items = "".join(f"<li>{html.escape(s)}</li>" for s in section["sentences"])
    return (f"<h2>Planted vs found</h2><p>The data are simulated; {html.escape(section['truth'])} records what "
            f"was planted.</p><ul>{items}</ul><details><summary>every ROI × contrast at layer {section['layer']}"
            "</summary><table><tr><th class=l>ROI</th><th class=l>contrast</th><th class=l>planted</th>"
            f"<th>mean Δz</th><th>q</th><th class=l>verdict</th></tr>{rows}</table></details>")
