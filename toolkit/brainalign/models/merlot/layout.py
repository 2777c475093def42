"""A TR window laid out in time as MERLOT Reserve saw video in pre-training (rules of github rowanz/merlot_reserve).

Time grid (``mreserve/preprocess.py``: ``video_to_segments(time_interval=5.0)``, ``preprocess_video``;
``pretrain/configs/base.yaml``: ``num_audio_subsegments: 3``; ``pretrain/dataloader.py``):

* the model sees whole **segments** of 5 s, each cut into 3 **sub-segments** (one 60-frame audio clip,
  ~1.6 s, each); segments are in time order and the token segment index of sub-segment j is j // 3;
* a window [end - context, end) of the study is the **target**: its last ``n_target = round(context /
  (5/3 s))`` (>= 1) sub-segments, whose positions are pooled; the segments end at the window's end and
  reach back far enough to hold at least one **context** sub-segment before the target:
  ``n_segments = ceil((n_target + 1) / 3)`` (a TR of 1.49 s: one segment = 2 context + 1 target
  sub-segments). More than 8 segments is refused: ``preprocess_video`` takes at most 8 and pre-training
  split its 16 segments into 2 groups of 8, so the model never saw segment index 8 or more;
* one frame per segment, at its middle (``mid_time``); frame g has segment index g;
* words: those whose onset lies in a segment belong to it; each goes to the sub-segment whose audio clip
  centre is nearest its centre (``dataset_parser``: ``argmin |tok_centroid - audio_centroid|`` with the clip
  span ``start_idx * hop - n_fft / 2 .. + 60 hops + n_fft``), made non-decreasing in time
  (``cumulative_maximum_int``).

Each sub-segment enters the sequence in ONE form, as in pre-training (``mask_tokens``: a sub-segment is
its text, ``audio_token_length`` AUDIOSPAN slots of its clip, or one MASK), in time order; the
conditions choose the forms (:data:`FORMS`). Sequences of more than 160 slots keep their head
(``preprocess_video``: ``tokens_out[:160]``).
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

#: condition -> (form of a target sub-segment, form of a context sub-segment); forms: "text", "audio",
#: "mask" (one MASK), "none" (no slot). A target in "text" form without any word gets one MASK.
FORMS = {
    "joint": ("text", "audio"),
    "no_vision": ("text", "audio"),
    "no_language": ("mask", "audio"),
    "no_audio": ("text", "text"),
    "vision_only": ("mask", "none"),
    "language_only": ("text", "text"),
}


@dataclass(frozen=True)
class WindowPlan:
    n_target: int          # sub-segments of the window itself (pooled)
    n_segments: int        # 5-s segments the model sees, ending at the window's end

    @property
    def n_sub(self) -> int:
        return SUBSEGMENTS * self.n_segments

    @property
    def n_context(self) -> int:
        return self.n_sub - self.n_target


def plan_window(context: float) -> WindowPlan:
    """The layout of a window of ``context`` seconds; ConfigError beyond 8 segments."""
    if not (context > 0 and math.isfinite(context)):
        raise ConfigError(f"windows.context: MERLOT Reserve needs a positive window, got {context} s")
    n_target = max(1, int(math.floor(context / SUB_SECONDS + 0.5)))
    n_seg = math.ceil((n_target + 1) / SUBSEGMENTS)
    if n_seg > MAX_SEGMENTS:
        raise ConfigError(f"windows.context: {context:g} s is {n_target} MERLOT sub-segments of {SUB_SECONDS:.2f} s "
                          f"and needs {n_seg} segments of {SEGMENT_SECONDS:g} s; the model was pretrained on at "
                          f"most {MAX_SEGMENTS} (use a context under "
                          f"{(SUBSEGMENTS * MAX_SEGMENTS - 0.5) * SUB_SECONDS:.2f} s)")
    return WindowPlan(n_target, n_seg)


def plan_windows(windows: np.ndarray) -> WindowPlan:
    """The common plan of an episode's windows (all of one length)."""
    lengths = np.asarray(windows[:, 1] - windows[:, 0], dtype=np.float64)
    if lengths.size == 0:
        raise DataError("MERLOT Reserve: no windows")
    if np.ptp(lengths) > 1e-6:
        raise DataError(f"MERLOT Reserve: windows of different lengths ({lengths.min():g} .. {lengths.max():g} s)")
    return plan_window(float(lengths[0]))


def segment_starts(window_end: float, plan: WindowPlan) -> np.ndarray:
    """float64 (n_segments,): segment g starts at end - 5 (n_segments - g) seconds."""
    return window_end - SEGMENT_SECONDS * (plan.n_segments - np.arange(plan.n_segments, dtype=np.float64))


def frame_times(windows: np.ndarray) -> np.ndarray:
    """float64 (n_windows, n_segments): the middle of each segment (one frame per segment)."""
    plan = plan_windows(windows)
    starts = np.stack([segment_starts(float(e), plan) for e in windows[:, 1]])
    return starts + SEGMENT_SECONDS / 2


def clip_centres() -> np.ndarray:
    """float64 (3,): centre (s from the segment start) of each sub-segment's audio clip, the original's way:
    clip r starts at spectrogram frame CLIP_OFFSETS[r]; its span runs from that frame's time minus half an
    FFT window to 60 hops plus a window later, so its centre is (offset + 30) hops."""
    return (np.asarray(CLIP_OFFSETS, dtype=np.float64) + CLIP_FRAMES / 2) * HOP / SAMPLE_RATE


def assign_words(words, seg_start: float) -> list:
    """Sub-segment (0..2) of each word of one segment (list of Word with onset in the segment)."""
    if not words:
        return []
    centres = clip_centres()
    mid = np.array([w.onset + w.duration / 2 for w in words], dtype=np.float64) - seg_start
    sub = np.abs(mid[:, None] - centres[None, :]).argmin(1)
    return np.maximum.accumulate(sub).tolist()


def transcript_onsets(transcript) -> np.ndarray:
    """float64 (n_words,): the onsets of a transcript (list of Word, by onset)."""
    return np.array([w.onset for w in transcript], dtype=np.float64)


def subsegment_words(transcript, window_end: float, plan: WindowPlan, onsets=None) -> list:
    """list (n_sub) of list[str]: the words of each sub-segment of the window ending at ``window_end``.
    ``onsets``: :func:`transcript_onsets` of ``transcript``, when the caller has them for many windows."""
    out = [[] for _ in range(plan.n_sub)]
    if not transcript:
        return out
    onsets = transcript_onsets(transcript) if onsets is None else onsets
    for g, t0 in enumerate(segment_starts(window_end, plan)):
        a, b = np.searchsorted(onsets, [t0, t0 + SEGMENT_SECONDS], side="left")
        seg = transcript[a:b]
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
                  max_slots: int = TEXT_SLOTS) -> WindowTokens:
    """The window's slots under ``condition`` (forms from :data:`FORMS`), in time order, head kept."""
    modalities(condition)                          # ConfigError for an unknown name
    target_form, context_form = FORMS[condition]
    tokens, subseg, pooled = [], [], []
    first_target = plan.n_context
    target_text = 0
    for j, words in enumerate(sub_words):
        is_target = j >= first_target
        form = target_form if is_target else context_form
        if form == "text":
            ids = list(tokenize(" ".join(words))) if words else []
            if is_target:
                target_text += len(ids)
                if j == plan.n_sub - 1 and target_text == 0:
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
