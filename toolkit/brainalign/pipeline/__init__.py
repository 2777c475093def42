"""The pipeline layer: stage dispatch (each verb runs the stage functions the stage table,
:mod:`brainalign.stagetable`, lists for it: ``f(cfg, force) -> Path``; ``run`` chains the config's verbs) and
``brainalign status`` (:mod:`.status`). It imports the stage modules; they never import it."""
import importlib
import time

from ..interrupt import Interrupted
from ..log import get_logger
from ..stagetable import stages_of

log = get_logger("pipeline")


def stage_function(spec):
    """The stage function of a table entry (``run``: "module:function"); importing it loads the stage."""
    mod, fn = spec.run.split(":")
    return getattr(importlib.import_module(mod), fn)


def run_stage(cfg, stage, force=False):
    """Run one verb: its stages in order (``stats``: the permutation tests first, when on). Returns what the
    verb's own stage function returned (the path it wrote)."""
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


def run_pipeline(cfg, stages=None, force=False):
    outs = {}
    for stage in stages or cfg.pipeline:
        outs[stage] = run_stage(cfg, stage, force=force)
    return outs
