"""Report pieces that are not brain maps: the legend that defines every feature set and condition, the
masked-word figure from ``mlm.csv``, and the script that makes the report's tables sortable."""
from __future__ import annotations

import csv
import html
from pathlib import Path

import numpy as np

from .models.conditions import CONDITION_MODALITIES, MODALITIES

#: clicking a column header sorts the table by it (numbers as numbers; again: the other way)
SORT_JS = """<script>
document.querySelectorAll('table.sortable th').forEach(function (th) {
  th.title = 'click to sort'; th.style.cursor = 'pointer';
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0], i = th.cellIndex;
    var rows = Array.from(body.rows), asc = th.dataset.dir !== 'asc';
    var key = function (r) { var t = r.cells[i] ? r.cells[i].textContent.trim() : '';
                             var n = parseFloat(t.replace('\\u2212', '-')); return isNaN(n) ? t : n; };
    rows.sort(function (a, b) { var x = key(a), y = key(b);
      if (typeof x !== typeof y) return typeof x === 'number' ? -1 : 1;
      return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1); });
    rows.forEach(function (r) { body.appendChild(r); });
    table.querySelectorAll('th').forEach(function (h) { delete h.dataset.dir; });
    th.dataset.dir = asc ? 'asc' : 'desc';
  });
});
</script>"""


def feature_set_definition(cfg, name: str) -> str:
    """What a feature set is, in words: an input condition (the modalities the model saw), a residual (what it
    is the residual of), or a variant's condition (another checkpoint)."""
    residuals = {r.name: r for r in cfg.align.residuals}
    if name in residuals:
        r = residuals[name]
        return (f"residual: {r.target} minus its ridge prediction from {' + '.join(r.predictors)} (fitted on the "
                f"training runs of each outer fold only) -- what {r.target} carries beyond "
                f"{' and '.join(r.predictors)}")
    if name in CONDITION_MODALITIES:
        return condition_definition(name)
    for v in getattr(cfg.model, "variants", []) or []:
        vname = getattr(v, "name", None)
        if vname and name.startswith(f"{vname}_"):
            base = name[len(vname) + 1:]
            return (f"{condition_definition(base) if base in CONDITION_MODALITIES else base}; model checkpoint "
                    f"of variant '{vname}' ({getattr(v, 'checkpoint', '')})")
    return "see the config (align / fit sections)"


def condition_definition(name: str) -> str:
    kept = CONDITION_MODALITIES[name]
    dropped = [m for m in MODALITIES if m not in kept]
    seen = ", ".join(m for m in MODALITIES if m in kept)
    return (f"input condition: the model's hidden states with {seen} as input"
            + (f" ({', '.join(dropped)} tokens removed from the input, not blanked)" if dropped else ""))


def legend_html(cfg, feature_sets, contrasts) -> str:
    """A table defining every feature set (and condition) shown, and what each contrast's sign means."""
    rows = "".join(f"<tr><td class=l><b>{html.escape(fs)}</b></td><td class=l>"
                   f"{html.escape(feature_set_definition(cfg, fs))}</td></tr>" for fs in feature_sets)
    extra = [c for c in cfg.model.conditions if c not in feature_sets]
    rows += "".join(f"<tr><td class=l>{html.escape(c)}</td><td class=l>{html.escape(condition_definition(c))} "
                    "(extracted, not fitted)</td></tr>" for c in extra if c in CONDITION_MODALITIES)
    crows = "".join(f"<tr><td class=l><b>{html.escape(c.name)}</b></td><td class=l>{html.escape(c.a)} − "
                    f"{html.escape(c.b or '0')}: <span class=pos>+</span> where {html.escape(c.a)} &gt; "
                    f"{html.escape(c.b or '0')}, <span class=neg>−</span> where {html.escape(c.a)} &lt; "
                    f"{html.escape(c.b or '0')}</td></tr>" for c in contrasts)
    return ("<h2>Legend</h2><p>Definitions (No significance test in these tables). Feature sets: each is one "
            "encoding model's input; layer-wise hidden states of the backbone "
            f"<code>{html.escape(cfg.model.backbone)}</code>, pooled per TR window.</p>"
            f"<table><tr><th class=l>feature set</th><th class=l>definition</th></tr>{rows}</table>"
            + (f"<p>Contrasts: the Fisher-z difference of r, per subject, then across subjects (definitions; No "
               "significance test in this table):</p><table><tr>"
               f"<th class=l>contrast</th><th class=l>difference and sign</th></tr>{crows}</table>" if crows else ""))


# ---- masked-word prediction --------------------------------------------------------------------------

def read_mlm(path) -> list[dict]:
    """The rows of mlm.csv over all episodes (episode ``all``), floats parsed; [] when there is no file."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("episode") == "all"]
    for r in rows:
        for k, v in list(r.items()):
            if k not in ("condition", "episode", "word_class"):
                try:
                    r[k] = float(v)
                except (TypeError, ValueError):
                    r[k] = float("nan")
    return rows


def fig_mlm(rows: list[dict], title: str):
    """Top-1 masked-word accuracy per condition (bars) within each word class, bootstrap 95 % CI."""
    from matplotlib.figure import Figure

    diffs = [r for r in rows if "-" in r["condition"]]          # "joint-no_vision": a paired difference
    rows = [r for r in rows if "-" not in r["condition"]]
    classes = list(dict.fromkeys(r["word_class"] or "all words" for r in rows))
    conds = list(dict.fromkeys(r["condition"] for r in rows))
    fig = Figure(figsize=(min(14.0, 2.2 + 2.0 * len(classes) * max(1, len(conds)) / 2), 4.2), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / max(len(conds), 1)
    import matplotlib

    colors = [matplotlib.colormaps["tab10"](i % 10) for i in range(len(conds))]
    for ci, c in enumerate(conds):
        xs, ys, lo, hi, ns = [], [], [], [], []
        for ki, k in enumerate(classes):
            r = next((r for r in rows if r["condition"] == c and (r["word_class"] or "all words") == k), None)
            if r is None:
                continue
            xs.append(ki - 0.4 + width * (ci + 0.5))
            ys.append(r["top1"])
            lo.append(r["top1"] - r["top1_ci_low"])
            hi.append(r["top1_ci_high"] - r["top1"])
            ns.append(int(r["n_words"]) if np.isfinite(r["n_words"]) else 0)
        ax.bar(xs, ys, width * 0.92, yerr=[lo, hi], capsize=3, color=colors[ci], label=c, zorder=2)
        for x, n in zip(xs, ns):
            ax.text(x, 0.01, f"n={n}", ha="center", va="bottom", fontsize=8, rotation=90, color="white")
    for d in diffs:                                              # the paired difference, in words, per class
        k = d["word_class"] or "all words"
        if k in classes:
            a, b = d["condition"].split("-", 1)
            ax.text(classes.index(k), 0.97, f"{a} − {b}: {d['top1']:+.2f}\n[{d['top1_ci_low']:+.2f}, "
                    f"{d['top1_ci_high']:+.2f}]", ha="center", va="top", fontsize=9,
                    color="#1b7837" if d["top1_ci_low"] > 0 else "#762a83" if d["top1_ci_high"] < 0 else "0.3")
    ax.set_xticks(range(len(classes)), [k.replace("_", " ") for k in classes])
    ax.set_ylabel("top-1 accuracy (masked word)")
    ax.set_ylim(0, 1)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(title="condition", frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(f"{title}\nmasked-word prediction per input condition (bootstrap 95 % CI; top: the paired "
                 "difference)", fontsize=10)
    return fig
