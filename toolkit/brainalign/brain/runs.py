"""Which BOLD file (and dataset) holds each subject's run, as the config's data section says.

One lookup for every format, used by align (to read the runs) and by brainalign.datafiles (to list and
fingerprint the inputs), so both always agree:

- ``bids``: fMRIPrep ``sub-XX/[ses-*/]func/sub-XX_[ses-*_]task-{run}_space-{space}_desc-{desc}_bold.nii.gz`` under
  ``data.bold.dir``, with the run's brain mask and confounds TSV beside it;
- ``cifti``: ``…_task-{run}_space-{space}_den-91k_bold.dtseries.nii``;
- ``hdf5``: a file per subject (``data.bold.dir`` with ``{subject}``; a glob pattern may match several files,
  e.g. Algonauts' ``task-friends`` and ``task-movie10`` files), one (TRs, parcels) dataset per run whose name
  holds ``task-{run}`` (``ses-003_task-s01e01a``, ``ses-010_task-figures01_run-1``).

A run that a subject lacks is a MissingRunError from the finders; ``data.missing_runs`` decides whether that
stops the study (``error``) or the subject is fitted on the runs it has (``skip``, logged). Re-scans are
resolved by ``data.bold.rescans`` / ``rescan_sessions`` (brain.bids.choose_rescan).
"""
from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path

from ..config import require_file
from ..errors import ConfigError, DataError
from ..log import get_logger
from .bids import MissingRunError, brain_mask_path

log = get_logger("brain")


@dataclass(frozen=True)
class BoldRun:
    subject: str
    run: str
    path: Path
    dataset: str | None = None        # hdf5: the dataset name
    kind: str = "bids"                # bids | cifti | hdf5

    @property
    def mask_path(self) -> Path | None:
        """fMRIPrep's brain mask of this run (volumetric BIDS runs only)."""
        return brain_mask_path(self.path) if self.kind == "bids" else None

    @property
    def confounds_path(self) -> Path | None:
        """fMRIPrep's confounds TSV of this run (None for HDF5 parcel data)."""
        if self.kind == "hdf5":
            return None
        from .confounds import confounds_path

        return confounds_path(self.path)

    @property
    def label(self) -> str:
        return f"{self.path}:{self.dataset}" if self.dataset else str(self.path)


@dataclass
class RunTable:
    """Every (subject, run) of the study: the BoldRun found, or the reason it is missing."""
    subjects: list[str]
    runs: list[str]
    found: dict = field(default_factory=dict)      # (subject, run) -> BoldRun
    missing: dict = field(default_factory=dict)    # (subject, run) -> message

    def of(self, subject: str) -> list[str]:
        """The runs ``subject`` has, in data.episodes order."""
        return [r for r in self.runs if (subject, r) in self.found]

    def items(self):
        return [((s, r), self.found[(s, r)]) for s in self.subjects for r in self.runs if (s, r) in self.found]


def _session_overrides(cfg) -> dict:
    return {(rs.subject, rs.run): rs.session for rs in cfg.data.bold.rescan_sessions}


def _hdf5_files(cfg, subject) -> list[Path]:
    b = cfg.data.bold
    pattern = str(cfg.path(b.dir, "data.bold.dir", subject=subject))
    if glob.has_magic(pattern):
        files = sorted(Path(p) for p in glob.glob(pattern))
        if not files:
            raise ConfigError(f"data.bold.dir: no BOLD HDF5 file of sub-{subject} matches {pattern}")
        return files
    return [require_file("data.bold.dir", Path(pattern), f"BOLD HDF5 file of sub-{subject}")]


def _find_hdf5(cfg, subject, run, names, session):
    """(file, dataset) of ``run`` among a subject's HDF5 files; ``names``: {file: its dataset names}."""
    from .volumes import find_hdf5_dataset

    hits = []
    for path, in_file in names.items():
        try:
            hits.append((path, find_hdf5_dataset(path, run, cfg.data.bold.rescans, session, names=in_file)))
        except MissingRunError:
            continue
    if len(hits) > 1:
        raise DataError(f"run {run} of sub-{subject} is in several BOLD HDF5 files: "
                        f"{', '.join(f'{p}:{d}' for p, d in hits)}")
    if not hits:
        raise MissingRunError(f"no dataset for task-{run} in the BOLD HDF5 file(s) of sub-{subject}: "
                              f"{', '.join(str(p) for p in names)}")
    return hits[0]


def find_runs(cfg) -> RunTable:
    """The RunTable of the config (files are looked up, not read). DataError for a missing directory or
    subject file, a run that no subject has, a subject with no run, or — with ``data.missing_runs: error`` —
    any missing run (one line naming the first and how many)."""
    from .bids import find_bold
    from .cifti import find_cifti_bold
    from .volumes import hdf5_datasets

    b = cfg.data.bold
    table = RunTable(list(b.subjects), list(cfg.data.episodes))
    overrides = _session_overrides(cfg)
    bids_dir = None
    if b.format in ("bids", "cifti"):
        bids_dir = require_file("data.bold.dir", cfg.path(b.dir, "data.bold.dir"), "fMRIPrep derivatives directory")
    for s in b.subjects:
        if b.format == "hdf5":
            names = {p: hdf5_datasets(p) for p in _hdf5_files(cfg, s)}
        for run in cfg.data.episodes:
            ses = overrides.get((s, run))
            try:
                if b.format == "hdf5":
                    path, ds = _find_hdf5(cfg, s, run, names, ses)
                    table.found[(s, run)] = BoldRun(s, run, path, ds, "hdf5")
                elif b.format == "cifti":
                    table.found[(s, run)] = BoldRun(s, run, find_cifti_bold(bids_dir, s, run, b.space,
                                                                            rescans=b.rescans, session=ses),
                                                    None, "cifti")
                else:
                    table.found[(s, run)] = BoldRun(s, run, find_bold(bids_dir, s, run, b.space, b.desc,
                                                                      rescans=b.rescans, session=ses))
            except MissingRunError as e:
                table.missing[(s, run)] = str(e)
    _check_missing(cfg, table)
    return table


def _check_missing(cfg, table: RunTable):
    if not table.missing:
        return
    first = next(iter(table.missing.values()))
    n = len(table.missing)
    if cfg.data.missing_runs == "error":
        raise DataError(f"{n} run(s) missing (data.missing_runs: error); first: {first}")
    for run in table.runs:
        if all((s, run) in table.missing for s in table.subjects):
            raise DataError(f"run {run} has no BOLD for any subject (remove it from data.episodes): "
                            f"{table.missing[(table.subjects[0], run)]}")
    for s in table.subjects:
        if not table.of(s):
            raise DataError(f"sub-{s} has none of the runs in data.episodes: {table.missing[(s, table.runs[0])]}")
    per_subject = {s: [r for r in table.runs if (s, r) in table.missing] for s in table.subjects}
    log.warning("missing runs (data.missing_runs: skip; those subjects are fitted on the runs they have): %s",
                "; ".join(f"sub-{s}: {', '.join(rs)}" for s, rs in per_subject.items() if rs))
