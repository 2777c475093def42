"""The demo's stimuli: rendered frames, a tone melody and a spoken-word transcript, plus what they contain.

* Frames: 1-2 moving shapes (random colours) in front of a backdrop; every 2-4 s a new *segment* starts
  (new shapes, paths, backdrop) whose backdrop has one of the named colours of COLOURS, dimmed ("what is
  on screen").
* Words (~2 words/s): a first-order Markov "grammar" over VOCAB (each word has two likely successors),
  so a word is partly predictable from its neighbours; and, with probability MENTION_P per word, a
  *mention*, an utterance of its own between pauses: the cue word CUE followed by the name of the colour
  on screen at that moment. Those colour
  words are the frame-predictable words (class FRAME_PREDICTABLE in the transcript's ``word_class``
  column; every other word is OTHER).
* Audio: ramped pure tones and pauses, independent of the rest.

Everything is drawn from a numpy Generator passed in, so an episode is a pure function of its seed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..h5io import atomic_path

VOCAB = ("friend", "coffee", "apartment", "phone", "date", "job", "funny", "really", "okay", "know", "think",
         "guess", "wait", "come", "going", "want", "tell", "never", "always", "again", "maybe", "right",
         "great", "sorry", "hey", "yeah", "no", "what", "why", "where", "who", "we", "you", "they", "she", "he",
         "it", "the", "a", "and", "but", "couch", "door", "night", "party", "wedding", "baby")
COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40),
           "white": (235, 235, 235)}
CUE = "look"                    # "look <colour>": a mention of the colour on screen
MENTION_P = 0.08                # per word slot
MENTION_PAUSE = (1.5, 2.0)      # s of silence before and after a mention (about one TR: it has its window)
FOLLOW_P = 0.85                 # probability that a word is one of its predecessor's two successors
SHAPES = ("disc", "square", "triangle", "ring", "cross")
FRAME_PREDICTABLE, OTHER = "frame_predictable", "other"
WORD_CLASS_COLUMN = "word_class"


@dataclass
class Scene:
    """What is on screen, per frame (n_frames,): the segment's backdrop colour (index into COLOURS), the shapes'
    area (fraction of the frame) and centroid (y, x in [-1, 1], 0 = centre), and the segment index."""
    colour: np.ndarray
    area: np.ndarray
    cy: np.ndarray
    cx: np.ndarray
    segment: np.ndarray


def episode_duration(trs: int, tr: float, fps: float) -> tuple[int, float]:
    """(n_frames, duration_s) of a simulated episode: trs * tr + 0.5 s (less for TR < 1.25 s), whole frames."""
    pad = min(0.5, 0.4 * tr)
    n_frames = int(round((trs * tr + pad) * fps))
    duration = n_frames / fps
    if math.floor(duration / tr + 1e-6) != trs:
        raise ConfigError(f"simulate.fps: {fps} frames/s cannot give {trs} whole TRs of {tr} s")
    return n_frames, duration


def _shape_mask(kind, yy, xx, cy, cx, r):
    dy, dx = yy - cy, xx - cx
    if kind == "disc":
        return dy ** 2 + dx ** 2 <= r ** 2
    if kind == "square":
        return (np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85)
    if kind == "triangle":
        return (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    if kind == "ring":
        d2 = dy ** 2 + dx ** 2
        return (d2 <= r ** 2) & (d2 >= (0.55 * r) ** 2)
    return ((np.abs(dy) <= r * 0.3) & (np.abs(dx) <= r)) | ((np.abs(dx) <= r * 0.3) & (np.abs(dy) <= r))


def render_frames(n_frames: int, fps: float, size: int, rng) -> tuple[np.ndarray, Scene]:
    """uint8 (n_frames, size, size, 3) frames and their Scene (see the module docstring)."""
    frames = np.empty((n_frames, size, size, 3), dtype=np.uint8)
    colour = np.empty(n_frames, np.int64)
    area, cy, cx, segment = (np.empty(n_frames) for _ in range(4))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    palette = list(COLOURS.values())
    i = seg_index = 0
    while i < n_frames:
        seg = min(n_frames - i, max(1, int(round(rng.uniform(2.0, 4.0) * fps))))
        c = int(rng.integers(len(palette)))
        bg = np.clip(np.asarray(palette[c]) * rng.uniform(0.55, 0.85) + rng.normal(0, 6, 3), 0, 255)
        objs = []
        for _ in range(rng.integers(1, 3)):
            objs.append(dict(kind=SHAPES[rng.integers(len(SHAPES))], colour=rng.uniform(0, 255, size=3),
                             pos=rng.uniform(0.2, 0.8, size=2) * size, vel=rng.normal(0, 0.25, size=2) * size,
                             r=rng.uniform(0.1, 0.22) * size, wobble=rng.uniform(0.5, 2.0)))
        for k in range(seg):
            t = k / fps
            img = np.empty((size, size, 3), dtype=np.float32)
            img[:] = bg
            fg = np.zeros((size, size), bool)
            for o in objs:
                p = o["pos"] + o["vel"] * t
                p = np.abs(np.mod(p, 2 * size) - size) * 0.8 + 0.1 * size  # bounce inside the frame
                r = o["r"] * (1 + 0.2 * math.sin(2 * math.pi * o["wobble"] * t))
                m = _shape_mask(o["kind"], yy, xx, p[0], p[1], r)
                img[m] = o["colour"]
                fg |= m
            frames[i + k] = img.astype(np.uint8)
            n_fg = max(int(fg.sum()), 1)
            colour[i + k], area[i + k], segment[i + k] = c, fg.mean(), seg_index
            cy[i + k] = (yy[fg].sum() / n_fg) / (size - 1) * 2 - 1 if fg.any() else 0.0
            cx[i + k] = (xx[fg].sum() / n_fg) / (size - 1) * 2 - 1 if fg.any() else 0.0
        i += seg
        seg_index += 1
    return frames, Scene(colour, area, cy, cx, segment.astype(np.int64))


def tone_sequence(duration: float, rate: int, rng) -> np.ndarray:
    """float32 (round(duration * rate),) in [-1, 1]: a melody of ramped pure tones and pauses, plus faint noise."""
    n = int(round(duration * rate))
    x = rng.normal(0, 0.005, size=n)
    scale = 220.0 * 2 ** (np.array([0, 2, 4, 7, 9, 12, 14, 16, 19, 21, 24]) / 12)
    t = float(rng.uniform(0, 0.3))
    while t < duration:
        d = float(rng.uniform(0.15, 0.6))
        a, b = int(t * rate), min(int((t + d) * rate), n)
        if b > a:
            tt = np.arange(b - a) / rate
            ramp = np.minimum(1.0, np.minimum(tt, tt[::-1]) / 0.01)
            x[a:b] += rng.uniform(0.2, 0.5) * ramp * np.sin(2 * np.pi * scale[rng.integers(len(scale))] * tt)
        t += d + float(rng.uniform(0.0, 0.3))
    return np.clip(x, -1, 1).astype(np.float32)


def grammar(seed: int) -> np.ndarray:
    """int64 (len(VOCAB), 2): the two likely successors of each VOCAB word (never the word itself)."""
    rng = np.random.default_rng([int(seed), 7])
    n = len(VOCAB)
    return np.stack([rng.choice(np.delete(np.arange(n), k), size=2, replace=False) for k in range(n)])


def word_sequence(duration: float, rng, scene: Scene, fps: float, successors: np.ndarray
                  ) -> list[tuple[str, float, float, str]]:
    """[(word, onset, duration, word_class)] at ~2 words/s with occasional pauses, all ending before
    duration - 0.3 s. A mention is an utterance of its own: a pause of MENTION_PAUSE s, CUE, the name of the
    colour on screen at the colour word's onset, another pause (see the module docstring)."""
    words = []
    names = list(COLOURS)
    prev = int(rng.integers(len(VOCAB)))
    t = float(rng.uniform(0.2, 0.6))
    while True:
        if rng.random() < MENTION_P:
            t += float(rng.uniform(*MENTION_PAUSE))
            d1, d2 = float(rng.uniform(0.15, 0.3)), float(rng.uniform(0.2, 0.35))
            t2 = t + d1 + float(rng.exponential(0.04))
            if t2 + d2 > duration - 0.3:
                return words
            frame = min(int(t2 * fps), len(scene.colour) - 1)
            words += [(CUE, round(t, 3), round(d1, 3), OTHER),
                      (names[scene.colour[frame]], round(t2, 3), round(d2, 3), FRAME_PREDICTABLE)]
            t = t2 + d2 + float(rng.uniform(*MENTION_PAUSE))
            continue
        d = float(rng.uniform(0.15, 0.35))
        if t + d > duration - 0.3:
            return words
        prev = int(successors[prev, rng.integers(2)]) if rng.random() < FOLLOW_P else int(rng.integers(len(VOCAB)))
        words.append((VOCAB[prev], round(t, 3), round(d, 3), OTHER))
        t += d + float(rng.exponential(0.06)) + (float(rng.uniform(1.0, 2.0)) if rng.random() < 0.08 else 0.0)


def write_mp4(path, frames: np.ndarray, fps: float, audio: np.ndarray, rate: int) -> None:
    """h264 (libx264, yuv420p) video + AAC mono audio, written atomically with PyAV."""
    import av
    from fractions import Fraction

    with atomic_path(path) as tmp:
        named = tmp.with_name(tmp.name + ".mp4")
        try:
            with av.open(str(named), "w", format="mp4") as c:
                vs = c.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
                vs.width, vs.height = frames.shape[2], frames.shape[1]
                vs.pix_fmt = "yuv420p"
                vs.options = {"crf": "18", "preset": "veryfast"}
                aus = c.add_stream("aac", rate=rate)
                aus.layout = "mono"
                aus.bit_rate = 64000
                aus.options = {"aac_coder": "fast"}
                for i, img in enumerate(frames):
                    f = av.VideoFrame.from_ndarray(img, format="rgb24")
                    f.pts = i
                    c.mux(vs.encode(f))
                c.mux(vs.encode())
                step = 1024
                for k in range(0, len(audio), step):
                    f = av.AudioFrame.from_ndarray(audio[None, k:k + step], format="fltp", layout="mono")
                    f.sample_rate = rate
                    f.pts = k
                    c.mux(aus.encode(f))
                c.mux(aus.encode())
            named.replace(tmp)
        finally:
            if named.exists():
                named.unlink()


@dataclass
class Episode:
    """One simulated episode in memory: what is written to disk and what the BOLD responds to."""
    frames: np.ndarray          # uint8 (n_frames, size, size, 3) at ``fps``
    scene: Scene
    audio: np.ndarray           # float32 (n_samples,) at the audio rate
    words: list                 # [(word, onset, duration, word_class)]
    fps: float
    duration: float


def make_episode(trs: int, tr: float, fps: float, size: int, audio_rate: int, rng, successors) -> Episode:
    n_frames, duration = episode_duration(trs, tr, fps)
    frames, scene = render_frames(n_frames, fps, size, rng)
    audio = tone_sequence(duration, audio_rate, rng)
    words = word_sequence(duration, rng, scene, fps, successors)
    return Episode(frames, scene, audio, words, fps, duration)


def transcript_tsv(words) -> str:
    """The TSV transcript (word, onset, duration, word_class) of ``words``."""
    return (f"word\tonset\tduration\t{WORD_CLASS_COLUMN}\n"
            + "".join(f"{w}\t{o:.3f}\t{d:.3f}\t{c}\n" for w, o, d, c in words))
