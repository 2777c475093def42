"""Find fMRIPrep-derivative BOLD runs by BIDS entities."""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import DataError


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


def find_bold(bids_dir, subject: str, task: str, space: str, desc: str = "preproc") -> Path:
    """The one preprocessed BOLD NIfTI of ``sub-{subject}`` for ``task`` in ``space`` (with or without ses-).

    DataError if the directory is missing, no run matches (listing the spaces/descs that do exist for that
    subject and task), or several runs match (listing them).
    """
    bids_dir = Path(bids_dir)
    if not bids_dir.is_dir():
        raise DataError(f"BOLD derivatives directory not found: {bids_dir} (data.bold.dir)")
    if not (bids_dir / f"sub-{subject}").is_dir():
        subs = sorted(p.name for p in bids_dir.glob("sub-*") if p.is_dir())
        raise DataError(f"no sub-{subject} under {bids_dir} (subjects there: {', '.join(subs) or 'none'})")
    runs = _runs(bids_dir, subject, task, space, desc)
    if len(runs) == 1:
        return runs[0]
    rel = lambda p: str(p.relative_to(bids_dir))  # noqa: E731
    if len(runs) > 1:
        raise DataError(f"several BOLD runs for sub-{subject} task-{task} space-{space} desc-{desc} under "
                        f"{bids_dir}: {', '.join(rel(p) for p in runs)}")
    others = _runs(bids_dir, subject, task, "*", "*")
    if others:
        found = sorted({m.group(1) + " desc-" + m.group(2) for p in others
                        if (m := re.search(r"_space-([^_]+)_desc-([^_]+)_bold", p.name))})
        raise DataError(f"no BOLD run for sub-{subject} task-{task} space-{space} desc-{desc} under {bids_dir}; "
                        f"that run exists in space(s): {', '.join(found)}")
    raise DataError(f"no BOLD run for sub-{subject} task-{task} space-{space} under {bids_dir} "
                    f"(expected e.g. sub-{subject}/ses-*/func/{bold_name(subject, task, space, desc, '*')})")
