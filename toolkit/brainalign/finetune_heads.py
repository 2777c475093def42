"""Multiple-choice QA heads for the tiny, MERLOT Reserve and Hugging Face (GIT / TVP) backbones.

Every QA model has the contract the training loop (:mod:`brainalign.finetune`) uses:

* ``encode_answers(sub, question, answers) -> 5 int lists``: the token row of each answer from the
  normalised subtitle words in ``ts``, question words and the 5 answers' words (the dataset calls it);
  ``pad_id``: the id rows are padded with;
* ``forward(frames uint8 (B, F, S, S, 3) or None, ids int64 (B, 5, W)) -> logits float32``, either
  (B, 5) (one pass) or (B, P, 5) (P passes, e.g. MERLOT's audio and subtitle passes);
  :func:`qa_loss` / :func:`qa_predict` handle both shapes;
* ``freeze_vision()`` (frames left out: DDP needs every trained parameter used) and
  ``save(path) -> Path``: the fine-tuned backbone in the format its ``model.checkpoint`` loads.

MERLOT Reserve (as the original's ``finetune/tvqa/prep_data.py``, ``finetune/common_dataloader.py``
``preprocess_tvqa`` and ``finetune/tvqa/tvqa_finetune.py``):

* time: ``windows.frames`` (<= 7) segments of 4.667 s, the first centred on the middle of ``ts``, extended
  alternately left and right inside the clip (:func:`brainalign.tvqa.merlot_segments`); segment i gets
  segment index i + 1 and one frame (at its middle, letterboxed into the model's grid); segment 0 holds the
  query (the original's dummy first image there is dropped from the sequence, so the frames keep indices
  1..T); a clip with fewer segments repeats its last one with a black frame and silent audio;
* query (segment 0): ``BPE("{start} to {end}")`` (where ``ts`` lies in the segments, in percent) + START +
  BPE(question) + BPE("answer: ") + BPE(answer k), at most 255 tokens (head kept), then MASK;
* text pass: the query, then each segment's subtitle words (by word centre); audio pass: the query, then
  18 AUDIOSPAN slots per segment, its 3 clips: the clip's audio (``audio/{vid_name}.*``) decoded at
  22,620 Hz, divided by its peak, each 4.667-s segment a 180-frame log-mel spectrogram made with the
  22,050 Hz parameters (the original's stretch to 3 x 60 frames); both at most 256 slots (head kept);
* the joint encoding (``seq``) at the MASK -> ``proj`` (Linear H -> 1, no bias) is the answer's logit.
  ``proj`` starts as ``randn(H, 1) * 0.01``: tvqa_finetune.py declares ``normal(0.02)`` as the Dense
  initialiser, but the parameters it trains are the loaded checkpoint with ``params['proj'] =
  {'kernel': np.random.randn(hsz, 1) * 0.01}`` (model.init is never called), so 0.01 is what it used;
* loss = CE(audio pass) + CE(text pass); prediction = argmax(softmax(audio) + softmax(text)) (``preds_joint``).

Like the original, the fine-tuned model drops the pretraining ``head`` and ``span_encoder``; it is saved in
the converted .pt format (convert.FORMAT, config with ``qa_head`` True, ``proj`` kept, the BPE vocabulary
carried over) that ``model.checkpoint`` of ``merlot_reserve`` reads. Not reproduced: the training-time
augmentations (random scale, noise-padded audio shift) and the JPEG quantisation of the stored inputs.

Hugging Face (GIT / TVP): answer k's text is ``tokenizer(" ".join(subtitle words + question + answer))``
(subtitle words cut first to fit ``max_position_embeddings``); the core model's last hidden state, mean
over the valid positions (text tokens and, for GIT, the image tokens), -> Linear(H, 1) is the logit.
Saved with ``save_pretrained`` (model, tokenizer, image processor) into a directory.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .models.tiny import PAD, TinyMultimodal, save_checkpoint

TVQA_SLOTS = 256          # lang_seq_len of tvqa_finetune.py
MAX_TVQA_SEGMENTS = 7     # prep_data.py pads every question to 7 segments (8 with the dummy first one)


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


# ---- MERLOT Reserve --------------------------------------------------------------------------------

class MerlotQAInputs:
    """One question's (or, stacked, a batch's) MERLOT inputs besides the text-pass rows.

    frames uint8 (..., T, H, W, 3) or None; valid bool (..., T); audio float32 (..., T, 3, 60, 65);
    text_seg: segment index of each text-pass slot; audio_rows / audio_seg: the audio pass's slots (lists per
    answer for one question; int64 (B, A, W) tensors once stacked).
    """

    def __init__(self, frames, valid, audio, text_seg, audio_rows, audio_seg):
        self.frames, self.valid, self.audio = frames, valid, audio
        self.text_seg, self.audio_rows, self.audio_seg = text_seg, audio_rows, audio_seg

    @classmethod
    def stack(cls, items: list, width: int) -> "MerlotQAInputs":
        from .models.merlot.model import PADDING

        def pad(rows_per_item, w, value):
            out = torch.full((len(rows_per_item), len(rows_per_item[0]), w), value, dtype=torch.int64)
            for i, rows in enumerate(rows_per_item):
                for k, r in enumerate(rows):
                    out[i, k, : len(r)] = torch.tensor(r, dtype=torch.int64)
            return out

        wa = max(1, max(len(r) for it in items for r in it.audio_rows))
        frames = None if items[0].frames is None else torch.from_numpy(np.stack([it.frames for it in items]))
        return cls(frames, torch.from_numpy(np.stack([it.valid for it in items])),
                   torch.from_numpy(np.stack([it.audio for it in items])),
                   pad([it.text_seg for it in items], width, 0), pad([it.audio_rows for it in items], wa, PADDING),
                   pad([it.audio_seg for it in items], wa, 0))

    def to(self, device, non_blocking: bool = False) -> "MerlotQAInputs":
        return MerlotQAInputs(*(None if v is None else v.to(device, non_blocking=non_blocking) for v in
                                (self.frames, self.valid, self.audio, self.text_seg, self.audio_rows, self.audio_seg)))


class MerlotQAModel(nn.Module):
    """MERLOT Reserve TVQA head: forward(MerlotQAInputs, ids) -> logits float32 (B, 2, 5), passes (audio, text)."""

    def __init__(self, model, tokenizer_json: str, seed: int = 0, source: str = "", n_segments: int = 7):
        super().__init__()
        from .models.merlot.backbone import bpe_tokenizer
        from .models.merlot.model import PADDING

        if not getattr(model.cfg, "qa_head", False) or not hasattr(model, "proj"):
            raise ValueError("MerlotQAModel needs a MerlotReserve built with qa_head=True")
        if not 1 <= int(n_segments) <= MAX_TVQA_SEGMENTS:
            raise ConfigError(f"windows.frames: MERLOT Reserve's TVQA head takes 1..{MAX_TVQA_SEGMENTS} segments "
                              f"(one frame each, after the query's segment 0), got {n_segments}")
        self.model = model
        self.tokenizer_json = tokenizer_json
        self.tokenize = bpe_tokenizer(tokenizer_json)
        self.source = source
        self.pad_id = PADDING
        self.seed = int(seed)
        self.n_segments = int(n_segments)
        # parameters the QA loss never uses (DDP needs every trained parameter used): the pretraining
        # contrastive scales and the encoders' CLS projections (only their pooled sequences feed the joint model)
        for p in (model.contrastive_scales, *model.vision_encoder.transformer.cls_proj.parameters(),
                  *model.audio_encoder.transformer.cls_proj.parameters()):
            p.requires_grad_(False)

    @classmethod
    def from_checkpoint(cls, path, seed: int = 0, n_segments: int = 7) -> "MerlotQAModel":
        """From a converted .pt (pre-trained: a fresh ``proj``; fine-tuned: its ``proj``)."""
        from .models.merlot.backbone import payload_tokenizer
        from .models.merlot.convert import read_converted
        from .models.merlot.model import MerlotConfig, build_model

        payload = read_converted(path)
        tokenizer_json = payload_tokenizer(payload, path)
        cfg = MerlotConfig(**{**payload["config"], "qa_head": True, "joint_head": False, "span_num_layers": 0})
        model = build_model(cfg)
        sd = {k: v for k, v in payload["state_dict"].items()
              if not k.startswith(("head.", "span_encoder."))}
        missing, unexpected = model.load_state_dict(sd, strict=False)
        if unexpected or set(missing) - {"proj.weight"}:
            raise ConfigError(f"model.checkpoint: {path} does not fit MERLOT Reserve {cfg.hidden_size}: "
                              f"missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")
        if "proj.weight" in missing:            # tvqa_finetune.py: params['proj'] = randn(hsz, 1) * 0.01
            g = torch.Generator().manual_seed(int(seed))
            with torch.no_grad():
                model.proj.weight.copy_(torch.randn(model.proj.weight.shape, generator=g) * 0.01)
        return cls(model, tokenizer_json, seed=seed, source=str(path), n_segments=n_segments)

    encode_answers = None           # rows come from item_inputs (they need the times, frames and audio)

    def item_inputs(self, ds, it) -> tuple:
        """(MerlotQAInputs, 5 text-pass rows) of one question of ``ds`` (a finetune.TVQADataset)."""
        from . import tvqa
        from .models.merlot.model import AUDIOSPAN, MASK, START
        from .models.merlot.spectrogram import TVQA_RATE, TVQA_SEGMENT_SECONDS, tvqa_clips
        from .stimuli.audio import peak_normalise, read_audio

        files = ds.frame_files(it)
        max_time = (len(files) - 1) / ds.fps
        segs = tvqa.merlot_segments(it.ts, self.n_segments, max_time, TVQA_SEGMENT_SECONDS)
        T = self.n_segments
        mids = [(a + b) / 2 for a, b in segs]
        frames = None
        if ds.use_frames:
            frames = tvqa.load_frames_letterboxed(files, mids, self.model.cfg.image_size, ds.fps)
            frames = np.concatenate([frames, np.repeat(frames[-1:], T - len(segs), 0)])
        wave = peak_normalise(read_audio(tvqa.audio_path(ds.root, it.vid_name), TVQA_RATE))
        clips = []
        for a, b in segs:
            i0, i1 = int(np.floor(TVQA_RATE * a)), int(np.floor(TVQA_RATE * b))
            seg = np.zeros(i1 - i0, np.float32)
            lo, hi = max(i0, 0), min(i1, len(wave))
            if hi > lo:
                seg[lo - i0: hi - i0] = wave[lo:hi]
            clips.append(tvqa_clips(seg))
        audio = np.stack(clips + [clips[-1]] * (T - len(segs)))
        valid = np.arange(T) < len(segs)
        audio[~valid, ..., :-1] = 0.0                   # the original zeroes padded segments (speed column 1)
        if frames is not None:
            frames[~valid] = 0

        # subtitles per segment by word centre (bounds: segment starts + the last end)
        subs = [[] for _ in range(T)]
        if ds.use_subtitles:
            bounds = np.array([a for a, _ in segs] + [segs[-1][1]])
            for w in ds.transcript(it):
                pos = int(np.searchsorted(bounds, w.onset + w.duration / 2))
                if 0 < pos <= len(segs):
                    subs[pos - 1].append(w.word)
        t0, dur = segs[0][0], segs[-1][1] - segs[0][0]
        rel = [(max(it.ts[0], 0.0) - t0) / dur, (min(it.ts[1], max_time) - t0) / dur]
        query = (self.tokenize(f"{int(rel[0] * 100)} to {int(rel[1] * 100)}") + [START]
                 + self.tokenize(it.question) + self.tokenize("answer: "))
        sub_ids = [self.tokenize(" ".join(s)) if s else [] for s in subs]
        atl = self.model.cfg.audio_token_length
        rows, text_seg, audio_rows, audio_seg = [], [], [], []
        for ans in it.answers:
            option = (query + self.tokenize(ans))[: TVQA_SLOTS - 1] + [MASK]
            row = option + [t for ids in sub_ids for t in ids]
            seg = [0] * len(option) + [i + 1 for i, ids in enumerate(sub_ids) for _ in ids]
            rows.append(row[:TVQA_SLOTS])
            text_seg.append(seg[:TVQA_SLOTS])
            arow = option + [AUDIOSPAN] * (3 * atl * T)
            aseg = [0] * len(option) + [i + 1 for i in range(T) for _ in range(3 * atl)]
            audio_rows.append(arow[:TVQA_SLOTS])
            audio_seg.append(aseg[:TVQA_SLOTS])
        return MerlotQAInputs(frames, valid, audio.astype(np.float32), text_seg, audio_rows, audio_seg), rows

    def item_bytes(self) -> int:
        """Bytes of one question's inputs (the dataset's cache budget)."""
        h, w = self.model.cfg.image_size
        return self.n_segments * (h * w * 3 + 3 * 60 * 65 * 4)

    def pass_logits(self, tokens, token_segment, vision_tokens=None, audio_tokens=None, audio_ptr=None):
        """One pass: tokens (N, L) -> logits (N,) from ``seq`` at each row's first MASK slot."""
        from .models.merlot.model import MASK

        out = self.model(tokens=tokens, token_segment=token_segment, audio_ptr=audio_ptr,
                         vision_tokens=vision_tokens, audio_tokens=audio_tokens, keep_layers=False,
                         vision_segment_offset=1)
        at = mask_positions(tokens, MASK)
        pooled = out["seq"][torch.arange(tokens.shape[0], device=tokens.device), at]
        return self.model.proj(pooled).float().squeeze(-1)

    def forward(self, inputs: MerlotQAInputs, ids):
        """inputs (stacked MerlotQAInputs); ids int64 (B, A, W) text-pass rows -> logits float32 (B, 2, A)."""
        from .models.merlot.model import AUDIOSPAN

        b, a, w = ids.shape
        vis = None
        if inputs.frames is not None:
            x = inputs.frames.float().div(255.0)
            v = self.model.vision_tokens(x)                                       # once per question
            vis = v.repeat_interleave(a, dim=0)
        T = inputs.audio.shape[1]
        aud = self.model.audio_tokens(inputs.audio.reshape(b, 3 * T, *inputs.audio.shape[3:]))
        aud = aud.repeat_interleave(a, dim=0)
        atok = inputs.audio_rows.reshape(b * a, -1)
        ptr = ((atok == AUDIOSPAN).long().cumsum(-1) - 1).div(self.model.cfg.audio_token_length,
                                                                 rounding_mode="floor") % (3 * T)
        la = self.pass_logits(atok, inputs.audio_seg.reshape(b * a, -1), vis, aud, ptr)
        lt = self.pass_logits(ids.reshape(b * a, w), inputs.text_seg.reshape(b * a, w), vis)
        return torch.stack([la, lt], 0).view(2, b, a).transpose(0, 1)

    def freeze_vision(self):
        for p in self.model.vision_encoder.parameters():
            p.requires_grad_(False)

    def save(self, path) -> Path:
        """The converted .pt format (:func:`brainalign.models.merlot.convert.read_converted`), atomically."""
        from .models.merlot.convert import write_converted

        state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        return write_converted(path, self.model.cfg, state, f"brainalign finetune of {self.source}",
                               self.tokenizer_json)


def mask_positions(tokens: torch.Tensor, mask_id: int) -> torch.Tensor:
    """int64 (N,): the first slot of each row holding ``mask_id`` (ValueError if a row has none)."""
    is_mask = tokens == mask_id
    if not bool(is_mask.any(1).all()):
        raise ValueError("every MERLOT answer row needs a MASK slot")
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


# ---- the tiny backbone's head ----------------------------------------------------------------

class QAModel(nn.Module):
    """Multiple-choice head over the tiny backbone: forward(frames, ids) -> logits float32 (B, 5)."""

    def __init__(self, backbone: TinyMultimodal, seed: int = 0):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.spec.hidden, 1)
        g = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(self.head.weight.shape, generator=g) / math.sqrt(backbone.spec.hidden))
            self.head.bias.zero_()
        for p in backbone.audio_embed.parameters():     # TVQA has no audio: keep the audio embedding as is
            p.requires_grad_(False)
        self._freeze_dead_parameters()

    def _freeze_dead_parameters(self):
        """Parameters the loss cannot depend on (their exact gradient is 0): the head bias and the last block's
        fc2 bias (both shift all 5 logits equally) and the key biases (a query's attention logits all move by
        the same amount). AdamW would turn their float-rounding gradients into lr-sized random steps, so they
        are held fixed: fine-tuning changes only what the task determines."""
        h = self.backbone.spec.hidden
        self.head.bias.requires_grad_(False)
        self.backbone.blocks[-1].fc2.bias.requires_grad_(False)

        def zero_keys(grad):
            grad = grad.clone()
            grad[h: 2 * h] = 0
            return grad

        for block in self.backbone.blocks:
            block.qkv.bias.register_hook(zero_keys)

    pad_id = PAD
    encode_answers = None         # rows come from TVQADataset.words (hashed word ids)

    def freeze_vision(self):
        for p in (*self.backbone.patch_embed.parameters(), self.backbone.patch_pos, self.backbone.frame_pos):
            p.requires_grad_(False)

    def save(self, path) -> Path:
        """The fine-tuned backbone (tiny.save_checkpoint, what ``model.checkpoint`` loads)."""
        return save_checkpoint(self.backbone, path)

    def forward(self, frames, ids):
        """frames uint8 (B, F, S, S, 3) or None; ids int64 (B, A, W) -> logits float32 (B, A)."""
        b, a, w = ids.shape
        fr = None if frames is None else frames.repeat_interleave(a, dim=0)
        out = self.backbone(frames=fr, ids=ids.reshape(b * a, w))
        pooled = torch.einsum("bth,bt->bh", out.hidden[-1].float(), out.pool_weights)
        return self.head(pooled).float().view(b, a)


# ---- the QA model of each backbone (brainalign.models.registry.build_qa_model chooses by model.backbone) ----

def tiny_qa_model(cfg) -> QAModel:
    """tiny: :class:`QAModel` over TinyMultimodal (weights from ``model.seed`` / ``model.checkpoint``)."""
    from .models.tiny import TinyMultimodal, TinySpec, load_checkpoint

    module = TinyMultimodal(TinySpec.from_config(cfg.model, cfg.windows))
    module.init_weights(cfg.model.seed)
    if cfg.model.checkpoint:
        load_checkpoint(module, cfg.path(cfg.model.checkpoint))
    return QAModel(module, seed=cfg.finetune.seed)


def _pretrained(cfg, name: str):
    if not cfg.model.checkpoint:
        raise ConfigError(f"model.checkpoint: fine-tuning {name} needs the pre-trained checkpoint to start from")
    return cfg.model.checkpoint


def merlot_qa_model(cfg) -> "MerlotQAModel":
    """merlot_reserve: :class:`MerlotQAModel` from the converted checkpoint, ``windows.frames`` segments."""
    ckpt = _pretrained(cfg, "merlot_reserve")
    if not 1 <= cfg.windows.frames <= MAX_TVQA_SEGMENTS:
        raise ConfigError(f"windows.frames: MERLOT Reserve's TVQA head takes 1..{MAX_TVQA_SEGMENTS} segments "
                          f"(one frame each, after the query's segment 0), got {cfg.windows.frames}")
    return MerlotQAModel.from_checkpoint(cfg.path(ckpt), seed=cfg.finetune.seed, n_segments=cfg.windows.frames)


def hf_qa_model(cfg) -> "HFQAModel":
    """hf: :class:`HFQAModel` over the checkpoint (a local directory, else a hub id)."""
    from .models.hf import load_hf

    ckpt = _pretrained(cfg, "hf")
    local = cfg.path(ckpt)
    return HFQAModel(load_hf(str(local) if local.exists() else ckpt, int(cfg.windows.frames)), seed=cfg.finetune.seed)
