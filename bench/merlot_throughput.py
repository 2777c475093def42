"""Throughput of the merlot_reserve backbone (random weights) at the original's input sizes: windows per second.

    python bench/merlot_throughput.py [--sizes base large] [--context 1.49] [--batch 4] [--repeats 2]
                                      [--device cpu|cuda] [--precision float32|bfloat16]

A window is what extraction feeds per TR (brainalign.models.merlot.layout, default layout ``centred``): the
5-s segment(s) around the window, one 192 x 320 frame per segment (60 pooled vision tokens), 3 sub-segments
per segment given as 6 AUDIOSPAN slots of a 60-frame clip or as the words spoken in them (~2.7 words/s) or one
MASK, per the condition (joint and no_vision: two passes). Each condition is timed from scratch (vision and audio encoders
included: the per-episode cache is cleared before every repeat) and with the encoders' outputs cached
(what the 2nd..6th condition of an episode costs). Printed: windows/s per size and condition, and each
condition's time relative to joint. Timing only; no assertions. On CUDA (``--device cuda --precision
bfloat16``) the same code runs under bf16 autocast.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "toolkit"))
from brainalign.models.merlot.backbone import MerlotBackbone  # noqa: E402
from brainalign.models.merlot.layout import frame_times, plan_window  # noqa: E402
from brainalign.models.merlot.model import MerlotConfig, build_model, count_parameters  # noqa: E402
from brainalign.stimuli.episode import EpisodeStimuli  # noqa: E402
from brainalign.stimuli.transcript import Word  # noqa: E402

CONDITIONS = ("joint", "no_vision", "no_language", "no_audio", "vision_only", "language_only")


def stimuli(cfg, n_windows: int, context: float, tr: float = 1.49, seed: int = 0) -> EpisodeStimuli:
    rng = np.random.default_rng(seed)
    ends = 10.0 + tr * np.arange(1, n_windows + 1)
    windows = np.stack([ends - context, ends], 1)
    n_seg = frame_times(windows).shape[1]
    seconds = float(ends[-1]) + 1.0
    t, words = 0.0, []
    while t < seconds:                                   # ~2.7 words per second of speech
        t += float(rng.exponential(0.37))
        words.append(Word(f"w{len(words) % 997}", t, 0.25))
    return EpisodeStimuli("bench", tr, windows,
                          rng.integers(0, 256, (n_windows, n_seg, *cfg.image_size, 3), dtype=np.uint8),
                          [[] for _ in range(n_windows)], np.zeros((n_windows, 0), np.float32), 22050,
                          waveform=(0.1 * rng.standard_normal(int(seconds * 22050))).astype(np.float32),
                          transcript=words)


def tokenize(text):          # BPE stand-in: ~1.2 tokens per word, ids in the vocabulary
    out = []
    for w in text.split():
        h = hash(w) % 30000
        out += [100 + h] + ([100 + (h * 7) % 30000] if h % 5 == 0 else [])
    return out


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", nargs="+", default=["base", "large"])
    ap.add_argument("--conditions", nargs="+", default=list(CONDITIONS))
    ap.add_argument("--context", type=float, default=1.49, help="window length in s (windows.context)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="float32", choices=["float32", "bfloat16", "float16"])
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    plan = plan_window(args.context)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, {args.precision}; "
          f"window {args.context} s = {plan.n_segments} segment(s), {plan.n_context} context + "
          f"{plan.n_target} target sub-segment(s); batch {args.batch}")
    for size in args.sizes:
        cfg = MerlotConfig.named(size)
        torch.manual_seed(0)
        bb = MerlotBackbone(build_model(cfg), tokenize).to(device)
        bb.precision = args.precision
        st = stimuli(cfg, args.batch, args.context)
        print(f"MERLOT Reserve {size}: {count_parameters(bb.model) / 1e6:.1f} M parameters, frames "
              f"{cfg.image_size[0]}x{cfg.image_size[1]}")
        bb.encode(st, slice(None), "joint")              # warm-up
        full, cached = {}, {}
        for c in args.conditions:
            tf, tc = [], []
            for _ in range(args.repeats):
                bb._cache_key = None                     # encoders from scratch
                sync(device)
                t0 = time.perf_counter()
                bb.encode(st, slice(None), c)
                sync(device)
                tf.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                bb.encode(st, slice(None), c)            # encoders cached
                sync(device)
                tc.append(time.perf_counter() - t0)
            full[c], cached[c] = min(tf), min(tc)
            batch, _, _ = bb.prepare(st, slice(None), c)
            print(f"  {c:<14s} slots {batch.tokens.shape[1]:3d}: {args.batch / full[c]:6.2f} windows/s with "
                  f"encoders, {args.batch / cached[c]:7.2f} windows/s encoders cached; time vs joint "
                  f"{full[c] / full['joint'] if 'joint' in full else float('nan'):.2f} / "
                  f"{cached[c] / cached['joint'] if 'joint' in cached else float('nan'):.2f}")
        enc = full["joint"] - cached["joint"] if "joint" in full else max(full.values()) - max(cached.values())
        total = sum(cached.values()) + enc
        print(f"  all {len(args.conditions)} conditions of a window (encoders once): "
              f"{args.batch / total:.2f} windows/s")


if __name__ == "__main__":
    main()
