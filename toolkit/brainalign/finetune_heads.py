"""Multiple-choice QA heads for the MERLOT Reserve and Hugging Face (GIT / TVP) backbones.

Every QA model has the contract the training loop (:mod:`brainalign.finetune`) uses:

* ``encode_answers(sub, question, answers) -> 5 int lists``: the token row of each answer from the
  normalised subtitle words in ``ts``, question words and the 5 answers' words (the dataset calls it);
  ``pad_id``: the id rows are padded with;
* ``forward(frames uint8 (B, F, S, S, 3) or None, ids int64 (B, 5, W)) -> logits float32``, either
  (B, 5) (one pass) or (B, P, 5) (P passes, e.g. MERLOT's audio and subtitle passes);
  :func:`qa_loss` / :func:`qa_predict` handle both shapes;
* ``freeze_vision()`` (frames left out: DDP needs every trained parameter used) and
  ``save(path) -> Path``: the fine-tuned backbone in the format its ``model.checkpoint`` loads.

MERLOT Reserve (as the original's finetune/tvqa/tvqa_finetune.py): answer k's row is
``BPE(question + answer k) + [MASK] + BPE(subtitle words)`` (at most ``MAX_SLOTS`` slots, subtitle tokens
cut first, then the question from its start). Two passes share the frames (frame t = segment t):

* pass 0 (audio): the row up to its MASK, then ``audio_token_length`` AUDIOSPAN slots per audio clip;
* pass 1 (subtitles): the row as is.

The joint transformer's final-LayerNorm output (``seq``) at the MASK slot -> ``proj`` (Linear H -> 1, no
bias, init N(0, 0.01^2) like the original) is the answer's logit. Training loss = CE(audio pass) +
CE(subtitle pass); the prediction is argmax(softmax(audio logits) + softmax(subtitle logits)), the
original's ``preds_joint``. TVQA as we ship it has no audio: the audio pass gets ``SILENT_CLIPS`` clip(s)
of silence, i.e. log-mel columns 0 and the playback-speed column 1 -- exactly what the port feeds for
frames past the end of a waveform (spectrogram.audio_clips), so the audio pass is the "question + answer
+ frames, audio silent" view. All slots are segment 0 (the original aligns subtitle segments to frames;
TVQA's ``ts`` windows here are short, so this is a simplification). Like the original, the fine-tuned
model drops the pretraining ``head`` and ``span_encoder``; it is saved in the converted .pt format
(convert.FORMAT, config with ``qa_head`` True, ``proj`` kept, the BPE vocabulary carried over) that
``model.checkpoint`` of ``merlot_reserve`` reads.

Hugging Face (GIT / TVP): answer k's text is ``tokenizer(" ".join(subtitle words + question + answer))``
(subtitle words cut first to fit ``max_position_embeddings``); the core model's last hidden state, mean
over the valid positions (text tokens and, for GIT, the image tokens), -> Linear(H, 1) is the logit.
Saved with ``save_pretrained`` (model, tokenizer, image processor) into a directory.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .h5io import atomic_path

MAX_SLOTS = 160           # MERLOT token slots per row (the port's backbone uses the same budget)
SILENT_CLIPS = 1          # audio clips of silence in MERLOT's audio pass


def qa_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of (B, 5) logits, or the SUM over passes of the cross-entropies of (B, P, 5) logits."""
    logits = logits.float()
    if logits.ndim == 2:
        return F.cross_entropy(logits, labels, reduction=reduction)
    return sum(F.cross_entropy(logits[:, p], labels, reduction=reduction) for p in range(logits.shape[1]))


def qa_predict(logits: torch.Tensor) -> torch.Tensor:
    """Predicted answer int64 (B,): argmax of (B, 5) logits, or of the summed per-pass softmaxes (B, P, 5)."""
    logits = logits.float()
    if logits.ndim == 2:
        return logits.argmax(1)
    return logits.softmax(-1).sum(1).argmax(1)


def _resize_frames(frames: torch.Tensor, size: tuple) -> torch.Tensor:
    """uint8 (B, T, s, s, 3) -> float32 (B, T, h, w, 3) in [0, 1], bilinear (antialiased)."""
    b, t = frames.shape[:2]
    x = frames.float().div(255.0).reshape(b * t, *frames.shape[2:]).permute(0, 3, 1, 2)
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return x.permute(0, 2, 3, 1).reshape(b, t, *size, 3).clamp(0.0, 1.0)


# ---- MERLOT Reserve --------------------------------------------------------------------------------

class MerlotQAModel(nn.Module):
    """MERLOT Reserve TVQA head: forward(frames, ids) -> logits float32 (B, 2, 5), passes (audio, subtitles)."""

    def __init__(self, model, tokenizer_json: str, seed: int = 0, source: str = ""):
        super().__init__()
        from .models.merlot.backbone import bpe_tokenizer
        from .models.merlot.model import PADDING

        if not getattr(model.cfg, "qa_head", False) or not hasattr(model, "proj"):
            raise ValueError("MerlotQAModel needs a MerlotReserve built with qa_head=True")
        self.model = model
        self.tokenizer_json = tokenizer_json
        self.tokenize = bpe_tokenizer(tokenizer_json)
        self.source = source
        self.pad_id = PADDING
        self.seed = int(seed)
        # parameters the QA loss never uses (DDP needs every trained parameter used): the pretraining
        # contrastive scales and the encoders' CLS projections (only their pooled sequences feed the joint model)
        for p in (model.contrastive_scales, *model.vision_encoder.transformer.cls_proj.parameters(),
                  *model.audio_encoder.transformer.cls_proj.parameters()):
            p.requires_grad_(False)

    @classmethod
    def from_checkpoint(cls, path, seed: int = 0) -> "MerlotQAModel":
        """From a converted .pt (pre-trained: a fresh ``proj``; fine-tuned: its ``proj``)."""
        from .models.merlot.convert import read_converted
        from .models.merlot.model import MerlotConfig, build_model

        payload = read_converted(path)
        if not payload.get("tokenizer_json"):
            raise ConfigError(f"model.checkpoint: {path} has no BPE vocabulary; convert again with "
                              "--tokenizer lowercase_encoder.json (from the original repository)")
        cfg = MerlotConfig(**{**payload["config"], "qa_head": True, "joint_head": False, "span_num_layers": 0})
        model = build_model(cfg)
        sd = {k: v for k, v in payload["state_dict"].items()
              if not k.startswith(("head.", "span_encoder."))}
        missing, unexpected = model.load_state_dict(sd, strict=False)
        if unexpected or set(missing) - {"proj.weight"}:
            raise ConfigError(f"model.checkpoint: {path} does not fit MERLOT Reserve {cfg.hidden_size}: "
                              f"missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")
        if "proj.weight" in missing:            # the original: proj kernel ~ N(0, 0.01^2)
            g = torch.Generator().manual_seed(int(seed))
            with torch.no_grad():
                model.proj.weight.copy_(torch.randn(model.proj.weight.shape, generator=g) * 0.01)
        return cls(model, payload["tokenizer_json"], seed=seed, source=str(path))

    def encode_answers(self, sub: list, question: list, answers: list) -> list:
        """5 rows ``BPE(question + answer) + [MASK] + BPE(subtitles)``, at most MAX_SLOTS - audio slots."""
        from .models.merlot.model import MASK

        room = MAX_SLOTS - SILENT_CLIPS * self.model.cfg.audio_token_length
        sub_ids = self.tokenize(" ".join(sub)) if sub else []
        rows = []
        for a in answers:
            qa = self.tokenize(" ".join(question + a))[- (room - 1):]
            rows.append(qa + [MASK] + sub_ids[: max(0, room - 1 - len(qa))])
        return rows

    def audio_rows(self, ids: torch.Tensor) -> tuple:
        """Subtitle-pass rows (N, W) -> audio-pass (tokens (N, W'), audio_ptr (N, W')): each row up to its
        MASK, then SILENT_CLIPS runs of audio_token_length AUDIOSPAN slots, then PADDING."""
        from .models.merlot.model import AUDIOSPAN, MASK, PADDING

        atl = self.model.cfg.audio_token_length
        n_audio = SILENT_CLIPS * atl
        mask_at = mask_positions(ids, MASK)
        width = int(mask_at.max()) + 1 + n_audio
        pos = torch.arange(width, device=ids.device)[None, :]
        keep = pos <= mask_at[:, None]
        padded = F.pad(ids, (0, max(0, width - ids.shape[1])), value=PADDING)[:, :width]
        tokens = torch.where(keep, padded, PADDING)
        rel = pos - mask_at[:, None] - 1
        is_audio = (rel >= 0) & (rel < n_audio)
        tokens = torch.where(is_audio, torch.full_like(tokens, AUDIOSPAN), tokens)
        ptr = torch.where(is_audio, rel // atl, torch.full_like(tokens, -1))
        return tokens, ptr

    def silence(self, n: int, device) -> torch.Tensor:
        """float32 (n, SILENT_CLIPS, audio_seq_length, num_mels + 1): log-mel 0, playback speed 1."""
        cfg = self.model.cfg
        out = torch.zeros(n, SILENT_CLIPS, cfg.audio_seq_length, cfg.num_mels + 1, device=device)
        out[..., cfg.num_mels] = 1.0
        return out

    def pass_logits(self, tokens, vision_tokens=None, audio=None, audio_ptr=None) -> torch.Tensor:
        """One pass: tokens (N, L) -> logits (N,) from ``seq`` at each row's first MASK slot."""
        from .models.merlot.model import MASK

        out = self.model(tokens=tokens, audio=audio, audio_ptr=audio_ptr, vision_tokens=vision_tokens,
                         keep_layers=False)
        at = mask_positions(tokens, MASK)
        pooled = out["seq"][torch.arange(tokens.shape[0], device=tokens.device), at]
        return self.model.proj(pooled).float().squeeze(-1)

    def forward(self, frames, ids):
        """frames uint8 (B, T, S, S, 3) or None; ids int64 (B, A, W) -> logits float32 (B, 2, A)."""
        b, a, w = ids.shape
        flat = ids.reshape(b * a, w)
        vis = None
        if frames is not None:
            v = self.model.vision_tokens(_resize_frames(frames, self.model.cfg.image_size))   # once per question
            vis = v.repeat_interleave(a, dim=0)
        tokens_a, ptr = self.audio_rows(flat)
        audio = self.silence(b * a, ids.device)
        la = self.pass_logits(tokens_a, vis, audio, ptr)
        lt = self.pass_logits(flat, vis)
        return torch.stack([la, lt], 0).view(2, b, a).transpose(0, 1)

    def freeze_vision(self):
        for p in self.model.vision_encoder.parameters():
            p.requires_grad_(False)

    def save(self, path) -> Path:
        """The converted .pt format (:func:`brainalign.models.merlot.convert.read_converted`), atomically."""
        from .models.merlot.convert import FORMAT

        state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        payload = {"format": FORMAT, "config": self.model.cfg.to_dict(), "state_dict": state,
                   "source": f"brainalign finetune of {self.source}", "tokenizer_json": self.tokenizer_json}
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
        return Path(path)


def mask_positions(tokens: torch.Tensor, mask_id: int) -> torch.Tensor:
    """int64 (N,): the first slot of each row holding ``mask_id`` (ValueError if a row has none)."""
    is_mask = tokens == mask_id
    if not bool(is_mask.any(1).all()):
        raise ValueError("every MERLOT answer row needs a MASK slot (built by encode_answers)")
    return is_mask.long().argmax(1)


# ---- Hugging Face (GIT / TVP) ----------------------------------------------------------------------

class HFQAModel(nn.Module):
    """GIT / TVP head: forward(frames, ids) -> logits float32 (B, 5) from the mean last hidden state."""

    def __init__(self, backbone, seed: int = 0):
        super().__init__()
        self.hf = backbone
        self.model = backbone.model                   # registered: trained, moved, saved with the head
        h = backbone.hidden
        self.head = nn.Linear(h, 1)
        g = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(self.head.weight.shape, generator=g) / math.sqrt(h))
            self.head.bias.zero_()
        self.head.bias.requires_grad_(False)          # shifts all 5 logits equally: its gradient is 0
        tok = backbone.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        # parameters outside the core model's forward (the LM head) are not trained
        core_ids = {id(p) for p in backbone.core.parameters()}
        for p in self.model.parameters():
            if id(p) not in core_ids:
                p.requires_grad_(False)

    def encode_answers(self, sub: list, question: list, answers: list) -> list:
        """5 rows ``tokenizer(" ".join(subtitle words + question + answer))`` of at most max_position_embeddings
        tokens: the subtitle words are cut first (from the end), then the question (from its start)."""
        from .models.hf import tokenize_words

        limit = self.hf.max_text

        def ids(words):
            return tokenize_words(self.hf.tokenizer, words)[0]

        rows = []
        for a in answers:
            qa = question + a
            while len(qa) > 1 and len(ids(qa)) > limit:
                qa = qa[1:]
            k = len(sub)
            while k > 0 and (n := len(ids(sub[:k] + qa))) > limit:
                k -= min(k, n - limit)                   # every word has at least one token
            rows.append(ids(sub[:k] + qa)[:limit])
        return rows

    def forward(self, frames, ids):
        """frames uint8 (B, F, S, S, 3) or None; ids int64 (B, A, W) -> logits float32 (B, A)."""
        b, a, w = ids.shape
        flat = ids.reshape(b * a, w)
        att = (flat != self.pad_id).long()
        att[:, 0] = 1
        kw = {"input_ids": flat, "attention_mask": att}
        hf = self.hf
        n_vis = 0
        if frames is not None or not hf.is_git:
            if frames is None:
                pv = torch.zeros(b, len(hf.frame_sel), 3, hf.image_size, hf.image_size)
            else:
                pv = hf.pixel_values(frames.cpu().numpy())
            pv = pv.to(ids.device).repeat_interleave(a, dim=0)
            if hf.is_git:
                kw["pixel_values"] = pv if self.model.config.num_image_with_embedding else pv[:, 0]
                n_vis = pv.shape[1] * hf.tokens_per_frame
            else:
                kw["pixel_values"] = pv
        if hf.is_git:
            hidden = hf.core(**kw).last_hidden_state                               # (N, n_vis + W, H)
            valid = torch.cat([att.new_ones(b * a, n_vis), att], 1).float()
        else:       # TVP: one row at a time (transformers' TVP embedding fails for batch > 1); all tokens valid
            hidden = torch.cat([hf.core(**{k: v[i: i + 1] for k, v in kw.items()}).last_hidden_state
                                for i in range(b * a)])
            valid = torch.ones(hidden.shape[:2], device=hidden.device)
        pooled = (hidden.float() * valid[..., None]).sum(1) / valid.sum(1, keepdim=True)
        return self.head(pooled).float().view(b, a)

    def freeze_vision(self):
        """GIT without frames has no image tokens: its image encoder, projection and temporal embeddings are
        unused. TVP always takes frames (all-zero ones when left out), so nothing is frozen there."""
        if not self.hf.is_git:
            return
        core = self.hf.core
        for mod in (core.image_encoder, core.visual_projection, core.img_temporal_embedding):
            for p in mod.parameters():
                p.requires_grad_(False)

    def save(self, path) -> Path:
        """save_pretrained (model, tokenizer, image processor) into the directory ``path`` (replaced whole)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.model.save_pretrained(tmp)
        self.hf.tokenizer.save_pretrained(tmp)
        if self.hf.image_processor is not None:
            self.hf.image_processor.save_pretrained(tmp)
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
        return path

