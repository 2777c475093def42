"""The pipeline layer: stage dispatch (each verb -> one stage function ``f(cfg, force) -> Path``; ``run``
chains them), the stage keys that decide what is current (:mod:`.keys`, declared per stage in
:mod:`.stages`) and ``brainalign status`` (:mod:`.status`)."""
import importlib
import time

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


def check_stage_names(stages, known=STAGE_FUNCS, what="--stages") -> list:
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
    check_stage_names([stage], what="stage")
    mod, fn = STAGE_FUNCS[stage]
    func = getattr(importlib.import_module(mod), fn)
    t0 = time.perf_counter()
    log.info("stage %s: start", stage)
    out = func(cfg, force=force)
    log.info("stage %s: done in %.1f s -> %s", stage, time.perf_counter() - t0, out)
    return out


def run_pipeline(cfg, stages=None, force=False):
    outs = {}
    stages = check_stage_names(stages or cfg.pipeline)
    from .preflight import MODEL_STAGES, check_backbone

    if any(s in MODEL_STAGES for s in stages):
        check_backbone(cfg)            # before simulate's minutes of work, not after them
    for stage in stages:
        outs[stage] = run_stage(cfg, stage, force=force)
    return outs
