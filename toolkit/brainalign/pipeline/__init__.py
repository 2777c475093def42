"""The pipeline layer: stage dispatch (each verb -> one stage function ``f(cfg, force) -> Path``; ``run``
chains them), the stage keys that decide what is current (:mod:`.keys`, declared per stage in
:mod:`.stages`) and ``brainalign status`` (:mod:`.status`)."""
import importlib
import time

from ..interrupt import Interrupted
from ..log import get_logger

log = get_logger("pipeline")

# verb -> (module, function); every function takes (cfg, force=False) and returns the path it wrote
STAGE_FUNCS = {
    "simulate": ("brainalign.simulate", "simulate"),
    "extract": ("brainalign.extract", "run_extract"),
    "align": ("brainalign.align", "run_align"),
    "fit": ("brainalign.fit", "run_fit"),
    "stats": ("brainalign.stats", "run_stats"),
    "report": ("brainalign.report", "run_report"),
    "mlm": ("brainalign.mlm", "run_mlm"),
    "finetune": ("brainalign.finetune", "run_finetune"),
}


def run_stage(cfg, stage, force=False):
    mod, fn = STAGE_FUNCS[stage]
    func = getattr(importlib.import_module(mod), fn)
    t0 = time.perf_counter()
    log.info("stage %s: start", stage)
    try:
        out = func(cfg, force=force)
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
