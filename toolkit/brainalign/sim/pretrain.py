"""A brief, seeded masked-word pretraining of the tiny demo model on simulated clips.

The clips come from the same generative process as the demo episodes (:mod:`.stimuli`) but from their own
seed stream, so the analysed episodes stay unseen (``brainalign mlm`` scores held-out material). Each clip is
cut into TR windows exactly as ``extract`` cuts an episode (:mod:`brainalign.stimuli.windows`); frames go
through the same yuv420p round trip and resize as decoded video. Each step takes PRETRAIN_BATCH windows
that have words, masks PRETRAIN_MASK of their words (at least one), drops the frames of the whole batch
with probability 1/2 (``joint`` and ``no_vision`` inputs, so both conditions are in-distribution), and
minimises the cross-entropy of the masked words under the model's tied-embedding head
(``TinyMultimodal.token_logits`` at the word positions, the head ``brainalign mlm`` scores). The audio track
is independent of everything, so it is left out of training (its tokens keep their seeded weights and stay
context at extraction). AdamW, linear warm-up then linear decay, one torch thread (bit-reproducible on a
machine, and faster than two on a tiny model); everything seeded.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..log import get_logger, progress
from ..stimuli.transcript import Word
from ..stimuli.windows import frame_times, window_bounds, window_words
from .stimuli import make_episode

log = get_logger("simulate")

PRETRAIN_CLIPS = 8
PRETRAIN_BATCH = 32
PRETRAIN_MASK = 0.25
PRETRAIN_LR = 1e-2
PRETRAIN_EMBED_LR = 2e-2        # the tied word embedding starts at N(0, 1): logits ~ N(0, hidden) to shrink first
PRETRAIN_WARMUP = 20


def decoded_like(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 (n, size, size, 3): frames after an h264-style yuv420p round trip and PyAV's resize (what
    ``stimuli.video.sample_frames`` returns for a written episode, up to compression)."""
    import av

    out = np.empty((len(frames), size, size, 3), np.uint8)
    for i, img in enumerate(frames):
        f = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24").reformat(format="yuv420p")
        out[i] = f.reformat(width=size, height=size, format="rgb24").to_ndarray()
    return out


def clip_windows(ep, tr: float, n_trs: int, n_frames: int, size: int) -> dict:
    """TR windows of one in-memory Episode: frames uint8 (n, F, S, S, 3) and words [[str]]."""
    windows = window_bounds(n_trs, tr, tr)
    times = frame_times(windows, n_frames, ep.duration)
    idx = np.minimum((times * ep.fps).astype(np.int64), len(ep.frames) - 1)
    uniq, inv = np.unique(idx, return_inverse=True)
    frames = decoded_like(ep.frames[uniq], size)[inv.reshape(idx.shape)]
    words = window_words([Word(w, o, d) for w, o, d, _ in ep.words], windows)
    return {"frames": frames, "words": words}


def training_clips(sim, tr: float, windows_cfg, successors, n_clips: int = PRETRAIN_CLIPS) -> dict:
    """``n_clips`` simulated clips of simulate.trs_per_run TRs, windowed; seeds [simulate.seed, 3, k]."""
    parts = []
    for k in range(n_clips):
        rng = np.random.default_rng([sim.seed, 3, k])
        ep = make_episode(sim.trs_per_run, tr, sim.fps, sim.frame_size, 8000, rng, successors)   # audio unused
        parts.append(clip_windows(ep, tr, sim.trs_per_run, windows_cfg.frames, windows_cfg.image_size))
    return {"frames": np.concatenate([p["frames"] for p in parts]), "words": [w for p in parts for w in p["words"]]}


def pretrain_tiny(module, data: dict, steps: int, seed: int) -> list[float]:
    """Train ``module`` (TinyMultimodal) in place for ``steps`` masked-word steps; returns the loss per step."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            return _train(module, data, steps, seed)
    finally:
        torch.set_num_threads(threads)


def _train(module, data: dict, steps: int, seed: int) -> list[float]:
    from ..models.tiny import MASK, PAD, TYPE_LANGUAGE, token_ids

    rng = np.random.default_rng([int(seed), 11])
    torch.manual_seed(int(seed))
    vocab = module.spec.vocab
    rows = [i for i, w in enumerate(data["words"]) if w]
    ids_of = {i: token_ids(data["words"][i], vocab) for i in rows}
    embed = [p for n, p in module.named_parameters() if n == "tok_embed.weight"]
    rest = [p for n, p in module.named_parameters() if n != "tok_embed.weight"]
    opt = torch.optim.AdamW([{"params": rest}, {"params": embed, "lr": PRETRAIN_EMBED_LR}], lr=PRETRAIN_LR,
                            weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / PRETRAIN_WARMUP) * max(0.05, 1 - s / max(steps, 1)))
    module.train()
    losses = []
    for _ in progress(range(steps), desc="simulate: pretraining the tiny model", unit="step"):
        batch = rng.choice(rows, size=min(PRETRAIN_BATCH, len(rows)), replace=False)
        width = max(len(ids_of[i]) for i in batch)
        ids = torch.full((len(batch), width), PAD, dtype=torch.int64)
        targets, where = [], []
        for b, i in enumerate(batch):
            r = ids_of[i]
            ids[b, : len(r)] = torch.tensor(r)
            k = max(1, int(round(PRETRAIN_MASK * len(r))))
            for w in rng.choice(len(r), size=k, replace=False):
                targets.append(r[w])
                where.append((b, int(w)))
                ids[b, w] = MASK
        with_vision = rng.random() < 0.5
        out = module(frames=torch.from_numpy(data["frames"][batch]) if with_vision else None, ids=ids,
                     batch=len(batch))
        start = int(torch.nonzero(out.types == TYPE_LANGUAGE)[0, 0])
        bi = torch.tensor([b for b, _ in where])
        pos = torch.tensor([start + w for _, w in where])
        logits = module.token_logits(out.hidden[-1, bi, pos])
        loss = F.cross_entropy(logits, torch.tensor(targets))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    module.eval()
    if losses:
        k = max(1, len(losses) // 10)
        log.info("simulate: pretrained the tiny model for %d steps; masked-word loss %.2f -> %.2f",
                 steps, np.mean(losses[:k]), np.mean(losses[-k:]))
    return losses

