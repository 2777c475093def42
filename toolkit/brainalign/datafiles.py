"""Every input file the config's data section resolves to, by stream — what ``validate`` checks and what a
stage's up-to-date key can fingerprint.

``data_files(cfg, streams=None)`` lists, in a stable order, ``DataFile(stream, key, path, exists)`` for:

=============  =======================  ===========================================================
stream         config key               files
=============  =======================  ===========================================================
video          data.stimuli.video       one per run
audio          data.stimuli.audio       one per run when that file exists (else the video's own track)
transcript     data.stimuli.transcript  one per run
bold           data.bold.dir            one per subject and run found (HDF5: the file holding it)
mask           data.bold.mask           the study mask, per-subject masks, or every run's fMRIPrep mask
atlas          data.bold.rois           the ROI / parcellation image(s)
roi_names      data.bold.roi_names      the label names file
confounds      data.bold.confounds      one fMRIPrep confounds TSV per run, when confounds are asked for
repeats        stats.noise_ceiling_repeats  one per subject, with ``stats.noise_ceiling: repeats``
=============  =======================  ===========================================================

It uses the same lookups as the readers (brain.runs, brain.study, stimuli.windows), so the list is what the
stages read; the stage keys (brainalign.stagetable) fingerprint exactly these files. ``STAGE_STREAMS`` says
which stage reads which streams.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError
from .paths import COMPLETE

STREAMS = ("video", "audio", "transcript", "bold", "mask", "atlas", "roi_names", "confounds", "repeats")
STAGE_STREAMS = {"extract": ("video", "audio", "transcript"), "mlm": ("video", "audio", "transcript"),
                 "align": ("bold", "mask", "atlas", "roi_names", "confounds"), "stats": ("repeats",)}


@dataclass(frozen=True)
class DataFile:
    stream: str
    key: str
    path: Path
    exists: bool
    role: str = ""        # how a user knows it ("bold sub-01 task-s01e01a"): named in stage-key messages


def _stimuli(cfg, want, episodes=None):
    st = cfg.data.stimuli
    out = []
    for ep in cfg.data.episodes if episodes is None else episodes:
        for stream, template in (("video", st.video), ("transcript", st.transcript), ("audio", st.audio)):
            if stream not in want or not template:
                continue
            key = f"data.stimuli.{stream}"
            p = cfg.path(template, key, episode=ep)
            if stream == "audio" and not p.is_file():
                continue                    # the video's own track is used (stimuli.windows.audio_source)
            out.append(DataFile(stream, key, p, p.is_file(), f"{stream} {ep}"))
    return out


def _brain(cfg, want, table):
    from .brain.study import atlas_files, mask_files, names_files

    b = cfg.data.bold
    out = []
    if "bold" in want:                  # an HDF5 file holding several runs is listed once (_unique)
        out += [DataFile("bold", "data.bold.dir", run.path, run.path.is_file(),
                         f"bold sub-{s}" + (f" ({run.path.name})" if run.kind == "hdf5" else f" task-{r}"))
                for (s, r), run in table.items()]
    if "mask" in want:
        out += [DataFile("mask", "data.bold.mask", p, p.is_file(), f"mask {p.name}") for p in mask_files(cfg, table)]
    if "atlas" in want:
        out += [DataFile("atlas", "data.bold.rois", p, p.is_file(), f"atlas {p.name}") for p in atlas_files(cfg)]
    if "roi_names" in want:
        out += [DataFile("roi_names", "data.bold.roi_names", p, p.is_file(), f"roi names {p.name}")
                for p in names_files(cfg)]
    if "confounds" in want and b.confounds:
        for (s, r), run in table.items():
            p = run.confounds_path
            if p is not None:
                out.append(DataFile("confounds", "data.bold.confounds", p, p.is_file(), f"confounds sub-{s} task-{r}"))
    return out


def _unique(files):
    """Each (stream, path) once (movie10's run-1 and run-2 share a movie), first occurrence kept."""
    seen, out = set(), []
    for f in files:
        if (f.stream, f.path) not in seen:
            seen.add((f.stream, f.path))
            out.append(f)
    return out


def data_files(cfg, streams=None, table=None, episodes=None) -> list[DataFile]:
    """The input files of ``streams`` (default: all of STREAMS); see the module docstring. BOLD lookups raise
    the readers' one-line errors (missing directory or subject file, missing runs with data.missing_runs:
    error). ``table``: a brain.runs.RunTable already found (else it is looked up when needed); ``episodes``:
    the stimuli of these runs only."""
    want = set(STREAMS if streams is None else streams)
    unknown = want - set(STREAMS)
    if unknown:
        raise ValueError(f"unknown data streams {sorted(unknown)} (known: {', '.join(STREAMS)})")
    out = _unique(_stimuli(cfg, want, episodes))
    if want & {"bold", "mask", "atlas", "roi_names", "confounds"}:
        if table is None and want & {"bold", "mask", "confounds"}:
            from .brain.runs import find_runs

            table = find_runs(cfg)
        out += _unique(_brain(cfg, want, table))
    if "repeats" in want and cfg.stats.noise_ceiling == "repeats" and cfg.stats.noise_ceiling_repeats:
        for s in cfg.data.bold.subjects:
            p = cfg.path(cfg.stats.noise_ceiling_repeats, "stats.noise_ceiling_repeats", subject=s)
            out.append(DataFile("repeats", "stats.noise_ceiling_repeats", p, p.is_file(), f"noise-ceiling repeats sub-{s}"))
    return out


def _check_roi_groups(cfg):
    """data.bold.roi_groups resolve against the label names (patterns that match nothing, overlaps)."""
    from .brain.atlas import group_labels
    from .brain.study import names_files
    from .brain.volumes import read_roi_names

    b = cfg.data.bold
    files = names_files(cfg)
    if b.roi_groups and files:
        group_labels(read_roi_names(files[0]), b.roi_groups)


def check_data_files(cfg, show: int = 3) -> str:
    """For ``validate``: ConfigError listing the first ``show`` missing files (key: path) and how many are
    missing; else a one-line summary of what the data section resolves to."""
    from .brain.runs import find_runs

    if "simulate" in cfg.pipeline and not (Path(cfg.data.root) / COMPLETE).is_file():
        return f"data under {cfg.data.root} are written by the simulate stage; files not checked yet"
    table = find_runs(cfg)
    files = data_files(cfg, table=table)
    missing = [f for f in files if not f.exists]
    if missing:
        shown = "; ".join(f"{f.key}: {f.path}" for f in missing[:show])
        raise ConfigError(f"{len(missing)} of {len(files)} data files missing: {shown}"
                          + (" ..." if len(missing) > show else ""))
    _check_roi_groups(cfg)
    count = {s: sum(f.stream == s for f in files) for s in STREAMS}
    n_found, n_all = len(table.found), len(table.subjects) * len(table.runs)
    audio = f"{count['audio']} audio files" if count["audio"] else "audio from the videos' own tracks"
    skipped = f", {n_all - n_found} missing (skipped)" if n_found < n_all else ""
    return (f"data: {len(table.runs)} runs x {len(table.subjects)} subjects ({n_found} BOLD runs found{skipped}), "
            f"{count['video']} videos, {count['transcript']} transcripts, {audio}, {count['mask']} mask file(s), "
            f"{count['atlas']} atlas file(s), all present")
