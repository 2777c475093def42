"""The checkpoints a config names (``model.checkpoint``, ``model.variants[i].checkpoint``), checked before any
work is done: ``validate`` and ``submit`` (dry run too) refuse, in one line naming the key, a checkpoint that
does not exist or that its backbone cannot read. A checkpoint a stage of the pipeline writes (the demo's
pretrained tiny model under ``data.root``, ``finetune``'s model.pt) is not checked: it comes later."""
from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..stagetable import STAGES


def named_checkpoints(cfg) -> list:
    """(key, path) of every checkpoint the config names."""
    out = [("model.checkpoint", cfg.model.checkpoint)] if cfg.model.checkpoint else []
    out += [(f"model.variants[{i}].checkpoint", v.checkpoint) for i, v in enumerate(cfg.model.variants)
            if v.checkpoint]
    return [(k, cfg.path(p)) for k, p in out]


def _produced(cfg) -> list:
    paths = []
    for s in cfg.pipeline:
        spec = STAGES.get(s)
        if spec is not None and spec.produces is not None:
            paths += [Path(p).resolve() for p in spec.produces(cfg)]
    return paths


def _exists(path: Path, key: str) -> None:
    if not path.exists():
        raise ConfigError(f"{key}: checkpoint not found: {path}")


def _merlot(path: Path, key: str) -> None:
    from ..models.merlot.convert import check_converted

    check_converted(path, key)


#: backbone -> check(path, key); hf checkpoints may be hub names (resolved when loaded): not checked here
CHECKS = {"tiny": _exists, "merlot_reserve": _merlot}


def check_checkpoints(cfg) -> int:
    """Check every named checkpoint not written by a stage of the pipeline; returns how many were checked."""
    check = CHECKS.get(cfg.model.backbone)
    if check is None:
        return 0
    produced = _produced(cfg)
    n = 0
    for key, path in named_checkpoints(cfg):
        p = path.resolve()
        if any(p == q or q in p.parents for q in produced):
            continue
        check(path, key)
        n += 1
    return n
