"""The pipeline layer: stage dispatch (each verb runs the stage functions the stage table,
:mod:`brainalign.stagetable`, lists for it: ``f(cfg, force) -> Path``; ``run`` chains the config's verbs) and
``brainalign status`` (:mod:`.status`). It imports the stage modules; they never import it."""
import importlib
import time

from ..interrupt import Interrupted
from ..log import get_logger
from ..stagetable import VERBS, stages_of

log = get_logger("pipeline")


def stage_function(spec):
    """The stage function of a table entry (``run``: "module:function"); importing it loads the stage."""
    mod, fn = spec.run.split(":")
    return getattr(importlib.import_module(mod), fn)


def check_stage_names(stages, known=VERBS, what="--stages") -> list:
    """``stages`` as a list; one line naming the first unknown stage (with the known ones) otherwise."""
    from ..errors import ConfigError

    for s in stages:
        if s not in known:
            import difflib

            close = difflib.get_close_matches(s, known, n=1)
            raise ConfigError(f"{what}: unknown stage {s!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                              + f"; stages: {', '.join(known)}")
    return list(stages)


def run_stage(cfg, stage, force=False):
    """Run one verb: its stages in order (``stats``: the permutation tests first, when on). Returns what the
    verb's own stage function returned (the path it wrote)."""
    check_stage_names([stage], what="stage")
    specs = stages_of(cfg, stage)
    t0 = time.perf_counter()
    log.info("stage %s: start", stage)
    try:
        for spec in specs:
            out = stage_function(spec)(cfg, force=force)
    except Interrupted as e:
        e.stage = e.stage or stage
        raise
    log.info("stage %s: done in %.1f s -> %s", stage, time.perf_counter() - t0, out)
    return out


def check_pipeline(cfg, stages=None) -> list:
    """The stages ``run`` would execute, checked before any work or output (the stage names, the backbone)."""
    stages = check_stage_names(stages or cfg.pipeline)
    from .preflight import MODEL_STAGES, check_backbone

    if any(s in MODEL_STAGES for s in stages):
        check_backbone(cfg)            # before simulate's minutes of work, not after them
    return stages


def run_pipeline(cfg, stages=None, force=False):
    outs = {}
    stages = check_pipeline(cfg, stages)
    for stage in stages:
        outs[stage] = run_stage(cfg, stage, force=force)
    return outs
