"""Find fMRIPrep-derivative BOLD runs by BIDS entities; pick among re-scans of one run.

A run scanned in several sessions (CNeuroMod re-scans a segment whose scan failed QC, in a later session, e.g.
sub-06 task-s02e04b in ses-006 and ses-041) is chosen by ``data.bold.rescans``: ``last`` (the default: the
re-scan that passed QC), ``first``, or ``error``; ``data.bold.rescan_sessions`` names the session of one
run. Candidates that differ in more than the session (e.g. ``task-figures01_run-1`` and ``_run-2``, two
viewings of one movie segment) are never re-scans: name the run (``figures01_run-1``) instead.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import DataError
from ..log import get_logger

log = get_logger("brain")
_SES = re.compile(r"(^|_|/)ses-([0-9A-Za-z]+)")


class MissingRunError(DataError):
    """A run the config lists is not in a subject's data (``data.missing_runs`` decides what happens)."""


def session_of(name) -> str | None:
    """The ``ses-`` label in a file or dataset name (``sub-01_ses-041_task-x`` -> ``041``), or None."""
    found = list(_SES.finditer(str(name)))
    return found[-1].group(2) if found else None


def _session_key(label):
    return (0, int(label), label) if label and label.isdigit() else (1, 0, label or "")


def choose_rescan(names: list[str], what: str, rescans: str = "error", session: str | None = None) -> int:
    """Index of the candidate to use among ``names`` (file or dataset names of one run).

    One candidate: 0. Several that differ only in their ``ses-`` label: ``session`` when given, else the
    ``rescans`` policy (``first`` / ``last`` session by label, ``error``). Otherwise a DataError listing them.
    """
    if len(names) == 1 and session is None:
        return 0
    sessions = [session_of(n) for n in names]
    if session is not None:
        if session not in sessions:
            raise DataError(f"{what}: data.bold.rescan_sessions asks for ses-{session}, found "
                            f"{', '.join(str(n) for n in names) or 'nothing'}")
        log.info("%s: using ses-%s (data.bold.rescan_sessions)", what, session)
        return sessions.index(session)
    stripped = {_SES.sub(r"\1ses-*", str(n).rsplit("/", 1)[-1]) for n in names}
    if rescans == "error" or len(stripped) != 1 or None in sessions or len(set(sessions)) != len(sessions):
        hint = (" (a re-scan: set data.bold.rescans to first or last, or data.bold.rescan_sessions)"
                if len(stripped) == 1 and None not in sessions else "")
        raise DataError(f"several {what}: {', '.join(str(n) for n in names)}{hint}")
    order = sorted(range(len(names)), key=lambda i: _session_key(sessions[i]))
    pick = order[0] if rescans == "first" else order[-1]
    log.info("%s: scanned in %s; using ses-%s (data.bold.rescans: %s)", what,
             ", ".join(f"ses-{sessions[i]}" for i in order), sessions[pick], rescans)
    return pick


def bold_name(subject: str, task: str, space: str, desc: str = "preproc", session: str | None = None) -> str:
    """The fMRIPrep file name of a preprocessed BOLD run, e.g. sub-01_ses-001_task-x_space-S_desc-preproc_bold.nii.gz."""
    ses = f"_ses-{session}" if session else ""
    return f"sub-{subject}{ses}_task-{task}_space-{space}_desc-{desc}_bold.nii.gz"


def _runs(bids_dir: Path, subject: str, task: str, space: str, desc: str) -> list[Path]:
    s = f"sub-{subject}"
    patterns = [f"{s}/ses-*/func/{s}_ses-*_task-{task}_space-{space}_desc-{desc}_bold.nii.gz",
                f"{s}/func/{s}_task-{task}_space-{space}_desc-{desc}_bold.nii.gz"]
    found = set()
    for pat in patterns:
        found.update(bids_dir.glob(pat))
    return sorted(found)


def find_bold(bids_dir, subject: str, task: str, space: str, desc: str = "preproc", rescans: str = "error",
              session: str | None = None) -> Path:
    """The preprocessed BOLD NIfTI of ``sub-{subject}`` for ``task`` in ``space`` (with or without ses-).

    DataError if the directory is missing; MissingRunError if no run matches (listing the spaces/descs that do
    exist for that subject and task); several runs: re-scans are chosen by ``rescans``/``session``
    (choose_rescan), anything else is a DataError listing them.
    """
    bids_dir = Path(bids_dir)
    if not bids_dir.is_dir():
        raise DataError(f"BOLD derivatives directory not found: {bids_dir} (data.bold.dir)")
    if not (bids_dir / f"sub-{subject}").is_dir():
        subs = sorted(p.name for p in bids_dir.glob("sub-*") if p.is_dir())
        raise DataError(f"no sub-{subject} under {bids_dir} (subjects there: {', '.join(subs) or 'none'})")
    runs = _runs(bids_dir, subject, task, space, desc)
    rel = lambda p: str(p.relative_to(bids_dir))  # noqa: E731
    if runs:
        what = f"BOLD runs for sub-{subject} task-{task} space-{space} desc-{desc} under {bids_dir}"
        return runs[choose_rescan([rel(p) for p in runs], what, rescans, session)]
    others = _runs(bids_dir, subject, task, "*", "*")
    if others:
        found = sorted({m.group(1) + " desc-" + m.group(2) for p in others
                        if (m := re.search(r"_space-([^_]+)_desc-([^_]+)_bold", p.name))})
        raise MissingRunError(f"no BOLD run for sub-{subject} task-{task} space-{space} desc-{desc} under "
                              f"{bids_dir}; that run exists in space(s): {', '.join(found)}")
    raise MissingRunError(f"no BOLD run for sub-{subject} task-{task} space-{space} under {bids_dir} "
                          f"(expected e.g. sub-{subject}/ses-*/func/{bold_name(subject, task, space, desc, '*')})")


def brain_mask_path(bold_path) -> Path:
    """fMRIPrep's brain mask beside a preprocessed BOLD run: same entities up to space/res, ``desc-brain_mask``."""
    p = Path(bold_path)
    stem = re.sub(r"_desc-[^_]+_bold\.nii(\.gz)?$", "", p.name)
    return p.with_name(f"{stem}_desc-brain_mask.nii.gz")
