"""What ``run`` would reject before doing any work, checked without doing it (``brainalign validate``, and the
start of ``run``): the stage names, the backbone name and the data files the config resolves to."""
from __future__ import annotations

from ..errors import ConfigError

#: stages that build the backbone named by model.backbone
MODEL_STAGES = ("extract", "mlm", "finetune")


def check_backbone(cfg) -> None:
    """One line naming ``model.backbone`` when it is not a registered backbone (a typo such as ``tinny``)."""
    from ..models.registry import available_backbones

    known = available_backbones()
    name = cfg.model.backbone
    if name not in known:
        import difflib

        close = difflib.get_close_matches(name, known, n=1)
        raise ConfigError(f"model.backbone: unknown backbone {name!r}"
                          + (f" (did you mean {close[0]!r}?)" if close else "") + f"; known: {', '.join(known)}")


def preflight(cfg, stages=None) -> str:
    """Every check that needs no work; returns the one-line summary of the data files (ConfigError otherwise)."""
    from . import check_stage_names
    from ..datafiles import check_data_files

    stages = check_stage_names(stages or cfg.pipeline, what="pipeline")
    if any(s in MODEL_STAGES for s in stages):
        check_backbone(cfg)
    return check_data_files(cfg)
