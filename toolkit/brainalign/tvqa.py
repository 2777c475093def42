"""TVQA-format video question answering data: reader, validation, clip access, and a synthetic set.

Layout of a data directory (``finetune.data``), as TVQA ships it (frames at 3 fps, 1-based names)::

    tvqa_train.jsonl, tvqa_val.jsonl     one JSON object per line:
        qid (int|str), q (str), a0 … a4 (str), answer_idx (int 0..4), ts ("start-end" seconds in the clip),
        vid_name (str), optional show_name
    frames/{vid_name}/00001.jpg …        the clip's frames (.jpg/.jpeg/.png) at ``fps``; file k (sorted by
                                          name) is shown from (k - 1) / fps seconds
    subtitles/{vid_name}.srt             the clip's subtitles (SRT; words get times spread over their block)
    audio/{vid_name}.mp3 (.wav, ...)     the clip's sound (TVQA's tvqa_audios); needed by MERLOT Reserve's head

Every problem is one DataError line naming the file, the line number and the field.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError
from .h5io import atomic_path

N_ANSWERS = 5
TVQA_FPS = 3.0                       # TVQA's released frames: 3 per second
SPLIT_FILES = {"train": "tvqa_train.jsonl", "val": "tvqa_val.jsonl"}
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
AUDIO_SUFFIXES = (".mp3", ".wav", ".m4a", ".flac", ".ogg")
REQUIRED = ("qid", "q", *(f"a{i}" for i in range(N_ANSWERS)), "answer_idx", "ts", "vid_name")


@dataclass(frozen=True)
class QAItem:
    qid: str
    question: str
    answers: tuple          # N_ANSWERS strings
    answer_idx: int         # 0..N_ANSWERS-1
    ts: tuple               # (start, end) seconds within the clip, 0 <= start <= end
    vid_name: str


_TS = re.compile(r"\s*([^-\s]+)\s*-\s*([^-\s]+)\s*")


def parse_ts(text, where: str) -> tuple:
    """TVQA's ``"start-end"`` (seconds) -> (start, end); DataError naming ``where`` if malformed."""
    m = _TS.fullmatch(str(text))
    try:
        start, end = (float(g) for g in m.groups()) if m else (None, None)
    except ValueError:
        start = end = None
    if start is None or not (math.isfinite(start) and math.isfinite(end)):
        raise DataError(f"{where}: ts {text!r} is not 'start-end' in seconds (finite numbers)")
    if start < 0 or end < start:
        raise DataError(f"{where}: ts {text!r} needs 0 <= start <= end")
    return start, end


def read_tvqa(path) -> list[QAItem]:
    """Questions of one TVQA jsonl file (blank lines skipped), validated field by field."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"TVQA file not found: {path}")
    items, seen = [], set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"TVQA {path} line {n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        missing = [k for k in REQUIRED if k not in row]
        if missing:
            raise DataError(f"{where}: missing field(s) {', '.join(missing)}")
        for k in ("q", "vid_name", *(f"a{i}" for i in range(N_ANSWERS))):
            if not isinstance(row[k], str) or (k in ("q", "vid_name") and not row[k].strip()):
                raise DataError(f"{where}: field {k} must be a non-empty string, got {row[k]!r}")
        idx = row["answer_idx"]
        if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx < N_ANSWERS:
            raise DataError(f"{where}: answer_idx {idx!r} out of range (an integer 0..{N_ANSWERS - 1})")
        vid = row["vid_name"].strip()
        if "/" in vid or "\\" in vid or vid in (".", ".."):
            raise DataError(f"{where}: vid_name {vid!r} must be a plain clip name")
        qid = str(row["qid"])
        if qid in seen:
            raise DataError(f"{where}: duplicate qid {qid}")
        seen.add(qid)
        items.append(QAItem(qid, row["q"], tuple(row[f"a{i}"] for i in range(N_ANSWERS)), idx,
                            parse_ts(row["ts"], where), vid))
    if not items:
        raise DataError(f"TVQA {path}: no questions")
    return items


def frame_files(root, vid_name: str) -> list[Path]:
    """The clip's frame images (``frames/{vid_name}/``), sorted by name; DataError if none."""
    d = Path(root) / "frames" / vid_name
    files = sorted(p for p in d.glob("*") if p.suffix.lower() in FRAME_SUFFIXES) if d.is_dir() else []
    if not files:
        raise DataError(f"TVQA clip {vid_name}: no frames (.jpg/.png) in {d}")
    return files


def subtitle_path(root, vid_name: str) -> Path:
    return Path(root) / "subtitles" / f"{vid_name}.srt"


def audio_path(root, vid_name: str) -> Path:
    """``audio/{vid_name}.<mp3|wav|m4a|flac|ogg>`` (the first that exists); DataError if none."""
    d = Path(root) / "audio"
    for suf in AUDIO_SUFFIXES:
        p = d / f"{vid_name}{suf}"
        if p.is_file():
            return p
    raise DataError(f"TVQA clip {vid_name}: no audio file {d / vid_name}.mp3 (or {', '.join(AUDIO_SUFFIXES[1:])})")


def merlot_segments(ts: tuple, n: int, max_time: float, size: float = 4.6666667) -> list:
    """The original's TVQA segments (finetune/tvqa/prep_data.py): (start, end) of up to ``n`` segments of
    ``size`` s, the first centred on the middle of ``ts`` (rounded to 1/3 s, when TVQA's frames are), then
    extended alternately left and right (rounded to 1/3 s) while inside [0, max_time], in time order."""
    ts0, ts1 = max(ts[0], 0.0), min(ts[1], max_time)
    mid = round((ts0 + ts1) / 2.0 * 3) / 3
    t_start, t_end = mid - size * 0.5, mid + size * 0.5
    out = [(t_start, t_end)]
    for i in range(6):
        for delta in (-size, size):
            t0 = round((t_start + delta * (i + 1)) * 3) / 3
            t1 = round((t_end + delta * (i + 1)) * 3) / 3
            if t1 < 0 or t0 > max_time:
                continue
            if len(out) < n:
                out.append((t0, t1))
    return sorted(out)


_ASCII = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u201c": '"', "\u201d": '"',
                        "\u201e": '"', "\u2013": "-", "\u2014": "--", "\u2026": "...", "\u00a0": " ",
                        "\u266a": "#", "\u266b": "#"})


def ascii_text(text: str) -> str:
    """An ASCII rendering of subtitle text in the spirit of the original's ``unidecode(ftfy(text))``: curly
    quotes, dashes, ellipses and music notes mapped, accents dropped (NFKD), other non-ASCII removed."""
    import unicodedata

    text = unicodedata.normalize("NFKD", str(text).translate(_ASCII))
    return "".join(ch for ch in text if ord(ch) < 128)


def segment_subtitles(cues, segs: list) -> list:
    """The original's subtitles per segment (finetune/tvqa/prep_data.py): each SRT cue goes WHOLE to the
    segment holding its midpoint (``searchsorted(bounds, mid)`` over the segment starts + the last end, kept
    when ``0 < pos <= len(segs)``); a segment's text is its cues' texts joined by spaces, made ASCII, newlines
    as spaces (tags such as ``<i>`` kept). ``cues``: stimuli.transcript.Cue list; ``segs``: (start, end)."""
    bounds = np.array([a for a, _ in segs] + [segs[-1][1]], dtype=np.float64)
    texts = [[] for _ in segs]
    for cue in cues:
        pos = int(np.searchsorted(bounds, (cue.start + cue.end) / 2.0))
        if 0 < pos <= len(segs):
            texts[pos - 1].append(cue.text)
    return [ascii_text(" ".join(t)).replace("\n", " ") for t in texts]


def load_frames_letterboxed(files: list, times, size: tuple, fps: float = TVQA_FPS) -> np.ndarray:
    """uint8 (n, H, W, 3): the frames shown at ``times`` (file round(t * fps), clamped), each at its own
    resolution resized into ``size`` keeping its aspect and zero-padded (MERLOT's resize_and_pad; TVQA's
    frames are not trimmed, as in the original's TVQA preparation)."""
    from .stimuli.frames import letterbox

    idx = np.clip(np.round(np.asarray(times, dtype=np.float64) * fps).astype(np.int64), 0, len(files) - 1)
    return _read_frames(files, idx, tuple(size),
                        lambda im: letterbox(np.asarray(im.convert("RGB"), dtype=np.uint8), size))


def _read_frames(files: list, idx, size: tuple, convert) -> np.ndarray:
    """uint8 (len(idx), *size, 3): ``convert(PIL image)`` of each file ``files[i]`` (each decoded once)."""
    from PIL import Image

    out = np.empty((len(idx), *size, 3), dtype=np.uint8)
    cache = {}
    for k, i in enumerate(idx):
        if i not in cache:
            try:
                with Image.open(files[i]) as im:
                    cache[i] = convert(im)
            except OSError as e:
                raise DataError(f"TVQA frame {files[i]}: cannot be decoded ({e})") from None
        out[k] = cache[i]
    return out


def check_clips(root, items, split: str) -> None:
    """Every clip the questions name has frames and a subtitle file (one DataError for the first missing)."""
    for vid in sorted({it.vid_name for it in items}):
        frame_files(root, vid)
        p = subtitle_path(root, vid)
        if not p.is_file():
            raise DataError(f"TVQA {split} clip {vid}: subtitles not found: {p}")


def frame_times(ts: tuple, n: int) -> np.ndarray:
    """float64 (n,): centres of n equal parts of [start, end] (n frames sampled evenly inside ts)."""
    start, end = ts
    return start + (np.arange(n) + 0.5) * (end - start) / n


def load_frames(files: list, ts: tuple, n: int, size: int, fps: float = TVQA_FPS) -> np.ndarray:
    """uint8 (n, size, size, 3): the frames shown at ``frame_times(ts, n)`` (clamped to the clip), resized."""
    from PIL import Image

    def convert(im):
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8)

    idx = np.clip(np.floor(frame_times(ts, n) * fps + 1e-9).astype(np.int64), 0, len(files) - 1)
    return _read_frames(files, idx, (size, size), convert)


_PUNCT = re.compile(r"[^\w']+")


def normalise_words(text: str) -> list[str]:
    """Lower-cased words without punctuation ("(Ross:) Hi!" -> ["ross", "hi"])."""
    return [w for w in _PUNCT.sub(" ", str(text).lower()).split() if w.strip("'")]


def subtitle_words(words, ts: tuple) -> list[str]:
    """Normalised words of a subtitle (list of stimuli Word) whose onset lies in [start, end]."""
    start, end = ts
    out = []
    for w in words:
        if start <= w.onset <= end:
            out += normalise_words(w.word)
    return out


# ---- the synthetic demo set ----------------------------------------------------------------------

#: the friends on the couch (left to right); a clip shows all four, in shirts of four distinct colours
SEATS = ("ross", "rachel", "monica", "joey")
COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40),
           "purple": (150, 50, 190), "orange": (240, 140, 30), "cyan": (40, 210, 220), "pink": (250, 150, 200)}
QUESTION = "Which colour that {who} mentions is someone wearing?"
FILLER = ("hey", "okay", "coffee", "really", "wait", "so", "i", "know", "you", "we", "look", "maybe", "like")
CLIP_SECONDS = 4.0          # two subtitle lines: [0.2, 1.8] and [2.2, 3.8]
LINES = ((0.2, 1.8), (2.2, 3.8))


def _scene(shirts: list, size: int) -> np.ndarray:
    """float64 (size, size, 3): four people side by side (seat k in column stripe k), each a skin-toned
    head over a shirt of the given RGB colour, on a grey background."""
    img = np.full((size, size, 3), 70.0)
    w = size // len(SEATS)
    yy, xx = np.mgrid[0:size, 0:size]
    for k, rgb in enumerate(shirts):
        x0, x1 = k * w + w // 8, (k + 1) * w - w // 8
        img[size * 9 // 20:, x0:x1] = rgb
        cx, cy, r = (x0 + x1) / 2, size * 0.28, w * 0.3
        img[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = (225, 185, 150)
    return img


def _write_clip_audio(path: Path, speakers: list, rng, rate: int = 22050) -> None:
    from scipy.io import wavfile

    t = np.arange(int(CLIP_SECONDS * rate)) / rate
    x = 0.01 * rng.standard_normal(t.size)
    for (t0, t1), who in zip(LINES, speakers):
        f0 = 110.0 * (1 + SEATS.index(who))
        on = (t >= t0) & (t < t1)
        x[on] += sum(0.2 / k * np.sin(2 * np.pi * k * f0 * t[on]) for k in range(1, 5))
    path.parent.mkdir(parents=True, exist_ok=True)
    wavfile.write(str(path), rate, (np.clip(x, -1, 1) * 32767).astype(np.int16))


def _srt_time(t: float) -> str:
    ms = int(round(t * 1000))
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def write_synthetic_tvqa(root, n_train: int = 400, n_val: int = 100, seed: int = 0, size: int = 64,
                         fps: float = TVQA_FPS, audio: bool = False) -> Path:
    """Write a small TVQA-format set under ``root`` whose answers need BOTH the frames and the subtitles.

    Each clip (CLIP_SECONDS long, ``fps`` noisy PNG frames of size x size) shows four friends side by side
    in shirts of four distinct colours of COLOURS; its subtitles hold two lines by two different friends,
    each naming three colours among filler words ("Monica: okay pink so red like cyan"): exactly one of
    them is a visible shirt colour. Each clip carries two questions, one per line, whose ts covers that line
    only: "Which colour that Monica mentions is someone wearing?". The five answers are that colour, two
    other visible shirt colours and the line's two other (not visible) colours, shuffled. So the frames alone
    narrow the answer to 3 (33 %), the subtitles alone to 3 (33 %); only both together give it (chance 20 %).
    ``audio``: also write ``audio/{vid}.wav`` (22,050 Hz: a voiced tone per subtitle line, the speaker's pitch,
    over faint noise; its own random stream, so the rest of the set is the same with or without it).
    Returns ``root``.
    """
    if n_train < 1 or n_val < 1:
        raise DataError(f"write_synthetic_tvqa: n_train and n_val must be >= 1, got {n_train}, {n_val}")
    if size % len(SEATS) or size < 16:
        raise DataError(f"write_synthetic_tvqa: size {size} must be a multiple of {len(SEATS)} and >= 16")
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    n_frames = max(1, int(round(CLIP_SECONDS * fps)))
    for split, n in (("train", n_train), ("val", n_val)):
        rows = []
        for c in range((n + len(LINES) - 1) // len(LINES)):
            vid = f"synth_{split}_{c:05d}"
            perm = [names[i] for i in rng.permutation(len(names))]
            shirts, hidden = perm[: len(SEATS)], perm[len(SEATS):]
            scene = _scene([COLOURS[s] for s in shirts], size)
            fdir = root / "frames" / vid
            fdir.mkdir(parents=True, exist_ok=True)
            for k in range(n_frames):
                img = np.roll(scene, int(rng.integers(-1, 2)), axis=0) + rng.normal(0, 6, scene.shape)
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(fdir / f"{k + 1:05d}.png")
            speakers = [SEATS[i] for i in rng.choice(len(SEATS), size=len(LINES), replace=False)]
            blocks = []
            for j, ((t0, t1), who) in enumerate(zip(LINES, speakers)):
                order = rng.permutation(len(SEATS))
                target = shirts[order[0]]
                visible = [shirts[i] for i in order[1:3]]
                said = [hidden[i] for i in rng.choice(len(hidden), size=2, replace=False)]
                words = list(rng.choice(FILLER, size=3)) + [target] + said
                words = [words[i] for i in rng.permutation(len(words))]
                blocks.append(f"{j + 1}\n{_srt_time(t0)} --> {_srt_time(t1)}\n{who.capitalize()}: "
                              f"{' '.join(words)}\n")
                if len(rows) < n:
                    answers = [target] + visible + said
                    answers = [answers[i] for i in rng.permutation(N_ANSWERS)]
                    half = CLIP_SECONDS / len(LINES)
                    start = j * half + float(rng.uniform(0, 0.15))
                    end = (j + 1) * half - float(rng.uniform(0, 0.15))
                    row = {"qid": f"{split}-{len(rows)}", "q": QUESTION.format(who=who.capitalize()),
                           "answer_idx": answers.index(target), "ts": f"{start:.2f}-{end:.2f}",
                           "vid_name": vid, "show_name": "Synthetic Friends"}
                    row.update({f"a{i}": a for i, a in enumerate(answers)})
                    rows.append(row)
            sub = root / "subtitles" / f"{vid}.srt"
            sub.parent.mkdir(parents=True, exist_ok=True)
            sub.write_text("\n".join(blocks), encoding="utf-8")
            if audio:
                _write_clip_audio(root / "audio" / f"{vid}.wav", speakers, np.random.default_rng([seed, len(split), c]))
        with atomic_path(root / SPLIT_FILES[split]) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return root
