"""Window batches for MERLOT Reserve and the study's input conditions.

One window -> one row of token slots ``[words of the window | 6 AUDIOSPAN slots per audio clip | PAD]``
plus the window's frames (vision tokens are appended by the model after the slots).

Conditions (which modalities stay, see :mod:`brainalign.models.conditions`) as MERLOT Reserve realises them:

============  ======================================================================================
modality off  how, and why
============  ======================================================================================
vision        frames dropped: no vision tokens at all. The original runs text-only sequences in
              pretraining (``random_text``, ``audio_text_matching`` have no vision input) and its API
              takes ``vision_input=None``; vision tokens come after the slots, so no position moves.
audio         AUDIOSPAN slots set to PADDING (masked out of attention), audio not encoded. This is
              exactly dropping them: masked keys get a -1e10 bias (weight 0), and the slots come after
              the words, so no word position (rotary token index) moves. The original's text segments
              carry no audio slots either (``preprocess_video``).
language      word tokens replaced by MASK (3), count, positions and segments kept. The original hides
              text the same way (MASK spans in its audio->text and text->audio pretraining
              sequences), and the language positions the study pools over stay defined: the model's
              estimate of the words from the other modalities. Dropping them would leave nothing to
              pool at the language positions.
============  ======================================================================================

A window without words gets one MASK slot so that every window has a language position.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch

from ..conditions import modalities
from .model import AUDIOSPAN, MASK, PADDING


@dataclass
class WindowBatch:
    """Model inputs for B windows (torch tensors; see MerlotReserve's input contract).

    tokens, token_segment, audio_ptr: int64 (B, L); language: bool (B, L) slots at language positions;
    frames: float32 (B, T, h*16, w*16, 3) in [0, 1] or None; audio: float32 (B, S, 60, 65) or None.
    """
    tokens: torch.Tensor
    token_segment: torch.Tensor
    audio_ptr: torch.Tensor
    language: torch.Tensor
    frames: Optional[torch.Tensor]
    audio: Optional[torch.Tensor]

    def model_kwargs(self) -> dict:
        return dict(tokens=self.tokens, token_segment=self.token_segment, frames=self.frames,
                    audio=self.audio, audio_ptr=self.audio_ptr)


def pack_windows(word_ids: list, frames: Optional[torch.Tensor], audio: Optional[torch.Tensor],
                 audio_token_length: int = 6, length: Optional[int] = None,
                 n_clips: Optional[int] = None) -> WindowBatch:
    """word_ids: per window a list of BPE ids (all segment 0); frames (B, T, ...); audio (B, S, T_a, C).
    ``n_clips`` sets S when ``audio`` is not given (the slots are laid out, the clips encoded elsewhere).

    Row b: its ids (or [MASK] if none), then S runs of ``audio_token_length`` AUDIOSPAN slots
    (clip s -> audio_ptr s), then PADDING up to ``length`` (default: the longest row). Words longer
    than the room left are truncated from the START (the most recent words are kept).
    """
    B = len(word_ids)
    S = int(audio.shape[1]) if audio is not None else int(n_clips or 0)
    n_audio = S * audio_token_length
    rows = [list(ids) if len(ids) else [MASK] for ids in word_ids]
    L = length if length is not None else max(len(r) for r in rows) + n_audio
    room = L - n_audio
    if room < 1:
        raise ValueError(f"length {L} leaves no room for words next to {n_audio} audio slots")
    tokens = torch.full((B, L), PADDING, dtype=torch.long)
    ptr = torch.full((B, L), -1, dtype=torch.long)
    lang = torch.zeros((B, L), dtype=torch.bool)
    for b, r in enumerate(rows):
        r = r[-room:]
        n = len(r)
        tokens[b, :n] = torch.tensor(r, dtype=torch.long)
        lang[b, :n] = True
        if S:
            tokens[b, n:n + n_audio] = AUDIOSPAN
            ptr[b, n:n + n_audio] = torch.arange(S).repeat_interleave(audio_token_length)
    return WindowBatch(tokens=tokens, token_segment=torch.zeros_like(tokens), audio_ptr=ptr, language=lang,
                       frames=frames, audio=audio)


def apply_condition(batch: WindowBatch, condition: str) -> WindowBatch:
    """The batch as MERLOT Reserve sees it under ``condition`` (see the module table)."""
    keep = modalities(condition)
    tokens = batch.tokens.clone()
    out = replace(batch, tokens=tokens)
    if "language" not in keep:
        tokens[batch.language] = MASK
    if "audio" not in keep:
        tokens[tokens == AUDIOSPAN] = PADDING
        out.audio = None
    if "vision" not in keep:
        out.frames = None
    return out
