"""The check at the top of every stage: is its output current (skip) or what changed (run), with the key its
output will carry. The mechanism is brainalign.stagekeys, the declarations brainalign.stagetable."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from .errors import BrainAlignError
from .log import get_logger
from .stagekeys import Assessor, State
from .stagetable import ORDER, STAGES

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
    check_upstream(cfg, stage)           # it runs (or is skipped as current) only on current upstream outputs
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


# ---- upstream outputs that are not what their stage would make now -------------------------------

class StaleUpstream(BrainAlignError):
    """An upstream output was made with other settings or inputs than its stage would use now."""


def _own_reasons(st: State) -> list:
    """How ``st``'s output differs from what its stage would make now, besides an upstream stage that will
    re-run (that one's own reasons say why)."""
    return [r for r in st.changed if not (r.startswith("upstream ") and r.endswith(" will re-run"))]


def stale_upstream(cfg, stage: str) -> tuple[list, list]:
    """(stale, chain): the upstream stages of ``stage`` (transitively, those the config's pipeline runs)
    whose output has a stage key other than the one the stage would give it now, and every upstream
    stage that must re-run to refresh them (data-flow order). An output without a key (made by hand or
    by an older brainalign), a missing or incomplete one is not stale here: the stage's readers judge those."""
    a = assessor(cfg, planning=True)
    run = set(cfg.pipeline) | ({"permutation"} if "stats" in cfg.pipeline else set())
    ancestors, todo = set(), [stage]
    while todo:
        for u in STAGES[todo.pop()].upstream_of(cfg):
            if u in run and u not in ancestors:
                ancestors.add(u)
                todo.append(u)
    stale, chain = [], []
    for u in (s for s in ORDER if s in ancestors):
        st = a.state(u)
        if st.current or st.status == "missing":
            continue
        if _own_reasons(st):
            stale.append(st)
            chain.append(u)
        elif any(c in STAGES[u].upstream_of(cfg) for c in chain):
            chain.append(u)
    return stale, chain


def check_upstream(cfg, stage: str) -> None:
    """Refuse (one line) to run ``stage`` on a stale upstream output, unless ``--allow-stale`` (logged)."""
    stale, chain = stale_upstream(cfg, stage)
    if not stale:
        return
    st = stale[0]
    why = "; ".join(_own_reasons(st)[:2])
    source = cfg.source or "CONFIG"
    fix = f"brainalign {chain[0]} {source}" if len(chain) == 1 else f"brainalign run {source} --stages {' '.join(chain)}"
    if cfg.pipeline.allow_stale:
        log.warning("%s: --allow-stale: using the stale upstream %s output %s (%s)", stage, st.stage, st.output, why)
        return
    raise StaleUpstream(f"{stage}: upstream {st.stage} output {st.output} is stale ({why}); refresh it with "
                        f"`{fix}`, or pass --allow-stale to use it as it is")


def invalidate(cfg, stage: str) -> None:
    """Remove a stage's record files (the files carrying its key) before it writes its first output: its
    other outputs (CSV, maps) then never sit beside an older record that would make them look complete;
    the new record is written last."""
    for p in map(Path, STAGES[stage].records(cfg)):
        if p.is_file():
            log.debug("%s: removing the old %s before writing the new outputs", stage, p)
            p.unlink()
