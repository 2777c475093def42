"""Input conditions: which modalities a backbone sees for each window.

A condition keeps a subset of the three modalities. For the tiny model (and any backbone that can)
a removed modality is realised by DROPPING its tokens from the input sequence, not by blanking them,
so e.g. ``no_vision`` is exactly the model run without any vision tokens.
"""
from __future__ import annotations

from ..config import CONDITIONS
from ..errors import ConfigError

MODALITIES = ("vision", "language", "audio")

#: condition -> modalities kept (the others are dropped)
CONDITION_MODALITIES: dict[str, frozenset] = {
    "joint": frozenset({"vision", "language", "audio"}),
    "no_vision": frozenset({"language", "audio"}),
    "no_language": frozenset({"vision", "audio"}),
    "no_audio": frozenset({"vision", "language"}),
    "vision_only": frozenset({"vision"}),
    "language_only": frozenset({"language"}),
}
assert set(CONDITION_MODALITIES) == set(CONDITIONS)


def modalities(condition: str) -> frozenset:
    """The modalities kept under ``condition``; ConfigError for an unknown name."""
    try:
        return CONDITION_MODALITIES[condition]
    except KeyError:
        raise ConfigError(f"unknown condition {condition!r} (known: {', '.join(CONDITIONS)})") from None
