"""The ``hf`` backbone: a Hugging Face multimodal transformer loaded from a local directory.

``model.backbone: hf`` and ``model.checkpoint: DIR`` (a directory written by ``save_pretrained``: the
model's ``config.json`` + weights, its tokenizer, optionally its image processor; or the id of a model
already in the local Hugging Face cache: nothing is downloaded). Needs the optional ``transformers``
package (``pip install 'brainalign[hf]'``). The class is chosen by ``config.architectures[0]``.

Supported architectures (``model_type`` in config.json) and their token sequences:

* ``git`` (``GitModel`` / ``GitForCausalLM``): ``[vision tokens ; text tokens]`` in one decoder; vision
  tokens attend to each other bidirectionally, text tokens causally to all vision tokens and earlier
  text. (n_patches + 1) vision tokens per frame. Several frames per window need a video GIT
  (``num_image_with_embedding >= windows.frames``: frames get temporal embeddings); an image GIT
  (``num_image_with_embedding`` null) sees the window's middle frame (index frames // 2).
* ``tvp`` (``TvpModel``): ``[10 learned text-prompt tokens ; text tokens ; visual grid tokens]``,
  bidirectional; the frames (the window's ``windows.frames`` repeated evenly to the model's
  ``num_frames``: frame j of num_frames is window frame ``j * frames // num_frames``) pass the visual
  prompter and ResNet and are mean-pooled over time into one grid. Windows run one at a time
  (transformers' TVP grid position code fails for batch > 1).

Text: the window's words joined by single spaces and encoded with the tokenizer saved in the directory
(with its special tokens, e.g. ``[CLS] ... [SEP]``); each sub-token is mapped back to its word by
character offsets (a fast tokenizer is required). Frames: the directory's image processor if it has one;
else a documented fallback: bilinear (antialiased) resize to the model's input size
(``vision_config.image_size`` for GIT, ``max_img_size`` for TVP), scale to [0, 1], normalise with the
CLIP mean/std (GIT) or 0.5/0.5 and reverse the channels to BGR (TVP, as its processor does).

``encode`` returns, for every transformer layer (the residual stream after block l; the embeddings
themselves are not returned; ``n_layers = num_hidden_layers``), the modality-balanced mean used by the
tiny model: the average of the mean over the vision tokens (GIT: every frame's patch + CLS tokens; TVP:
the grid tokens) and the mean over the sub-tokens of real words (special tokens, TVP's text prompt and
padding excluded), each modality weighted equally. A window in which neither is present (no words under
``no_vision``) gets the state of the first text token ([CLS]/BOS).

Conditions (neither model has an audio input: ``no_audio`` is refused rather than silently equal to
``joint``; ``language_only`` = ``no_vision`` and ``vision_only`` = ``no_language``):

===============  =============================================  ==============================================
condition        GIT                                            TVP
===============  =============================================  ==============================================
joint            frames + text                                  frames + text
no_vision        no ``pixel_values``: vision tokens dropped     null frames (all-zero ``pixel_values``, the
                 (GIT's text-only decoder)                      processor's mean image); grid tokens present
                                                                but not pooled
no_language      frames + the tokenizer's encoding of ``""``    frames + the encoding of ``""`` ([CLS] [SEP]);
                 ([CLS] [SEP]); = joint on a window w/o words   = joint on a window without words
===============  =============================================  ==============================================

Masked-word prediction (``brainalign mlm``) uses :meth:`HFBackbone.masked_word_logits`: GIT is a causal
LM, so sub-token j of a word is predicted from the last layer's state at the position before it through
the LM head (``GitForCausalLM.output``), with the word's earlier sub-tokens given (teacher forcing; the
summed loss is -log p(word | left context), vision tokens included). The word cannot influence these
states (causal attention), so no MASK token is needed. A GIT saved as ``GitModel``, and TVP, have no LM
head: ConfigError.
"""
from __future__ import annotations

import bisect
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from ..log import get_logger
from .conditions import modalities
from .registry import Backbone, window_indices

log = get_logger("models.hf")

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TVP_MEAN, TVP_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
TVP_PROMPT = 10                     # TvpModel's learned text-prompt tokens before the text
SUPPORTED = {"git": ("GitModel", "GitForCausalLM"), "tvp": ("TvpModel",)}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model")
CONDITIONS_NO_AUDIO = ("joint", "no_vision", "no_language", "vision_only", "language_only")


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError("model.backbone: the hf backbone needs the 'transformers' package "
                          "(pip install 'brainalign[hf]')") from None
    return transformers


def tokenize_words(tokenizer, words, max_length: int | None = None) -> tuple[list[int], list[int]]:
    """Encode ``" ".join(words)`` with special tokens -> (ids, word_of): word_of[k] = index of the word
    sub-token k belongs to (by its last character), -1 for special tokens."""
    starts, pos = [], 0
    for w in words:
        starts.append(pos)
        pos += len(w) + 1
    enc = tokenizer(" ".join(words), add_special_tokens=True, return_offsets_mapping=True,
                    truncation=max_length is not None, max_length=max_length)
    special = set(tokenizer.all_special_ids)
    word_of = []
    for tid, (s, e) in zip(enc["input_ids"], enc["offset_mapping"]):
        word_of.append(bisect.bisect_right(starts, e - 1) - 1 if e > s and tid not in special else -1)
    return list(enc["input_ids"]), word_of


class HFBackbone(Backbone):
    """A transformers model behind the :class:`Backbone` interface (see the module docstring)."""

    name = "hf"

    def __init__(self, model, tokenizer, image_processor=None, frames: int = 1, source: str = ""):
        cfg = model.config
        if cfg.model_type not in SUPPORTED:
            raise ConfigError(f"model.checkpoint: {source} holds a {cfg.model_type!r} model; the hf backbone "
                              f"supports model types {', '.join(SUPPORTED)}")
        self.model = model.eval()
        self.model_type = cfg.model_type
        self.is_git = cfg.model_type == "git"
        self.core = model.git if hasattr(model, "git") else model
        self.lm_head = model.get_output_embeddings() if hasattr(model, "git") else None
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.source = source
        self.n_layers = int(cfg.num_hidden_layers)
        self.hidden = int(cfg.hidden_size)
        self.supported_conditions = CONDITIONS_NO_AUDIO
        self.max_text = int(cfg.max_position_embeddings)
        self.n_frames = frames
        if self.is_git:
            n_img = cfg.num_image_with_embedding
            if n_img is not None and frames > n_img:
                raise ConfigError(f"windows.frames: {frames} frames per window but the GIT model in {source} "
                                  f"has temporal embeddings for {n_img} (num_image_with_embedding)")
            self.frame_sel = [frames // 2] if n_img is None else list(range(frames))
            self.image_size = int(cfg.vision_config.image_size)
            self.mean, self.std, self.bgr = CLIP_MEAN, CLIP_STD, False
        else:                                   # tvp: the window's frames repeated to config.num_frames
            self.frame_sel = [int(j) for j in np.arange(cfg.num_frames) * frames // cfg.num_frames]
            self.image_size = int(cfg.max_img_size)
            self.mean, self.std, self.bgr = TVP_MEAN, TVP_STD, True

    def to(self, device):
        super().to(device)
        self.model.to(self.device)
        return self

    @property
    def has_lm_head(self) -> bool:
        return self.lm_head is not None

    # ---- inputs --------------------------------------------------------------------------------------
    def pixel_values(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 (B, F, S, S, 3) -> float32 (B, F', 3, H, W) of the frames used (``frame_sel``)."""
        if frames.ndim != 5 or frames.shape[1] != self.n_frames or frames.shape[-1] != 3:
            raise DataError(f"frames have shape {tuple(frames.shape)}; the hf backbone was built for "
                            f"(n_windows, {self.n_frames}, size, size, 3) (windows.frames)")
        sel = np.ascontiguousarray(frames[:, self.frame_sel])                  # (B, F', S, S, 3)
        b, f = sel.shape[:2]
        if self.image_processor is None:
            pv = fallback_pixels(torch.from_numpy(sel.reshape(b * f, *sel.shape[2:])), self.image_size,
                                 self.mean, self.std, self.bgr)
        elif self.is_git:
            pv = self.image_processor(images=list(sel.reshape(b * f, *sel.shape[2:])),
                                      return_tensors="pt")["pixel_values"]
        else:
            pv = self.image_processor([list(v) for v in sel], return_tensors="pt")["pixel_values"]
        return pv.reshape(b, f, *pv.shape[-3:]).float()

    def text_rows(self, stimuli, idx, keep) -> list[tuple[list[int], list[int]]]:
        rows = []
        for i in idx:
            words = [str(w) for w in stimuli.words[i]] if "language" in keep else []
            rows.append(tokenize_words(self.tokenizer, words, self.max_text))
        return rows

    def forward(self, stimuli, idx, condition: str):
        """Run the model: (hidden (layers, B, T, H), info) with info = dict(rows, text_start, vis_start,
        n_vis: number of pooled vision tokens, 0 when vision is removed)."""
        keep = modalities(condition)
        rows = self.text_rows(stimuli, idx, keep)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        n_text = max(len(r[0]) for r in rows)
        ids = torch.full((len(idx), n_text), pad, dtype=torch.int64)
        att = torch.zeros((len(idx), n_text), dtype=torch.int64)
        for b, (r, _) in enumerate(rows):
            ids[b, : len(r)] = torch.tensor(r, dtype=torch.int64)
            att[b, : len(r)] = 1
        kw = {"input_ids": ids.to(self.device), "attention_mask": att.to(self.device)}
        pv = self.pixel_values(stimuli.frames[idx]) if "vision" in keep else None
        if self.is_git:
            if pv is not None:
                kw["pixel_values"] = (pv if self.model.config.num_image_with_embedding else pv[:, 0]).to(self.device)
            n_vis = 0 if pv is None else pv.shape[1] * self.tokens_per_frame
            text_start, vis_start = n_vis, 0
        else:                                   # tvp: vision removed = all-zero (mean) frames, not pooled
            if pv is None:
                pv = torch.zeros(len(idx), len(self.frame_sel), 3, self.image_size, self.image_size)
            kw["pixel_values"] = pv.to(self.device)
            text_start, vis_start = TVP_PROMPT, TVP_PROMPT + n_text
        with self.autocast():
            out = self.core(**kw, output_hidden_states=True)
        hidden = torch.stack(out.hidden_states[1:])                            # (layers, B, T, H)
        if not self.is_git:
            n_vis = hidden.shape[2] - vis_start if "vision" in keep else 0
        return hidden, {"rows": rows, "text_start": text_start, "vis_start": vis_start, "n_vis": n_vis}

    @property
    def tokens_per_frame(self) -> int:
        vc = self.model.config.vision_config
        return (vc.image_size // vc.patch_size) ** 2 + 1

    def pool_weights(self, info, n_tokens: int) -> torch.Tensor:
        """float32 (B, T): the modality-balanced weights (see the module docstring)."""
        t0, v0, n_vis = info["text_start"], info["vis_start"], info["n_vis"]
        w = torch.zeros(len(info["rows"]), n_tokens)
        for b, (_, word_of) in enumerate(info["rows"]):
            groups = [list(range(v0, v0 + n_vis))] if n_vis else []
            words = [t0 + k for k, wo in enumerate(word_of) if wo >= 0]
            if words:
                groups.append(words)
            if not groups:
                w[b, t0] = 1.0                                                 # the first text token
            for g in groups:
                w[b, g] += 1.0 / (len(g) * len(groups))
        return w

    @torch.inference_mode()
    def encode(self, stimuli, index, condition: str) -> torch.Tensor:
        self.check_condition(condition)
        idx = window_indices(index, stimuli.n_windows)
        if len(idx) == 0:
            return torch.zeros(self.n_layers, 0, self.hidden)
        if not self.is_git and len(idx) > 1:
            # transformers' TvpVisualInputEmbedding reshapes its column positions with the batch size
            # (fails for batch > 1), so TVP windows run one at a time
            return torch.cat([self.encode(stimuli, idx[b: b + 1], condition) for b in range(len(idx))], dim=1)
        hidden, info = self.forward(stimuli, idx, condition)
        w = self.pool_weights(info, hidden.shape[2]).to(hidden.device)
        return torch.einsum("lbth,bt->lbh", hidden.float(), w).cpu()

    # ---- masked-word prediction -----------------------------------------------------------------------
    @torch.inference_mode()
    def masked_word_logits(self, stimuli, idx, condition: str, masked) -> list[list[tuple]]:
        """For window idx[b] and each word index in masked[b]: (logits float32 (n_sub, vocab), target int64
        (n_sub,)) of the word's sub-tokens, from the left context (causal LM, see the module docstring)."""
        if not self.has_lm_head:
            raise ConfigError(f"model.backbone: backbone 'hf' ({type(self.model).__name__} from {self.source}) "
                              "has no language-model head"
                              + (" (save the model as GitForCausalLM)" if self.is_git else ""))
        self.check_condition(condition)
        idx = window_indices(idx, stimuli.n_windows)
        hidden, info = self.forward(stimuli, idx, condition)
        last = hidden[-1]
        out = []
        for b, (ids, word_of) in enumerate(info["rows"]):
            res = []
            for wi in masked[b]:
                ks = [k for k, wo in enumerate(word_of) if wo == wi]
                if not ks:
                    raise DataError(f"episode {stimuli.episode}, window {int(idx[b])}: word {wi} "
                                    "has no tokens (truncated?)")
                pos = torch.tensor([info["text_start"] + k - 1 for k in ks], device=last.device)
                logits = self.lm_head(last[b, pos].to(self.lm_head.weight.dtype)).float().cpu()
                res.append((logits, torch.tensor([ids[k] for k in ks], dtype=torch.int64)))
            out.append(res)
        return out


def fallback_pixels(frames: torch.Tensor, size: int, mean=CLIP_MEAN, std=CLIP_STD, bgr: bool = False) -> torch.Tensor:
    """uint8 (N, S, S, 3) -> float32 (N, 3, size, size): bilinear (antialiased) resize, /255, (x - mean) / std,
    then the channels reversed to BGR if ``bgr`` (TVP)."""
    x = frames.permute(0, 3, 1, 2).float() / 255.0
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    m = torch.tensor(mean, dtype=torch.float32)[None, :, None, None]
    s = torch.tensor(std, dtype=torch.float32)[None, :, None, None]
    x = (x - m) / s
    return x.flip(1) if bgr else x


def load_hf(path: str, frames: int) -> HFBackbone:
    """Load model (by ``config.architectures[0]``), tokenizer and optional image processor from ``path``."""
    tf = _transformers()
    src = str(path)
    local = Path(src).is_dir()
    if not local and (Path(src).exists() or src.startswith((".", "/"))):
        raise ConfigError(f"model.checkpoint: {src} is not a directory written by save_pretrained")
    try:
        config = tf.AutoConfig.from_pretrained(src, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.checkpoint: cannot read a Hugging Face config from {src!r} (a local "
                          f"save_pretrained directory, or a model in the local HF cache; nothing is "
                          f"downloaded): {str(e).splitlines()[0]}") from None
    if config.model_type not in SUPPORTED:
        raise ConfigError(f"model.checkpoint: {src} holds a {config.model_type!r} model; the hf backbone "
                          f"supports model types {', '.join(SUPPORTED)}")
    arch = (config.architectures or [SUPPORTED[config.model_type][0]])[0]
    if arch not in SUPPORTED[config.model_type]:
        arch = SUPPORTED[config.model_type][0]
    try:
        model = getattr(tf, arch).from_pretrained(src, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.checkpoint: cannot load {arch} weights from {src}: "
                          f"{str(e).splitlines()[0]}") from None
    if local and not any((Path(src) / f).is_file() for f in TOKENIZER_FILES):
        raise ConfigError(f"model.checkpoint: {src} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}; "
                          "save the model's tokenizer into the same directory)")
    try:
        tokenizer = tf.AutoTokenizer.from_pretrained(src, local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(f"model.checkpoint: {src} has no usable tokenizer (save it with the model): "
                          f"{str(e).splitlines()[0]}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"model.checkpoint: the tokenizer in {src} is not a fast tokenizer (word offsets "
                          "are needed to find each word's tokens)")
    n_special = len(set(tokenizer.all_special_ids))
    if not n_special < len(tokenizer) <= config.vocab_size:
        raise ConfigError(f"model.checkpoint: the tokenizer in {src} has {len(tokenizer)} tokens "
                          f"({n_special} special) but the model's vocabulary has {config.vocab_size}")
    image_processor = None
    if not local or (Path(src) / "preprocessor_config.json").is_file():
        try:
            image_processor = tf.AutoImageProcessor.from_pretrained(src, local_files_only=True)
        except (OSError, ValueError):
            image_processor = None
    if image_processor is None:
        log.warning("hf backbone: no image processor in %s; frames are resized and normalised as documented "
                    "(brainalign.models.hf)", src)
    return HFBackbone(model, tokenizer, image_processor, frames=frames, source=src)


def build_hf(model_cfg, windows_cfg) -> HFBackbone:
    """Registry factory for ``model.backbone: hf``."""
    if not model_cfg.checkpoint:
        raise ConfigError("model.checkpoint: the hf backbone needs a directory written by save_pretrained "
                          "(model + tokenizer [+ image processor])")
    return load_hf(model_cfg.checkpoint, int(windows_cfg.frames))
