"""Fine-tune the backbone on TVQA-format multiple-choice video QA (``brainalign finetune CONFIG``).

Model (tiny backbone): for each of the 5 answers the sequence ``CLS + frames + words`` with
``windows.frames`` frames sampled evenly inside the question's ``ts`` and words = the subtitle words whose
onset lies in ``ts`` + the question + the answer (lower-cased, punctuation dropped, at most MAX_WORDS,
subtitle words cut first). The last layer's modality-balanced pooled state (tiny.pool) -> Linear(hidden, 1)
is the answer's logit; softmax over the 5 answers, cross-entropy. Audio is not used (TVQA ships none), so
the audio embedding is frozen and kept as it was.

Training: AdamW (weight decay on matrices only), linear warmup over ``finetune.warmup_steps`` then linear
decay to 0, autocast at ``finetune.precision`` (a GradScaler for float16 on CUDA). Under torchrun
(WORLD_SIZE/RANK/LOCAL_RANK) or srun (SLURM_NTASKS/SLURM_PROCID/SLURM_LOCALID) it runs as
DistributedDataParallel (gloo on CPU, nccl on CUDA); ``finetune.batch_size`` is the GLOBAL batch, split
evenly over ranks, and a DistributedSampler seeded by ``finetune.seed + epoch`` makes the union of the
ranks' batches equal to the one-process batch, so results do not depend on the number of ranks (up to
float summation order).

Outputs under ``{output}/finetune/`` (rank 0 writes, each file atomically):

* ``checkpoint.pt``  after every epoch: model + head, optimizer, scheduler, scaler, epochs done, RNG
  states, metric history, and the stage key (brainalign.stagekeys); a killed run resumes
  after its last complete epoch (a checkpoint of another key is refused: use --force).
* ``model.pt``       the fine-tuned backbone (tiny.save_checkpoint; ``model.checkpoint`` loads it for
  extraction), or ``finetune.output`` when set; ``qa_head.pt`` the answer head (state dict).
* ``metrics.json``   per-epoch train loss, val loss and val accuracy, chance level, provenance.

Other backbones (the backbone registry's ``build_qa_model`` chooses by ``model.backbone``; heads in
:mod:`.finetune_heads`):
``merlot_reserve`` -- the original's TVQA head: 7 segments of 4.667 s around ``ts`` (whatever ``windows.frames``),
the joint transformer's state at a MASK token after "ts + question + answer" (segment 0) -> Linear -> 1
logit, once with the clip's audio (``audio/{vid_name}.*``) and once with the subtitles of each segment as the
segments' input; loss = the sum of the two passes' cross-entropies, prediction = argmax of the summed
softmaxes; saved as a converted .pt (``model.pt``). ``hf`` (GIT / TVP) -- mean last hidden state ->
Linear -> 1 logit; saved with save_pretrained into the directory ``model/`` (+ ``qa_head.pt``). Either
loads back through ``model.checkpoint`` for extraction.
"""
from __future__ import annotations

import functools
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from . import tvqa
from .errors import ConfigError, DataError
from .finetune_heads import QAModel, qa_loss, qa_predict
from .h5io import atomic_path
from .interrupt import Interrupted
from .launch import this_task
from .log import get_logger, progress
from .paths import finetune_paths
from .models.registry import build_qa_model
from .models.tiny import PAD, token_ids

log = get_logger("finetune")

MAX_WORDS = 96                  # words per answer sequence (subtitle words are cut first)
CACHE_BYTES = 512 * 2 ** 20     # decoded frames of a split are kept in memory when they fit in this
CHECKPOINT_FORMAT = "brainalign-finetune/1"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---- data ----------------------------------------------------------------------------------------

class TVQADataset(Dataset):
    """Items of one TVQA split as model inputs.

    ``ds[i]`` -> (frames uint8 (n_frames, size, size, 3) or None, ids list of 5 int lists, label int).
    ``use_frames`` / ``use_subtitles`` False drop that modality (ablations). The rows are the tiny
    backbone's (:meth:`words` hashed to ids) unless :meth:`set_encoder` gives another backbone's
    ``encode_answers(sub, question, answers)`` (see :mod:`brainalign.finetune_heads`).
    """

    def __init__(self, root, items, n_frames: int, size: int, vocab: int, fps: float = tvqa.TVQA_FPS,
                 max_words: int = MAX_WORDS, use_frames: bool = True, use_subtitles: bool = True):
        self.root, self.items = Path(root), list(items)
        self.n_frames, self.size, self.vocab, self.fps, self.max_words = n_frames, size, vocab, fps, max_words
        self.use_frames, self.use_subtitles = use_frames, use_subtitles
        self.encoder, self.pad, self.builder = None, PAD, None
        self._subs: dict = {}        # vid_name -> subtitle words (stimuli Word list)
        self._cues: dict = {}        # vid_name -> subtitle cues (stimuli.transcript.Cue list)
        self._files: dict = {}       # vid_name -> sorted frame files
        per_item = n_frames * size * size * 3 if use_frames else 0
        self._cache = {} if per_item * len(self.items) <= CACHE_BYTES else None

    def __len__(self):
        return len(self.items)

    def set_item_builder(self, builder, pad: int, item_bytes: int = 0) -> None:
        """Items from ``builder(dataset, QAItem) -> (model inputs, 5 rows)`` (a QA model's ``item_inputs``,
        e.g. MERLOT's segments, frames and audio), padded with ``pad``; ``item_bytes`` sizes the cache."""
        self.builder, self.pad = builder, int(pad)
        self._cache = {} if item_bytes * len(self.items) <= CACHE_BYTES else None

    def frame_files(self, it: tvqa.QAItem) -> list:
        if it.vid_name not in self._files:
            self._files[it.vid_name] = tvqa.frame_files(self.root, it.vid_name)
        return self._files[it.vid_name]

    def transcript(self, it: tvqa.QAItem) -> list:
        """The clip's subtitle words (stimuli Word list, raw text)."""
        if it.vid_name not in self._subs:
            from .stimuli.transcript import read_transcript

            self._subs[it.vid_name] = read_transcript(tvqa.subtitle_path(self.root, it.vid_name))
        return self._subs[it.vid_name]

    def cues(self, it: tvqa.QAItem) -> list:
        """The clip's subtitle cues (stimuli.transcript.Cue list, text as written)."""
        if it.vid_name not in self._cues:
            from .stimuli.transcript import read_srt_cues

            path = tvqa.subtitle_path(self.root, it.vid_name)
            if not path.is_file():
                raise DataError(f"TVQA clip {it.vid_name}: subtitles not found: {path}")
            self._cues[it.vid_name] = read_srt_cues(path)
        return self._cues[it.vid_name]

    def set_encoder(self, encoder, pad: int) -> None:
        """Rows from ``encoder(sub words, question words, 5 answer word lists) -> 5 int lists``, padded with
        ``pad`` (a QA model's ``encode_answers`` / ``pad_id``)."""
        self.encoder, self.pad = encoder, int(pad)
        if self._cache is not None:
            self._cache.clear()

    def subtitle_words(self, it: tvqa.QAItem) -> list:
        """Normalised subtitle words whose onset lies in the question's ts ([] without subtitles)."""
        if not self.use_subtitles:
            return []
        return tvqa.subtitle_words(self.transcript(it), it.ts)

    def words(self, it: tvqa.QAItem) -> list:
        """5 word lists: subtitle words in ts + question + answer k."""
        sub = self.subtitle_words(it)
        q = tvqa.normalise_words(it.question)
        out = []
        for a in it.answers:
            qa = q + tvqa.normalise_words(a)
            qa = qa[-self.max_words:]
            out.append(sub[: self.max_words - len(qa)] + qa)
        return out

    def __getitem__(self, i):
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        out = self._load(i)
        if self._cache is not None:
            self._cache[i] = out
        return out

    def _load(self, i):
        it = self.items[i]
        if self.builder is not None:
            inputs, rows = self.builder(self, it)
            return inputs, rows, it.answer_idx
        frames = None
        if self.use_frames:
            frames = tvqa.load_frames(self.frame_files(it), it.ts, self.n_frames, self.size, self.fps)
        if self.encoder is None:
            rows = [token_ids(w, self.vocab) for w in self.words(it)]
        else:
            rows = self.encoder(self.subtitle_words(it), tvqa.normalise_words(it.question),
                                [tvqa.normalise_words(a) for a in it.answers])
        return frames, rows, it.answer_idx


def collate(batch, pad: int = PAD):
    """-> frames uint8 (B, F, S, S, 3) or None, ids int64 (B, 5, W) ``pad``-padded, labels int64 (B,).
    Model inputs with a ``stack(items, width)`` classmethod (e.g. MerlotQAInputs) are stacked by it."""
    width = max(1, max(len(r) for b in batch for r in b[1]))
    first = batch[0][0]
    if first is None:
        frames = None
    elif hasattr(type(first), "stack"):
        frames = type(first).stack([b[0] for b in batch], width)
    else:
        frames = torch.from_numpy(np.stack([b[0] for b in batch]))
    ids = torch.full((len(batch), tvqa.N_ANSWERS, width), pad, dtype=torch.int64)
    for i, (_, rows, _) in enumerate(batch):
        for k, r in enumerate(rows):
            ids[i, k, : len(r)] = torch.tensor(r, dtype=torch.int64)
    return frames, ids, torch.tensor([b[2] for b in batch], dtype=torch.int64)


def attach_model(ds: TVQADataset, model) -> TVQADataset:
    """Let ``model`` build the dataset's items: its ``item_inputs`` (MERLOT: segments, frames, audio) or its
    ``encode_answers`` rows; the tiny model's hashed word rows otherwise."""
    if getattr(model, "item_inputs", None) is not None:
        ds.set_item_builder(model.item_inputs, model.pad_id, model.item_bytes())
    elif model.encode_answers is not None:
        ds.set_encoder(model.encode_answers, model.pad_id)
    return ds


def collate_for(ds):
    """The collate function for a dataset (its rows' padding id)."""
    return functools.partial(collate, pad=getattr(ds, "pad", PAD))


def load_split(cfg, split: str, **kw) -> TVQADataset:
    """The validated TVQA split ``train`` / ``val`` of ``finetune.data`` as a dataset."""
    root = cfg.path(cfg.finetune.data)
    if not root.is_dir():
        raise ConfigError(f"finetune.data: TVQA directory not found: {root}")
    items = tvqa.read_tvqa(root / tvqa.SPLIT_FILES[split])
    tvqa.check_clips(root, items, split)
    return TVQADataset(root, items, cfg.windows.frames, cfg.windows.image_size, cfg.model.tiny.vocab,
                       fps=float(cfg.finetune.fps), max_words=int(cfg.finetune.max_words), **kw)


# ---- model ---------------------------------------------------------------------------------------

# ---- distributed ---------------------------------------------------------------------------------

@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False     # this module initialised the process group (and destroys it)


def dist_env() -> tuple:
    """(rank, world, local_rank) from the launcher's environment (torchrun's, srun's: brainalign.launch), else
    (0, 1, 0)."""
    task = this_task()
    return (task.rank, task.size, task.local_rank) if task.size > 1 else (0, 1, 0)


def _slurm_master() -> str:
    nodes = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST") or ""
    if not nodes:
        return "127.0.0.1"
    import subprocess

    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True, timeout=30)
        if out.returncode == 0 and out.stdout.split():
            return out.stdout.split()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    return nodes.split(",")[0]


def init_distributed(device: torch.device) -> DistInfo:
    """Join (or create) the process group for the launcher's environment; a no-op for one process."""
    rank, world, local = dist_env()
    if world == 1:
        return DistInfo()
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local, False)
    task = this_task()
    os.environ.setdefault("MASTER_ADDR", _slurm_master() if task.launcher == "srun" else "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + int(task.job_id or "0") % 2000))
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=rank, world_size=world)
    log.info("finetune: rank %d of %d joined (%s, master %s:%s)", rank, world, backend,
             os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"])
    return DistInfo(rank, world, local, True)


def _reduce(values, info: DistInfo, device) -> list:
    """Sum a list of floats over ranks."""
    if info.world == 1:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


# ---- training ------------------------------------------------------------------------------------

def lr_lambda(warmup: int, total: int):
    """Linear warmup over ``warmup`` steps to 1, then linear decay to 0 at ``total`` steps."""
    def f(step):
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))
    return f


def _autocast(device, precision):
    if precision == "float32":
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


@torch.no_grad()
def evaluate(model: nn.Module, ds: Dataset, info: DistInfo, device, precision="float32", batch_size=32):
    """(accuracy, mean cross-entropy) over ``ds``; ranks take every world-th item and sum their counts."""
    model.eval()
    idx = list(range(info.rank, len(ds), info.world))
    loader = DataLoader(Subset(ds, idx), batch_size=batch_size, shuffle=False, collate_fn=collate_for(ds))
    correct = loss = 0.0
    for frames, ids, labels in loader:
        frames = None if frames is None else frames.to(device)
        with _autocast(device, precision):
            logits = model(frames, ids.to(device))
        labels = labels.to(device)
        correct += float((qa_predict(logits) == labels).sum())
        loss += float(qa_loss(logits, labels, reduction="sum"))
    correct, loss, n = _reduce([correct, loss, len(idx)], info, device)
    return correct / n, loss / n


def _rng_state() -> dict:
    key, state, pos, has_gauss, cached = np.random.get_state()
    out = {"torch": torch.get_rng_state(), "python": random.getstate(),
           "numpy": {"key": key, "state": torch.from_numpy(state.astype(np.int64)), "pos": int(pos),
                     "has_gauss": int(has_gauss), "cached": float(cached)}}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def _set_rng_state(s: dict):
    torch.set_rng_state(s["torch"])
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in s["python"]))
    n = s["numpy"]
    np.random.set_state((n["key"], n["state"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def train(cfg, model: QAModel, train_ds: TVQADataset, val_ds: TVQADataset, workdir: Path, info: DistInfo,
          device: torch.device, fp: str, force: bool = False, on_epoch_end=None) -> list:
    """Train ``model`` in place for ``finetune.epochs`` epochs, resuming from ``workdir/checkpoint.pt``.

    ``on_epoch_end(epoch, record)`` (epoch 1-based) is called on every rank after the epoch's checkpoint
    is on disk. Returns the per-epoch records (dicts).
    """
    ft = cfg.finetune
    if ft.batch_size < info.world or ft.batch_size % info.world:
        raise ConfigError(f"finetune.batch_size: the global batch {ft.batch_size} must be a multiple of the "
                          f"number of ranks ({info.world})")
    if ft.epochs < 1:
        raise ConfigError(f"finetune.epochs: must be >= 1, got {ft.epochs}")
    per_rank = ft.batch_size // info.world
    sampler = DistributedSampler(train_ds, num_replicas=info.world, rank=info.rank, shuffle=True, seed=ft.seed)
    loader = DataLoader(train_ds, batch_size=per_rank, sampler=sampler, collate_fn=collate_for(train_ds),
                        num_workers=int(getattr(ft, "num_workers", 0)))
    total = ft.epochs * len(loader)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in params if p.ndim >= 2 and n != "backbone.type_embed"],
               "weight_decay": ft.weight_decay},
              {"params": [p for n, p in params if not (p.ndim >= 2 and n != "backbone.type_embed")],
               "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=ft.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(ft.warmup_steps, total))
    scaler = torch.amp.GradScaler(device.type, enabled=ft.precision == "float16" and device.type == "cuda")

    ckpt = workdir / "checkpoint.pt"
    history, start = [], 0
    if ckpt.is_file() and not force:
        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
        except Exception as e:
            raise DataError(f"finetune checkpoint {ckpt} cannot be read ({type(e).__name__}); "
                            "delete it or pass --force") from None
        if state.get("format") != CHECKPOINT_FORMAT or state.get("fingerprint") != fp:
            raise ConfigError(f"finetune: {ckpt} was written for another config or data set; "
                              "pass --force to start over")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        history, start = list(state["history"]), int(state["epoch"])
        log.info("finetune: resuming after epoch %d of %d from %s", start, ft.epochs, ckpt)
    ddp = model
    if info.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    saved = [start]                    # epochs in checkpoint.pt
    try:
        _epochs(cfg, model, ddp, loader, sampler, opt, sched, scaler, val_ds, info, device, fp, ckpt, history, start,
                per_rank, on_epoch_end, saved)
    except Interrupted as e:
        done = saved[0]
        e.kept = (f"{done} of {ft.epochs} epochs finished, the last saved in {ckpt}; a re-run resumes after epoch "
                  f"{done}" if done else f"no epoch of {ft.epochs} finished yet (nothing to keep)")
        raise
    return history


def _epochs(cfg, model, ddp, loader, sampler, opt, sched, scaler, val_ds, info, device, fp, ckpt, history, start,
            per_rank, on_epoch_end, saved):
    """The epochs ``start`` .. ``finetune.epochs`` of :func:`train` (a checkpoint after each)."""
    ft = cfg.finetune
    for epoch in range(start, ft.epochs):
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        model.train()
        loss_sum = n_seen = 0.0
        for frames, ids, labels in progress(loader, desc=f"finetune epoch {epoch + 1}/{ft.epochs}", unit="batch",
                                           disable=True if info.rank else None):
            frames = None if frames is None else frames.to(device, non_blocking=True)
            ids, labels = ids.to(device), labels.to(device)
            with _autocast(device, ft.precision):
                logits = ddp(frames, ids)
            loss = qa_loss(logits, labels)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            loss_sum += float(loss.detach()) * len(labels)
            n_seen += len(labels)
        loss_sum, n_seen = _reduce([loss_sum, n_seen], info, device)
        acc, val_loss = evaluate(model, val_ds, info, device, ft.precision, batch_size=max(per_rank, 16))
        rec = {"epoch": epoch + 1, "train_loss": loss_sum / max(n_seen, 1), "val_loss": val_loss,
               "val_accuracy": acc, "lr": sched.get_last_lr()[0], "seconds": time.perf_counter() - t0}
        history.append(rec)
        log.info("finetune epoch %d/%d: train loss %.4f, val loss %.4f, val accuracy %.3f (%.1f s)",
                 epoch + 1, ft.epochs, rec["train_loss"], val_loss, acc, rec["seconds"])
        if info.rank == 0:
            payload = {"format": CHECKPOINT_FORMAT, "fingerprint": fp, "epoch": epoch + 1,
                       "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                       "scaler": scaler.state_dict(), "rng": _rng_state(), "history": history}
            with atomic_path(ckpt) as tmp:
                torch.save(payload, tmp)
        saved[0] = epoch + 1
        if info.world > 1:
            dist.barrier()
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, rec)


def run_finetune(cfg, force: bool = False, *, use_frames: bool = True, use_subtitles: bool = True,
                 on_epoch_end=None) -> Path:
    """Fine-tune on ``finetune.data`` and write the backbone checkpoint; returns its path.

    Skipped while ``metrics.json`` (written last) holds the current stage key (finetune.*, the backbone
    settings, the TVQA files and the initial checkpoint: brainalign.stagekeys; unless ``force``). With
    ``use_frames`` / ``use_subtitles`` False that modality is left out (ablation studies).
    """
    from .models.registry import resolve_device
    from .provenance import provenance

    torch.manual_seed(cfg.finetune.seed)
    work, model_path = finetune_paths(cfg)
    metrics_path = work / "metrics.json"
    inputs = {"frames": use_frames, "subtitles": use_subtitles}
    if not (use_frames or use_subtitles):
        raise ConfigError("finetune: an answer sequence needs frames or subtitles (both were left out)")
    train_ds = load_split(cfg, "train", use_frames=use_frames, use_subtitles=use_subtitles)
    val_ds = load_split(cfg, "val", use_frames=use_frames, use_subtitles=use_subtitles)
    from .stagecheck import stage_check

    key = stage_check(cfg, "finetune", force, values={"derived.inputs": inputs})
    if key.current:
        return model_path
    fp = key.key                     # checkpoint.pt of another key (config, data, init weights) is refused

    rank, world, local = dist_env()
    device = resolve_device(cfg.finetune.device, "finetune.device")
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local % torch.cuda.device_count())
    info = init_distributed(device)
    try:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        model = build_qa_model(cfg).to(device)
        for ds in (train_ds, val_ds):
            attach_model(ds, model)
        if not use_frames:                  # unused without frames (and DDP requires every trained one used)
            model.freeze_vision()
        log.info("finetune: %d train / %d val questions from %s; %s on %s, %d rank(s), global batch %d",
                 len(train_ds), len(val_ds), train_ds.root, cfg.model.backbone, device, info.world,
                 cfg.finetune.batch_size)
        if force and info.rank == 0:
            (work / "checkpoint.pt").unlink(missing_ok=True)
        if info.world > 1:
            dist.barrier()
        history = train(cfg, model, train_ds, val_ds, work, info, device, fp, force=False,
                        on_epoch_end=on_epoch_end)
        if info.rank == 0:
            model.save(model_path)
            if hasattr(model, "head"):      # tiny / hf: the answer head is not part of the backbone's format
                with atomic_path(work / "qa_head.pt") as tmp:
                    torch.save({k: v.detach().cpu() for k, v in model.head.state_dict().items()}, tmp)
            best = max(history, key=lambda r: r["val_accuracy"])
            metrics = {"format": "brainalign-finetune-metrics/1", "complete": True, "model": str(model_path),
                       "backbone": cfg.model.backbone, "chance": 1.0 / tvqa.N_ANSWERS, "inputs": inputs,
                       "n_train": len(train_ds), "n_val": len(val_ds), "world_size": info.world,
                       "global_batch": cfg.finetune.batch_size, "epochs": history,
                       "final_val_accuracy": history[-1]["val_accuracy"],
                       "best_val_accuracy": best["val_accuracy"], "best_epoch": best["epoch"],
                       "fingerprint": fp, "provenance": provenance(cfg.text, "finetune"), **key.json_fields()}
            with atomic_path(metrics_path) as tmp:
                tmp.write_text(json.dumps(metrics, indent=1))
        if info.world > 1:
            dist.barrier()
    finally:
        if info.owns_group:
            dist.destroy_process_group()
    return model_path


# ---- local multi-process launch (tests, one multi-GPU machine) -------------------------------------

def _spawned(rank: int, world: int, port: int, cfg, force: bool, threads: int):
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(threads)
    run_finetune(cfg, force=force)


def run_finetune_spawn(cfg, nprocs: int, force: bool = False, port: int | None = None, threads: int = 1) -> Path:
    """Run :func:`run_finetune` as ``nprocs`` DDP processes on this machine (torch.multiprocessing spawn)."""
    import socket

    import torch.multiprocessing as mp

    if port is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    mp.spawn(_spawned, args=(nprocs, port, cfg, force, threads), nprocs=nprocs, join=True)
    return finetune_paths(cfg)[1]
