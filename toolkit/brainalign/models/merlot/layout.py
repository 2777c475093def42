"""A TR window laid out in time as MERLOT Reserve saw video in pre-training (rules of github rowanz/merlot_reserve).

Time grid (``mreserve/preprocess.py``: ``video_to_segments(time_interval=5.0)``, ``preprocess_video``;
``pretrain/configs/base.yaml``: ``num_audio_subsegments: 3``; ``pretrain/dataloader.py``):

* the model sees whole **segments** of 5 s, each cut into 3 **sub-segments** (one 60-frame audio clip,
  ~1.6 s, each); segments are in time order and the token segment index of sub-segment j is j // 3;
* a window [end - context, end) of the study is the **target**: ``n_target = round(context / (5/3 s))``
  (>= 1) sub-segments, whose positions are pooled. Where the segment grid sits is ``model.merlot_reserve.layout``
  (:data:`LAYOUTS`):

  - ``centred`` (default): the grid ends ONE sub-segment after the window's end, so the window's last
    sub-segment is the middle of the last segment and that segment's frame (at its middle) is shown during the
    window: at ``end - 5/6 s`` (a 1.49-s TR: 0.09 s from the TR's middle). The sub-segment after the window is
    one MASK in every condition with text or audio (none in ``vision_only``): a form pre-training used, and no
    content from after the window reaches the model;
  - ``causal`` (before issue 22): the grid ends at the window's end, the window is the last sub-segment(s);
    the frame is 2.5 s before the end (a 1.49-s TR: 1.0 s before the window starts).

  The segments reach back far enough to hold at least one **context** sub-segment before the target:
  ``n_segments = ceil((n_target + 1 + n_after) / 3)`` (a TR of 1.49 s: one segment). More than 8 segments is
  refused: ``preprocess_video`` takes at most 8 and pre-training split its 16 segments into 2 groups of 8, so
  the model never saw segment index 8 or more;
* one frame per segment, at its middle (``mid_time``); frame g has segment index g;
* words: a word belongs to the segment that holds its **centre** (``data/process.py``
  ``split_video_into_chunks``: a chunk takes the rows with ``center < t_end`` not taken by an earlier chunk,
  ``center = (start + end) / 2``); each goes to the sub-segment whose audio clip centre is nearest its centre
  (``dataset_parser``: ``argmin |tok_centroid - audio_centroid|`` with the clip span ``start_idx * hop - n_fft
  / 2 .. + 60 hops + n_fft``), made non-decreasing in time (``cumulative_maximum_int``).

Each sub-segment enters the sequence in ONE form, as in pre-training (``mask_tokens``: a sub-segment is
its text, ``audio_token_length`` AUDIOSPAN slots of its clip, or one MASK), in time order; the
conditions choose the forms (:data:`PASSES`). A window's words and its own audio cannot share its
sub-segment, so under ``centred`` a condition with both language and audio runs two passes -- (window as
text, context as audio) and (window as audio, context as text) -- and its feature is the mean of the two
pooled states; ``no_language`` takes the window as audio. (``causal``: one pass, the window as text or MASK,
its audio in no condition.) Sequences of more than 160 slots keep their head (``preprocess_video``:
``tokens_out[:160]``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...errors import ConfigError, DataError
from ..conditions import modalities
from .model import AUDIOSPAN, MASK
from .spectrogram import CLIP_FRAMES, CLIP_OFFSETS, HOP, SAMPLE_RATE

SEGMENT_SECONDS = 5.0
SUBSEGMENTS = 3
SUB_SECONDS = SEGMENT_SECONDS / SUBSEGMENTS
MAX_SEGMENTS = 8
TEXT_SLOTS = 160

LAYOUTS = ("centred", "causal")

#: layout -> condition -> passes, each (form of a target sub-segment, form of a context sub-segment); forms:
#: "text", "audio", "mask" (one MASK), "none" (no slot). A target in "text" form without any word gets one
#: MASK. A sub-segment after the window (``centred``) is one MASK, or none where the context is none.
PASSES = {
    "causal": {
        "joint": (("text", "audio"),),
        "no_vision": (("text", "audio"),),
        "no_language": (("mask", "audio"),),
        "no_audio": (("text", "text"),),
        "vision_only": (("mask", "none"),),
        "language_only": (("text", "text"),),
    },
    "centred": {
        "joint": (("text", "audio"), ("audio", "text")),
        "no_vision": (("text", "audio"), ("audio", "text")),
        "no_language": (("audio", "audio"),),
        "no_audio": (("text", "text"),),
        "vision_only": (("mask", "none"),),
        "language_only": (("text", "text"),),
    },
}


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ConfigError(f"model.merlot_reserve.layout: {layout!r} is not one of {', '.join(LAYOUTS)}")
    return layout


def passes(condition: str, layout: str = "centred") -> tuple:
    """The (target form, context form) of each pass of ``condition`` under ``layout``."""
    modalities(condition)                          # ConfigError for an unknown name
    return PASSES[check_layout(layout)][condition]


@dataclass(frozen=True)
class WindowPlan:
    n_target: int          # sub-segments of the window itself (pooled)
    n_segments: int        # 5-s segments the model sees
    n_after: int = 0       # sub-segments after the window's end (centred: 1, always one MASK or nothing)

    @property
    def n_sub(self) -> int:
        return SUBSEGMENTS * self.n_segments

    @property
    def n_context(self) -> int:
        return self.n_sub - self.n_target - self.n_after

    @property
    def n_clips(self) -> int:
        """Sub-segments whose audio clip may enter (all but those after the window)."""
        return self.n_sub - self.n_after


def plan_window(context: float, layout: str = "centred") -> WindowPlan:
    """The layout of a window of ``context`` seconds; ConfigError beyond 8 segments."""
    if not (context > 0 and math.isfinite(context)):
        raise ConfigError(f"windows.context: MERLOT Reserve needs a positive window, got {context} s")
    n_after = 1 if check_layout(layout) == "centred" else 0
    n_target = max(1, int(math.floor(context / SUB_SECONDS + 0.5)))
    n_seg = math.ceil((n_target + 1 + n_after) / SUBSEGMENTS)
    if n_seg > MAX_SEGMENTS:
        longest = (SUBSEGMENTS * MAX_SEGMENTS - 1 - n_after - 0.5) * SUB_SECONDS
        raise ConfigError(f"windows.context: {context:g} s is {n_target} MERLOT sub-segments of {SUB_SECONDS:.2f} s "
                          f"and needs {n_seg} segments of {SEGMENT_SECONDS:g} s; the model was pretrained on at "
                          f"most {MAX_SEGMENTS} (use a context under {longest:.2f} s)")
    return WindowPlan(n_target, n_seg, n_after)


def plan_windows(windows: np.ndarray, layout: str = "centred") -> WindowPlan:
    """The common plan of an episode's windows (all of one length)."""
    lengths = np.asarray(windows[:, 1] - windows[:, 0], dtype=np.float64)
    if lengths.size == 0:
        raise DataError("MERLOT Reserve: no windows")
    if np.ptp(lengths) > 1e-6:
        raise DataError(f"MERLOT Reserve: windows of different lengths ({lengths.min():g} .. {lengths.max():g} s)")
    return plan_window(float(lengths[0]), layout)


def segment_starts(window_end: float, plan: WindowPlan) -> np.ndarray:
    """float64 (n_segments,): the grid ends ``n_after`` sub-segments after the window's end; segment g starts
    5 (n_segments - g) seconds before the grid's end."""
    grid_end = window_end + plan.n_after * SUB_SECONDS
    return grid_end - SEGMENT_SECONDS * (plan.n_segments - np.arange(plan.n_segments, dtype=np.float64))


def frame_times(windows: np.ndarray, layout: str = "centred") -> np.ndarray:
    """float64 (n_windows, n_segments): the middle of each segment (one frame per segment)."""
    plan = plan_windows(windows, layout)
    starts = np.stack([segment_starts(float(e), plan) for e in windows[:, 1]])
    return starts + SEGMENT_SECONDS / 2


def clip_centres() -> np.ndarray:
    """float64 (3,): centre (s from the segment start) of each sub-segment's audio clip, the original's way:
    clip r starts at spectrogram frame CLIP_OFFSETS[r]; its span runs from that frame's time minus half an
    FFT window to 60 hops plus a window later, so its centre is (offset + 30) hops."""
    return (np.asarray(CLIP_OFFSETS, dtype=np.float64) + CLIP_FRAMES / 2) * HOP / SAMPLE_RATE


def word_centre(w) -> float:
    return w.onset + w.duration / 2


def assign_words(words, seg_start: float) -> list:
    """Sub-segment (0..2) of each word of one segment (list of Word with centre in the segment, in order)."""
    if not words:
        return []
    centres = clip_centres()
    mid = np.array([word_centre(w) for w in words], dtype=np.float64) - seg_start
    sub = np.abs(mid[:, None] - centres[None, :]).argmin(1)
    return np.maximum.accumulate(sub).tolist()


@dataclass(frozen=True)
class TranscriptIndex:
    """Word centres sorted (``centres``) and the transcript position of each (``order``)."""
    centres: np.ndarray
    order: np.ndarray


def transcript_index(transcript) -> TranscriptIndex:
    """The centres of a transcript's words (list of Word, by onset), sorted, for many windows' look-ups."""
    c = np.array([word_centre(w) for w in transcript], dtype=np.float64)
    order = np.argsort(c, kind="stable")
    return TranscriptIndex(c[order], order)


def subsegment_words(transcript, window_end: float, plan: WindowPlan, index=None) -> list:
    """list (n_sub) of list[str]: the words of each sub-segment of the window ending at ``window_end``: a
    segment holds the words whose centre lies in it (in transcript order). ``index``: the
    :func:`transcript_index` of ``transcript``, when the caller has it for many windows."""
    out = [[] for _ in range(plan.n_sub)]
    if not transcript:
        return out
    index = transcript_index(transcript) if index is None else index
    for g, t0 in enumerate(segment_starts(window_end, plan)):
        a, b = np.searchsorted(index.centres, [t0, t0 + SEGMENT_SECONDS], side="left")
        seg = [transcript[k] for k in sorted(index.order[a:b].tolist())]
        for w, r in zip(seg, assign_words(seg, t0)):
            out[SUBSEGMENTS * g + r].append(w.word)
    return out


@dataclass
class WindowTokens:
    """One window's sequence: ``tokens``, ``subseg`` (sub-segment of each slot; AUDIOSPAN slots point to
    their sub-segment's clip), ``pooled`` (bool per slot), ``truncated`` (slots cut at the tail)."""
    tokens: list
    subseg: list
    pooled: list
    truncated: int = 0


def window_tokens(sub_words: list, plan: WindowPlan, condition: str, tokenize, audio_token_length: int = 6,
                  max_slots: int = TEXT_SLOTS, layout: str = "centred", pass_index: int = 0) -> WindowTokens:
    """The window's slots under ``condition``, pass ``pass_index`` of :data:`PASSES` [``layout``], in time
    order, head kept. Sub-segments after the window: one MASK (none where the context form is none)."""
    target_form, context_form = passes(condition, layout)[pass_index]
    after_form = "none" if context_form == "none" else "mask"
    tokens, subseg, pooled = [], [], []
    first_target, first_after = plan.n_context, plan.n_context + plan.n_target
    last_target = first_after - 1
    target_text = 0
    for j, words in enumerate(sub_words):
        is_target = first_target <= j < first_after
        form = after_form if j >= first_after else target_form if is_target else context_form
        if form == "text":
            ids = list(tokenize(" ".join(words))) if words else []
            if is_target:
                target_text += len(ids)
                if j == last_target and target_text == 0:
                    ids = [MASK]                   # no word in the whole target: one MASK keeps a position
        elif form == "audio":
            ids = [AUDIOSPAN] * audio_token_length
        elif form == "mask":
            ids = [MASK]
        else:
            ids = []
        tokens += ids
        subseg += [j] * len(ids)
        pooled += [is_target] * len(ids)
    cut = max(0, len(tokens) - max_slots)
    if cut:
        tokens, subseg, pooled = tokens[:max_slots], subseg[:max_slots], pooled[:max_slots]
    return WindowTokens(tokens, subseg, pooled, cut)
