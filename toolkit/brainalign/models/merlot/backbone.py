"""The ``merlot_reserve`` backbone: MERLOT Reserve on the study's windows, laid out as the original's inputs.

Per window (rules and their sources in :mod:`.layout`, :mod:`.spectrogram`, :mod:`brainalign.stimuli.frames`):

* time: 5-s segments of 3 sub-segments each, placed by ``model.merlot_reserve.layout`` (:mod:`.layout`:
  ``centred``, the default, ends the grid one sub-segment after the window so the last frame is shown during
  the window; ``causal`` ends it at the window's end); the window's own sub-segments are the target (pooled),
  the earlier ones context;
* vision: one frame per segment at its middle, at source resolution, black bars trimmed per episode,
  resized into the model's grid keeping the aspect and zero-padded bottom/right (the loader does this:
  :attr:`MerlotBackbone.stimulus_spec`); frame g is segment g;
* audio: the episode decoded at 22,050 Hz and divided by its peak; each sub-segment's clip = frames
  [2:62], [64:124] or [126:186] of its segment's log-mel spectrogram;
* language: each sub-segment's words, BPE-encoded with the original's vocabulary (embedded in the
  converted checkpoint; needs the ``tokenizers`` package);
* conditions: each sub-segment as text, as audio, as one MASK or absent (:data:`.layout.PASSES`); frames
  present or not; a condition of several passes (``centred``: the window as text, then as audio) is the
  mean of the passes' pooled states.

``encode`` returns, for every joint-transformer layer, the mean of the residual stream (after that
layer) over the target's slots (its word tokens, or its MASK slots). Windows are padded to the longest in
the batch; padding is masked, so a window's vector does not depend on the batch it is in. The vision and
audio encoders do not depend on the condition: their outputs are cached per window for the current
episode and shared by the conditions, so each frame and clip is encoded once.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import numpy as np
import torch

from ...errors import ConfigError, DataError
from ...log import get_logger
from ...stimuli.spec import StimulusSpec
from ..conditions import modalities
from ..registry import Backbone, window_indices
from .convert import model_from_payload, read_converted
from .inputs import batch_windows
from .layout import (TEXT_SLOTS, check_layout, frame_times, passes, plan_windows, segment_starts,
                     subsegment_words, transcript_index, window_tokens)
from .model import MerlotReserve
from .spectrogram import SAMPLE_RATE, segment_clips

log = get_logger("merlot")


def bpe_tokenizer(tokenizer_json: str) -> Callable[[str], list]:
    """text -> BPE ids with the original's vocabulary (HF ``tokenizers`` JSON)."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ConfigError("model.backbone: merlot_reserve needs the 'tokenizers' package "
                          "(pip install tokenizers)") from None
    tok = Tokenizer.from_str(tokenizer_json)
    return lambda text: tok.encode(text).ids


def payload_tokenizer(payload: dict, checkpoint) -> str:
    """The BPE vocabulary embedded in a converted checkpoint's payload; ConfigError naming ``checkpoint``."""
    if not payload.get("tokenizer_json"):
        raise ConfigError(f"model.checkpoint: {checkpoint} has no BPE vocabulary; convert again with "
                          "--tokenizer lowercase_encoder.json (from the original repository)")
    return payload["tokenizer_json"]


class MerlotBackbone(Backbone):
    name = "merlot_reserve"

    def __init__(self, model: MerlotReserve, tokenize: Callable[[str], list], layout: str = "centred"):
        self.model = model.eval()
        self.layout = check_layout(layout)
        self.cfg = model.cfg
        self.tokenize = tokenize
        self.n_layers = self.cfg.joint_num_layers
        self.hidden = self.cfg.hidden_size
        self._cache_key, self._cache = None, {}
        self._warned = set()

    @property
    def stimulus_spec(self) -> StimulusSpec:
        """Letterboxed frames at the model's grid, one per segment; 22,050 Hz audio, peak-normalised."""
        return StimulusSpec(frame_size=self.cfg.image_size, audio_rate=SAMPLE_RATE, peak_normalise=True,
                            frame_times=partial(frame_times, layout=self.layout), window_audio=False, name=self.name)

    def to(self, device) -> "MerlotBackbone":
        super().to(device)
        self.model.to(self.device)
        return self

    def _check(self, stimuli, plan):
        if stimuli.waveform is None or stimuli.transcript is None:
            raise DataError(f"episode {stimuli.episode}: stimuli lack the episode waveform/transcript MERLOT "
                            "Reserve needs (load them with the backbone's stimulus_spec)")
        if int(stimuli.audio_rate) != SAMPLE_RATE:
            raise DataError(f"episode {stimuli.episode}: audio at {stimuli.audio_rate} Hz; MERLOT Reserve takes "
                            f"{SAMPLE_RATE} Hz (load the stimuli with the backbone's stimulus_spec)")
        want = (plan.n_segments, *self.cfg.image_size, 3)
        if tuple(stimuli.frames.shape[1:]) != want:
            raise DataError(f"episode {stimuli.episode}: frames {tuple(stimuli.frames.shape[1:])} per window, "
                            f"MERLOT Reserve needs {want} (one letterboxed frame per 5-s segment: load the "
                            "stimuli with the backbone's stimulus_spec)")

    def _cached(self, stimuli, idx, kind: str, compute) -> torch.Tensor:
        """Per-window encoder outputs, computed once per episode: the encoders do not depend on the
        condition, so the vision / audio tokens of a window are shared by every condition that keeps them."""
        # the stimuli object itself is held (not its id, which a new object may reuse once this one is freed)
        key = (stimuli, str(self.device), self.precision)
        if self._cache_key is None or self._cache_key[0] is not stimuli or self._cache_key[1:] != key[1:]:
            self._cache_key, self._cache = key, {"vision": {}, "audio": {}}
        store = self._cache[kind]
        todo = [int(i) for i in idx if int(i) not in store]
        if todo:
            with self.autocast():
                out = compute(np.asarray(todo))
            for j, i in enumerate(todo):
                store[i] = out[j]
        return torch.stack([store[int(i)] for i in idx])

    def _vision_tokens(self, stimuli, idx) -> torch.Tensor:
        def compute(sel):
            x = torch.from_numpy(np.ascontiguousarray(stimuli.frames[sel])).to(self.device).float().div_(255.0)
            return self.model.vision_tokens(x)
        return self._cached(stimuli, idx, "vision", compute)

    def clips(self, stimuli, i: int, plan) -> np.ndarray:
        """float32 (n, 60, 65): the clips of window i's sub-segments 0 .. n - 1 that may enter as audio (the
        context's; ``centred`` also the window's own)."""
        starts = segment_starts(float(stimuli.windows[i, 1]), plan)
        subs = range(plan.n_clips if self.layout == "centred" else plan.n_context)
        return np.concatenate([segment_clips(stimuli.waveform, stimuli.audio_rate, starts[j // 3], (j % 3,))
                               for j in subs])

    def _audio_tokens(self, stimuli, idx, plan) -> torch.Tensor:
        def compute(sel):
            clips = np.stack([self.clips(stimuli, int(i), plan) for i in sel])
            return self.model.audio_tokens(torch.from_numpy(clips).to(self.device))
        return self._cached(stimuli, idx, "audio", compute)

    def window_rows(self, stimuli, idx, condition: str, plan, pass_index: int = 0) -> list:
        rows = []
        index = transcript_index(stimuli.transcript or [])      # once for the batch, not per window
        for i in idx:
            words = subsegment_words(stimuli.transcript, float(stimuli.windows[i, 1]), plan, index)
            r = window_tokens(words, plan, condition, self.tokenize, self.cfg.audio_token_length,
                              layout=self.layout, pass_index=pass_index)
            if r.truncated and (stimuli.episode, condition) not in self._warned:
                self._warned.add((stimuli.episode, condition))
                log.warning("episode %s, window %d (%s): %d slots past %d cut at the tail (the original keeps "
                            "the head); a shorter windows.context avoids it", stimuli.episode, int(i), condition,
                            r.truncated, TEXT_SLOTS)
            if not any(r.pooled):
                raise DataError(f"episode {stimuli.episode}, window {int(i)} ({condition}): the {TEXT_SLOTS}-slot "
                                "limit cut every slot of the window itself; use a shorter windows.context")
            rows.append(r)
        return rows

    def n_passes(self, condition: str) -> int:
        return len(passes(condition, self.layout))

    def prepare(self, stimuli, index, condition: str, pass_index: int = 0):
        """(WindowBatch on the device, vision tokens or None, audio tokens or None) of pass ``pass_index`` of
        ``condition``."""
        idx = window_indices(index, stimuli.n_windows)
        plan = plan_windows(stimuli.windows, self.layout)
        self._check(stimuli, plan)
        keep = modalities(condition)
        batch = batch_windows(self.window_rows(stimuli, idx, condition, plan, pass_index)).to(self.device)
        vis = self._vision_tokens(stimuli, idx) if "vision" in keep else None
        aud = self._audio_tokens(stimuli, idx, plan) if "audio" in keep else None
        return batch, vis, aud

    @torch.no_grad()
    def encode(self, stimuli, index, condition: str) -> torch.Tensor:
        self.check_condition(condition)
        total = None
        for p in range(self.n_passes(condition)):
            batch, vis, aud = self.prepare(stimuli, index, condition, p)
            with self.autocast():
                out = self.model(tokens=batch.tokens, token_segment=batch.token_segment, audio_ptr=batch.audio_ptr,
                                 vision_tokens=vis, audio_tokens=aud)
            L = batch.tokens.shape[1]
            hs = out["hidden_states"][:, :, :L].float()                     # (layers, b, L, H)
            w = batch.pooled.float()
            pooled = (hs * w[None, :, :, None]).sum(2) / w.sum(1)[None, :, None]
            total = pooled if total is None else total + pooled
        return (total / self.n_passes(condition)).cpu()


def build_merlot_reserve(model_cfg, windows_cfg) -> MerlotBackbone:
    """Registry factory: ``model.checkpoint`` = a .pt written by ``python -m brainalign.models.merlot.convert``."""
    if not model_cfg.checkpoint:
        raise ConfigError("model.checkpoint: the merlot_reserve backbone needs a converted checkpoint "
                          "(python -m brainalign.models.merlot.convert FLAX_CKPT OUT.pt --tokenizer "
                          "lowercase_encoder.json)")
    payload = read_converted(model_cfg.checkpoint)
    tokenize = bpe_tokenizer(payload_tokenizer(payload, model_cfg.checkpoint))
    return MerlotBackbone(model_from_payload(payload), tokenize, model_cfg.merlot_reserve.layout)
