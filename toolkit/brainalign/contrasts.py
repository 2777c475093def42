"""Contrasts between feature sets: ``stats.contrasts`` resolved onto the feature sets of scores.h5.

A leaf module shared by stats and permutation (neither imports the other for it)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from .errors import ConfigError

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass
class Contrast:
    name: str
    a: str
    b: Optional[str]
    ia: int
    ib: Optional[int]


def resolve_contrasts(cfg, feature_sets) -> list[Contrast]:
    """Map cfg.stats.contrasts onto indices into scores.h5's feature sets (ConfigError naming the key)."""
    out, seen = [], set()
    for i, c in enumerate(cfg.stats.contrasts):
        key = f"stats.contrasts[{i}]"
        if not _SAFE_NAME.match(c.name or ""):
            raise ConfigError(f"{key}.name: {c.name!r} must be letters, digits, '_', '.', '+' or '-' "
                              "(it names HDF5 groups and files)")
        if c.name in seen:
            raise ConfigError(f"{key}.name: duplicate contrast name {c.name!r}")
        seen.add(c.name)
        for side in ("a", "b"):
            v = getattr(c, side)
            if (side == "a" or v is not None) and v not in feature_sets:
                raise ConfigError(f"{key}.{side}: {v!r} is not a feature set in scores.h5 "
                                  f"({', '.join(feature_sets)})")
        if c.a == c.b:
            raise ConfigError(f"{key}.b: a and b are the same feature set {c.a!r}")
        out.append(Contrast(c.name, c.a, c.b, feature_sets.index(c.a),
                            None if c.b is None else feature_sets.index(c.b)))
    return out
