"""The check at the top of every stage: is its output current (skip) or what changed (run), with the key its
output will carry. The mechanism is brainalign.stagekeys, the declarations brainalign.stagetable."""
from __future__ import annotations

from typing import Optional

from .log import get_logger
from .stagekeys import Assessor, State
from .stagetable import STAGES

log = get_logger("pipeline")


def assessor(cfg, planning: bool = True, **kw) -> Assessor:
    """An Assessor of ``cfg``'s stages as the stage table declares them."""
    return Assessor(cfg, STAGES, planning=planning, **kw)


def stage_check(cfg, stage: str, force: bool = False, quiet: bool = False, values: Optional[dict] = None) -> State:
    """Called at the top of a stage: its State for this run (upstream keys read from the upstream outputs).

    Logs why it is skipped ("current") or what changed; with ``force`` it is always stale. The returned
    ``.attrs`` / ``.json_fields()`` go into the output's provenance. ``values`` overrides declared values
    (run-time arguments of the stage function that change its result).
    """
    a = assessor(cfg, planning=False, values={stage: values or {}})
    st = a.state(stage)
    if st.status == "off":
        return st
    for note in st.notes:
        log.warning("%s: %s", stage, note)
    if force:
        exp = st.expected                # every assessed state (not "off") has one
        forced = State(stage, "stale", ["--force"], st.key if st.units else exp.hash_inputs().key, exp,
                       units=st.units,
                       output=st.output)
        if not quiet:
            log.info("%s: --force: recomputing", stage)
        return forced
    if quiet:
        return st
    if st.current and st.units:
        log.info("%s: %s is current (stage key %s over %d units); skipping", stage, st.output, st.key, len(st.units))
    elif st.current:
        exp = st.expected
        log.info("%s: %s is current (stage key %s: its %d config values, %d upstream keys and %d input files are "
                 "unchanged); skipping", stage, st.output, st.key, len(exp.config), len(exp.upstream),
                 len(exp.inputs))
    elif st.status == "missing":
        log.info("%s: %s; running %s", stage, st.reasons[0], stage)
    else:
        log.info("%s: %s; re-running %s", stage, st.why(), stage)
    return st
