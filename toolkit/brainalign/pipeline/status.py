"""``brainalign status CONFIG``: per stage current / stale (why) / missing, running nothing."""
from __future__ import annotations

from ..stagecheck import assessor
from ..stagekeys import State
from ..stagetable import ORDER, STAGES
from .lock import describe, holders


def shown_stages(cfg, stages=None) -> list:
    """The stages to report: those of ``stages`` or the config's pipeline (verbs), in data-flow order; a stage
    another verb runs (permutation: stats) joins it when enabled (``stats.permutations`` > 0)."""
    from . import check_stage_names

    wanted = set(check_stage_names(stages or cfg.pipeline, known=ORDER))
    return [s for s in ORDER if STAGES[s].verb_of in wanted and (STAGES[s].verb_of == s or STAGES[s].enabled(cfg))]


def assess_all(cfg, stages=None) -> list[State]:
    a = assessor(cfg, planning=True)
    return [a.state(s) for s in shown_stages(cfg, stages)]


def format_status(cfg, states, verbose=False) -> str:
    mode = "content (SHA-256)" if cfg.pipeline.fingerprint == "content" else "size + mtime"
    lines = [f"brainalign status {cfg.source or cfg.name}: {len(states)} stages; input files compared by {mode}"]
    running = holders(cfg.out)
    if running:        # outputs may change under this listing
        lines.append("a run is in progress on this output: " + "; ".join(describe(e) for e in running))
    width = max([len(s.stage) for s in states] + [8])
    for st in states:
        if st.current:
            units = f", {len(st.units)} units" if st.units else ""
            what = f"{st.output} (key {st.key}{units})" if st.status == "current" else st.reasons[0]
        else:
            what = "; ".join(st.reasons) if verbose else st.why()
        lines.append(f"  {st.stage:<{width}}  {st.status:<8} {what}")
        if verbose:
            lines += [f"  {'':<{width}}  {'':<8} note: {n}" for n in st.notes]
    todo = [s.stage for s in states if not s.current]
    lines.append(f"to run: {' '.join(todo)}" if todo else "everything is current: `brainalign run` would skip "
                 "every stage")
    return "\n".join(lines)


def print_status(cfg, stages=None, verbose=False) -> list[State]:
    states = assess_all(cfg, stages)
    print(format_status(cfg, states, verbose))
    return states
