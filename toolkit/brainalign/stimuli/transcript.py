"""Word-level transcripts with timings: TSV (``word onset duration``), Speech2Text JSON, SRT subtitles.

Every reader returns ``list[Word]`` sorted by onset (stable for equal onsets). Bad rows raise one
DataError line naming the file and the line (TSV/SRT) or the JSON path (``words[3]``).
"""
from __future__ import annotations

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


def read_tsv(path, word_column: str = "word") -> list[Word]:
    """Tab-separated with a header naming at least ``word``, ``onset``, ``duration`` (any column order).

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


_READERS = {".tsv": read_tsv, ".json": read_json, ".srt": read_srt}


def read_transcript(path) -> list[Word]:
    """Words of a transcript file, by extension (.tsv, .json, .srt), sorted by onset."""
    path = Path(path)
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"transcript {path}: unknown format {path.suffix!r} (expected .tsv, .json or .srt)")
    if not path.is_file():
        raise DataError(f"transcript not found: {path}")
    return sorted(reader(path), key=lambda w: w.onset)
