"""Word-level transcripts with timings: TSV (``word onset duration``), the Algonauts 2025 per-TR TSV,
Speech2Text JSON, SRT subtitles.

Every reader returns ``list[Word]``; :func:`read_transcript` sorts them by onset (stable for equal onsets).
Bad rows raise one DataError line naming the file and the line (TSV/SRT) or the JSON path (``words[3]``).
What is odd but readable is logged, naming the file and line (:func:`check_order`): words out of order
(sorted, one warning), duplicated words (same text, onset and duration: warned, kept), and words that
overlap the previous one (speakers overlap: counted at INFO).

The Algonauts 2025 transcripts (``stimuli/transcripts/friends/s1/friends_s01e01a.tsv``) have one row per
1.49 s chunk and the columns ``text_per_tr, words_per_tr, onsets_per_tr, durations_per_tr``, the last three
Python list literals (``['Hey', 'Ross']``, ``[12.3, 12.61]``) written by pandas as a CSV with tabs: a cell
holding a double quote (``"there's"`` in the list's repr) is quoted and its quotes doubled
(``"['to', ""there's""]"``), so the file is read with the csv module; empty cells and ``n/a`` are empty
chunks. A word is listed in the chunk that holds its
*offset* (onset + duration), so a word that starts in chunk k and ends in chunk k + 1 is in row k + 1. We read
each word's own onset and duration and drop the rows: brainalign's rule, for every transcript format, is that a
word belongs to the window that holds its *onset* (stimuli.windows.window_words), so that word is in window k. (MERLOT Reserve's own rule, by word centre, is applied by its backbone:
brainalign.models.merlot.layout.)
"""
from __future__ import annotations

import ast
import csv
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..log import get_logger

log = get_logger("stimuli")


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


def read_tsv(path, word_column: str = "word") -> list[Word]:
    """Tab-separated with a header naming at least ``word``, ``onset``, ``duration`` (file order); see
    :func:`tsv_rows`."""
    return [w for w, _ in tsv_rows(path, word_column)]


def tsv_rows(path, word_column: str = "word") -> list:
    """(Word, where) of each row, in file order. Tab-separated with a header naming at least ``word``, ``onset``, ``duration`` (any column order).

    ``word_column`` reads another column as the words (e.g. a per-word annotation such as ``word_class``),
    in the same rows and order."""
    lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    if not lines:
        raise DataError(f"transcript {path}: empty file (expected a header 'word<TAB>onset<TAB>duration')")
    header = [h.strip().lower() for h in lines[0].split("\t")]
    word_column = word_column.strip().lower()
    missing = [c for c in (word_column, "onset", "duration") if c not in header]
    if missing:
        raise DataError(f"transcript {path} line 1: missing column(s) {', '.join(missing)} "
                        f"(header has: {', '.join(header)}; columns must be tab-separated)")
    iw, io, idur = (header.index(c) for c in (word_column, "onset", "duration"))
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
        words.append((Word(cells[iw].strip(), onset, duration), where))
    return words


def read_json(path) -> list[Word]:
    """CNeuroMod Speech2Text layout (file order); see :func:`json_rows`."""
    return [w for w, _ in json_rows(path)]


def json_rows(path) -> list:
    """(Word, where) in file order. CNeuroMod Speech2Text layout: top-level ``words: [{word, start, end}]`` or ``segments[].words[]``."""
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
        words.append((Word(str(w["word"]).strip(), start, end - start), where))
    return words


_SRT_TIME = re.compile(r"(\d+):(\d{1,2}):(\d{1,2})[,.](\d{1,3})")
_TAG = re.compile(r"<[^>]*>|\{[^}]*\}")


def _srt_seconds(path, where, text) -> float:
    m = _SRT_TIME.fullmatch(text.strip())
    if not m:
        raise DataError(f"transcript {path} {where}: bad SRT time {text.strip()!r} (expected HH:MM:SS,mmm)")
    h, mi, s, ms = m.groups()
    return int(h) * 3600 + int(mi) * 60 + int(s) + int(ms.ljust(3, "0")) / 1000.0


@dataclass(frozen=True)
class Cue:
    start: float      # seconds
    end: float        # seconds
    text: str         # the cue's text lines joined by newlines, as written (tags kept)
    where: str = ""   # "line N" of its timing line


def read_srt_cues(path) -> list[Cue]:
    """The subtitle blocks of an SRT file, in file order (pysrt's ``SubRipItem``: start, end, text)."""
    lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    cues = []
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
        cues.append(Cue(start, end, "\n".join(text), where))
    return cues


def read_srt(path) -> list[Word]:
    """Subtitle blocks; each block's words (tags removed) get onsets spread evenly over the block's interval."""
    return [w for w, _ in srt_rows(path)]


def srt_rows(path) -> list:
    words = []
    for cue in read_srt_cues(path):
        tokens = _TAG.sub(" ", cue.text.replace("\n", " ")).split()
        step = (cue.end - cue.start) / max(len(tokens), 1)
        words += [(Word(tok, cue.start + k * step, step), cue.where) for k, tok in enumerate(tokens)]
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
    """The Algonauts 2025 per-TR transcript (file order); see :func:`algonauts_rows`."""
    return [w for w, _ in algonauts_rows(path)]


def algonauts_rows(path) -> list:
    """(Word, where) in file order. The Algonauts 2025 per-TR transcript: rows of chunks with list-literal
    ``words_per_tr``, ``onsets_per_tr`` (s from the movie's start) and ``durations_per_tr`` (s), CSV-quoted
    where pandas quoted them; empty chunks have empty cells (or ``[]``, ``n/a``). The chunk a word is listed
    in (its offset's) is not kept; see the module docstring."""
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quotechar='"', doublequote=True, strict=True)
        try:
            rows = [(reader.line_num, row) for row in reader]
        except csv.Error as e:
            raise DataError(f"transcript {path} line {reader.line_num}: not a tab-separated table ({e})") from None
    header = [h.strip() for h in rows[0][1]] if rows else []
    missing = [c for c in ALGONAUTS_COLUMNS if c not in header]
    if missing:
        raise DataError(f"transcript {path} line 1: missing column(s) {', '.join(missing)} of the Algonauts per-TR "
                        f"format (header has: {', '.join(h for h in header if h) or 'nothing'})")
    idx = [header.index(c) for c in ALGONAUTS_COLUMNS]
    words = []
    for n, cells in rows[1:]:
        where = f"line {n}"
        if not any(c.strip() for c in cells):
            continue
        if len(cells) > len(header):
            raise DataError(f"transcript {path} {where}: {len(cells)} columns, header has {len(header)} "
                            "(a tab inside a cell?)")
        cells = cells + [""] * (len(header) - len(cells))
        ws, ons, durs = (_literal_list(path, where, c, cells[i]) for c, i in zip(ALGONAUTS_COLUMNS, idx))
        if not len(ws) == len(ons) == len(durs):
            raise DataError(f"transcript {path} {where}: {len(ws)} words but {len(ons)} onsets and {len(durs)} "
                            "durations")
        for k, (w, o, d) in enumerate(zip(ws, ons, durs)):
            wk = f"{where} word {k + 1}"
            onset, duration = _number(path, wk, "onset", o), _number(path, wk, "duration", d)
            _check_times(path, wk, onset, duration)
            words.append((Word(str(w).strip(), onset, duration), wk))
    return words


def _tsv_header(path) -> list[str]:
    with open(path, encoding="utf-8-sig") as fh:
        return [h.strip().lower() for h in fh.readline().rstrip("\r\n").split("\t")]


_READERS = {"words": tsv_rows, "algonauts": algonauts_rows, "json": json_rows, "srt": srt_rows}
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


def check_order(path, rows) -> list[Word]:
    """The words of ``rows`` ((Word, where) in file order) sorted by onset (stable), after logging what is odd:
    words out of order (one WARNING naming the first and the count: they are sorted), duplicates (same text,
    onset and duration: one WARNING naming the first pair's places and the count; kept), and words that start
    before the previous word (in onset order) ends (one INFO line with the count: speakers overlap)."""
    onsets = [w.onset for w, _ in rows]
    back = [k for k in range(1, len(rows)) if onsets[k] < onsets[k - 1]]
    if back:
        k = back[0]
        log.warning("transcript %s %s: %r at %.3f s starts before the word above it (%.3f s); %d word(s) out of "
                    "order, sorted by onset", path, rows[k][1], rows[k][0].word, onsets[k], onsets[k - 1], len(back))
    seen, dups = {}, []
    for w, where in rows:
        key = (w.word, w.onset, w.duration)
        if key in seen:
            dups.append((seen[key], where, w))
        else:
            seen[key] = where
    if dups:
        first, again, w = dups[0]
        log.warning("transcript %s %s: %r at %.3f s repeats %s; %d duplicated word(s) (kept)", path, again, w.word,
                    w.onset, first, len(dups))
    words = sorted((w for w, _ in rows), key=lambda w: w.onset)
    ends = np.maximum.accumulate([w.onset + w.duration for w in words]) if words else []
    overlaps = sum(1 for k in range(1, len(words)) if words[k].onset < ends[k - 1] - 1e-9)
    if overlaps:
        log.info("transcript %s: %d word(s) start before the previous word ends (overlapping speech)", path,
                 overlaps)
    return words


def read_transcript(path, fmt: str = "auto") -> list[Word]:
    """Words of a transcript file (format ``fmt``, default by extension and header), sorted by onset
    (:func:`check_order` logs what was out of order, duplicated or overlapping)."""
    path = Path(path)
    name = transcript_format(path, fmt)
    if not path.is_file():
        raise DataError(f"transcript not found: {path}")
    return check_order(path, _READERS[name](path))
