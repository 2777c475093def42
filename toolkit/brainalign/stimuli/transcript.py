"""Word-level transcripts with timings: TSV (``word onset duration``), the Algonauts 2025 per-TR TSV,
Speech2Text JSON, SRT subtitles.

Every reader returns ``list[Word]`` sorted by onset (stable for equal onsets). Bad rows raise one
DataError line naming the file and the line (TSV/SRT) or the JSON path (``words[3]``).

The Algonauts 2025 transcripts (``stimuli/transcripts/friends/s1/friends_s01e01a.tsv``) have one row per
1.49 s chunk and the columns ``text_per_tr, words_per_tr, onsets_per_tr, durations_per_tr``, the last three
Python list literals (``['Hey', 'Ross']``, ``[12.3, 12.61]``); a word is listed in the chunk that holds its
*offset* (onset + duration), so a word that starts in chunk k and ends in chunk k + 1 is in row k + 1. We read
each word's own onset and duration and drop the rows: brainalign's rule, for every transcript format, is that a
word belongs to the window that holds its *onset* (stimuli.windows.window_words), so that word is in window k.
"""
from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError


@dataclass(frozen=True)
class Word:
    word: str
    onset: float      # seconds from the start of the episode
    duration: float   # seconds (>= 0)


def _check_times(path, where, onset, duration) -> None:
    if not (math.isfinite(onset) and math.isfinite(duration)):
        raise DataError(f"transcript {path} {where}: onset/duration is NaN or infinite "
                        f"(onset={onset}, duration={duration})")
    if onset < 0:
        raise DataError(f"transcript {path} {where}: negative onset {onset}")
    if duration < 0:
        raise DataError(f"transcript {path} {where}: end before start (duration {duration})")


def _number(path, where, name, text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        raise DataError(f"transcript {path} {where}: {name} {text!r} is not a number") from None


def read_tsv(path) -> list[Word]:
    """Tab-separated with a header naming at least ``word``, ``onset``, ``duration`` (any column order)."""
    lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    if not lines:
        raise DataError(f"transcript {path}: empty file (expected a header 'word<TAB>onset<TAB>duration')")
    header = [h.strip().lower() for h in lines[0].split("\t")]
    missing = [c for c in ("word", "onset", "duration") if c not in header]
    if missing:
        raise DataError(f"transcript {path} line 1: missing column(s) {', '.join(missing)} "
                        f"(header has: {', '.join(header)}; columns must be tab-separated)")
    iw, io, idur = (header.index(c) for c in ("word", "onset", "duration"))
    words = []
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = line.split("\t")
        where = f"line {n}"
        if len(cells) < len(header):
            raise DataError(f"transcript {path} {where}: {len(cells)} column(s), header has {len(header)}")
        onset = _number(path, where, "onset", cells[io])
        duration = _number(path, where, "duration", cells[idur])
        _check_times(path, where, onset, duration)
        words.append(Word(cells[iw].strip(), onset, duration))
    return words


def read_json(path) -> list[Word]:
    """CNeuroMod Speech2Text layout: top-level ``words: [{word, start, end}]`` or ``segments[].words[]``."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"transcript {path} line {e.lineno}: not valid JSON ({e.msg})") from None
    entries = []
    if isinstance(data, dict) and isinstance(data.get("words"), list):
        entries = [(f"words[{i}]", w) for i, w in enumerate(data["words"])]
    elif isinstance(data, dict) and isinstance(data.get("segments"), list):
        for i, seg in enumerate(data["segments"]):
            if not isinstance(seg, dict) or not isinstance(seg.get("words"), list):
                raise DataError(f"transcript {path} segments[{i}]: expected an object with a 'words' list")
            entries += [(f"segments[{i}].words[{j}]", w) for j, w in enumerate(seg["words"])]
    else:
        raise DataError(f"transcript {path}: expected a top-level 'words' or 'segments' list")
    words = []
    for where, w in entries:
        if not isinstance(w, dict):
            raise DataError(f"transcript {path} {where}: expected an object with word, start, end")
        missing = [k for k in ("word", "start", "end") if k not in w]
        if missing:
            raise DataError(f"transcript {path} {where}: missing key(s) {', '.join(missing)}")
        start = _number(path, where, "start", w["start"])
        end = _number(path, where, "end", w["end"])
        _check_times(path, where, start, end - start)
        words.append(Word(str(w["word"]).strip(), start, end - start))
    return words


_SRT_TIME = re.compile(r"(\d+):(\d{1,2}):(\d{1,2})[,.](\d{1,3})")
_TAG = re.compile(r"<[^>]*>|\{[^}]*\}")


def _srt_seconds(path, where, text) -> float:
    m = _SRT_TIME.fullmatch(text.strip())
    if not m:
        raise DataError(f"transcript {path} {where}: bad SRT time {text.strip()!r} (expected HH:MM:SS,mmm)")
    h, mi, s, ms = m.groups()
    return int(h) * 3600 + int(mi) * 60 + int(s) + int(ms.ljust(3, "0")) / 1000.0


def read_srt(path) -> list[Word]:
    """Subtitle blocks; each block's words get onsets spread evenly over the block's interval."""
    lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    words = []
    n = 0
    while n < len(lines):
        if not lines[n].strip():
            n += 1
            continue
        # a block: optional index line, a timing line, text lines until a blank line
        if "-->" not in lines[n]:
            n += 1
        if n >= len(lines) or "-->" not in lines[n]:
            raise DataError(f"transcript {path} line {n + 1}: expected an SRT timing line "
                            f"'HH:MM:SS,mmm --> HH:MM:SS,mmm'")
        where = f"line {n + 1}"
        left, right = lines[n].split("-->", 1)
        start = _srt_seconds(path, where, left)
        end = _srt_seconds(path, where, right.split()[0] if right.split() else right)
        _check_times(path, where, start, end - start)
        n += 1
        text = []
        while n < len(lines) and lines[n].strip():
            text.append(lines[n])
            n += 1
        tokens = _TAG.sub(" ", " ".join(text)).split()
        step = (end - start) / max(len(tokens), 1)
        words += [Word(tok, start + k * step, step) for k, tok in enumerate(tokens)]
    return words


ALGONAUTS_COLUMNS = ("words_per_tr", "onsets_per_tr", "durations_per_tr")


def _literal_list(path, where, column, cell) -> list:
    cell = (cell or "").strip()
    if not cell or cell.lower() in ("nan", "n/a", "none"):
        return []
    try:
        value = ast.literal_eval(cell)
    except (ValueError, SyntaxError):
        raise DataError(f"transcript {path} {where}: column {column} is not a Python list literal: "
                        f"{cell[:60]!r}") from None
    if not isinstance(value, (list, tuple)):
        raise DataError(f"transcript {path} {where}: column {column} is not a list: {cell[:60]!r}")
    return list(value)


def read_algonauts_tsv(path) -> list[Word]:
    """The Algonauts 2025 per-TR transcript: rows of chunks with list-literal ``words_per_tr``,
    ``onsets_per_tr`` (s from the movie's start) and ``durations_per_tr`` (s); empty chunks have empty cells
    (or ``[]``). The chunk a word is listed in (its offset's) is not kept; see the module docstring."""
    lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    header = [h.strip() for h in lines[0].split("\t")] if lines else []
    missing = [c for c in ALGONAUTS_COLUMNS if c not in header]
    if missing:
        raise DataError(f"transcript {path} line 1: missing column(s) {', '.join(missing)} of the Algonauts per-TR "
                        f"format (header has: {', '.join(header) or 'nothing'})")
    idx = [header.index(c) for c in ALGONAUTS_COLUMNS]
    words = []
    for n, line in enumerate(lines[1:], start=2):
        cells = line.split("\t")
        where = f"line {n}"
        if not line.strip():
            continue
        if len(cells) > len(header):
            raise DataError(f"transcript {path} {where}: {len(cells)} columns, header has {len(header)} "
                            "(a tab inside a cell?)")
        cells += [""] * (len(header) - len(cells))
        ws, ons, durs = (_literal_list(path, where, c, cells[i]) for c, i in zip(ALGONAUTS_COLUMNS, idx))
        if not len(ws) == len(ons) == len(durs):
            raise DataError(f"transcript {path} {where}: {len(ws)} words but {len(ons)} onsets and {len(durs)} "
                            "durations")
        for k, (w, o, d) in enumerate(zip(ws, ons, durs)):
            wk = f"{where} word {k + 1}"
            onset, duration = _number(path, wk, "onset", o), _number(path, wk, "duration", d)
            _check_times(path, wk, onset, duration)
            words.append(Word(str(w).strip(), onset, duration))
    return words


def _tsv_header(path) -> list[str]:
    with open(path, encoding="utf-8-sig") as fh:
        return [h.strip().lower() for h in fh.readline().rstrip("\r\n").split("\t")]


_READERS = {"words": read_tsv, "algonauts": read_algonauts_tsv, "json": read_json, "srt": read_srt}
_BY_SUFFIX = {".tsv": "words", ".json": "json", ".srt": "srt"}


def transcript_format(path, fmt: str = "auto") -> str:
    """The reader a transcript gets: ``fmt`` when named, else by extension, and for ``.tsv`` by its header
    (the Algonauts per-TR columns, or word/onset/duration)."""
    if fmt != "auto":
        return fmt
    path = Path(path)
    name = _BY_SUFFIX.get(path.suffix.lower())
    if name is None:
        raise DataError(f"transcript {path}: unknown format {path.suffix!r} (expected .tsv, .json or .srt, or set "
                        "data.stimuli.transcript_format)")
    if name == "words" and path.is_file() and "words_per_tr" in _tsv_header(path):
        return "algonauts"
    return name


def read_transcript(path, fmt: str = "auto") -> list[Word]:
    """Words of a transcript file (format ``fmt``, default by extension and header), sorted by onset."""
    path = Path(path)
    name = transcript_format(path, fmt)
    if not path.is_file():
        raise DataError(f"transcript not found: {path}")
    return sorted(_READERS[name](path), key=lambda w: w.onset)
