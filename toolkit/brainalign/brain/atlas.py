"""Atlas label names and ROI groups: which label is which region, and which labels form one ROI.

Label names (``data.bold.roi_names``) are read from any of the three files atlases ship with, detected from
the content:

- a BIDS dseg TSV with a header holding ``index`` and ``name`` (templateflow's ``*_dseg.tsv``, nilearn's
  ``atlas.lut``);
- a colour look-up table without a header, one ``index name [R G B A]`` row per label, whitespace-separated,
  ``#`` comments allowed (the Schaefer ``Schaefer2018_1000Parcels_7Networks_order.txt`` that nilearn's
  ``fetch_atlas_schaefer_2018`` reads, FreeSurfer LUTs);
- a labels list, one name per line, line k naming label k (nilearn's ``atlas.labels``); a first line
  ``Background`` names label 0.

Without a names file every label is named by its number. ROI groups (``data.bold.roi_groups``): ``null`` —
every label is an ROI; ``networks`` — labels grouped by the network in their Schaefer/Yeo name
(``7Networks_LH_Default_Par_3`` -> ``Default``); or a list ``{name, labels}`` whose ``labels`` are label
names (``fnmatch`` patterns such as ``7Networks_*_Vis_*``) or label numbers.
"""
from __future__ import annotations

import csv
import fnmatch
import re
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError

_NETWORK = re.compile(r"^\d+Networks_(?:LH|RH)_(?P<network>[A-Za-z]+)(?:_|$)")


def read_label_names(path) -> dict[int, str]:
    """{label: name} from a dseg TSV, a colour LUT or a labels list (format detected; see the module doc)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"ROI names file not found: {path}")
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    rows = [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not rows:
        raise DataError(f"ROI names {path}: empty file")
    head = [c.strip().lower() for c in rows[0].split("\t")]
    if "index" in head or "name" in head:
        return _read_dseg_tsv(path)
    first = rows[0].split()
    if len(first) >= 2 and first[0].lstrip("-").isdigit():
        return _read_lut(path, lines)
    return _read_labels_list(path, lines)


def _read_dseg_tsv(path) -> dict[int, str]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        cols = reader.fieldnames or []
        if "index" not in cols or "name" not in cols:
            raise DataError(f"ROI names {path} line 1: needs tab-separated columns 'index' and 'name' "
                            f"(has: {', '.join(cols) or 'nothing'})")
        names = {}
        for n, row in enumerate(reader, start=2):
            try:
                idx = int(row["index"])
            except (TypeError, ValueError):
                raise DataError(f"ROI names {path} line {n}: index {row['index']!r} is not an integer") from None
            if idx in names:
                raise DataError(f"ROI names {path} line {n}: duplicate index {idx}")
            names[idx] = (row["name"] or "").strip()
    return names


def _read_lut(path, lines) -> dict[int, str]:
    names = {}
    for n, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        cells = line.split()
        if len(cells) < 2 or not cells[0].lstrip("-").isdigit():
            raise DataError(f"ROI names {path} line {n}: expected 'index name [R G B A]', got {line.strip()[:60]!r}")
        idx = int(cells[0])
        if idx in names:
            raise DataError(f"ROI names {path} line {n}: duplicate index {idx}")
        names[idx] = cells[1]
    return names


def _read_labels_list(path, lines) -> dict[int, str]:
    names = [ln.strip() for ln in lines if ln.strip()]
    start = 0 if names and names[0].lower() in ("background", "unknown", "0") else 1
    return {i + start: name for i, name in enumerate(names)}


def network_of(name: str) -> str | None:
    """The Yeo network in a Schaefer label name (``7Networks_RH_SalVentAttn_Med_2`` -> ``SalVentAttn``)."""
    m = _NETWORK.match(name)
    return m["network"] if m else None


def group_labels(names: dict[int, str], groups) -> tuple[dict[int, int], dict[int, str]]:
    """(label -> ROI id, ROI id -> ROI name) for ``data.bold.roi_groups`` (``None``, ``"networks"`` or a list of
    objects with ``name`` and ``labels``). Labels in no group map to 0 (no ROI). ConfigError naming the key when
    a pattern matches nothing, a name is not Schaefer-style, or two groups claim one label."""
    labels = sorted(k for k in names if k != 0)
    if groups is None:
        return {k: k for k in labels}, {k: names[k] for k in labels}
    if groups == "networks":
        nets, of = [], {}
        for k in labels:
            net = network_of(names[k])
            if net is None:
                raise ConfigError(f"data.bold.roi_groups: networks needs Schaefer/Yeo label names such as "
                                  f"7Networks_LH_Vis_1; label {k} is named {names[k]!r}")
            if net not in nets:
                nets.append(net)
            of[k] = nets.index(net) + 1
        return of, {i + 1: n for i, n in enumerate(nets)}
    of, out = {}, {}
    for gi, g in enumerate(groups, start=1):
        key = f"data.bold.roi_groups[{gi - 1}]"
        hits = set()
        for pat in g.labels:
            pat = str(pat)
            found = ({int(pat)} & set(labels)) if pat.lstrip("-").isdigit() else {
                k for k in labels if fnmatch.fnmatchcase(names[k], pat)}
            if not found:
                raise ConfigError(f"{key}.labels: {pat!r} matches no atlas label (names look like "
                                  f"{names[labels[0]]!r})" if labels else f"{key}.labels: the atlas has no labels")
            hits |= found
        for k in sorted(hits):
            if k in of:
                raise ConfigError(f"{key}.labels: label {k} ({names[k]}) is already in ROI {out[of[k]]!r}")
            of[k] = gi
        out[gi] = g.name
    return of, out


def relabel(values: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    """int32 array with each label replaced by ``mapping[label]`` (labels not in it -> 0)."""
    values = np.asarray(values)
    if not mapping or values.size == 0:
        return np.zeros(values.shape, np.int32)
    keys = np.fromiter(mapping, dtype=np.int64)
    lut = np.zeros(int(max(keys.max(), values.max(initial=0))) + 1, np.int32)
    lut[keys] = np.fromiter(mapping.values(), dtype=np.int32)
    out = np.zeros(values.shape, np.int32)
    ok = values > 0
    out[ok] = lut[values[ok].astype(np.int64)]
    return out
