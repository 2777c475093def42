"""Throughput of MERLOT Reserve (random weights) at the original input sizes: windows per second.

    python bench/merlot_throughput.py [--size base] [--batch 4] [--frames 1 2] [--words 20] [--repeats 3]

A window = ``frames`` frames of 192 x 320 px (60 pooled vision tokens each), ``words`` BPE tokens and one
1.6 s audio clip (6 AUDIOSPAN tokens); the joint condition (all encoders run). Timing only; no assertions.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "toolkit"))
from brainalign.models.merlot.inputs import pack_windows  # noqa: E402
from brainalign.models.merlot.model import MerlotConfig, build_model  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="base")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--frames", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--words", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    cfg = MerlotConfig.named(args.size)
    torch.manual_seed(0)
    model = build_model(cfg, args.device).eval()
    print(f"MERLOT Reserve {args.size}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    for T in args.frames:
        g = torch.Generator().manual_seed(1)
        frames = torch.rand(args.batch, T, *cfg.image_size, 3, generator=g)
        audio = torch.randn(args.batch, 1, cfg.audio_seq_length, cfg.num_mels + 1, generator=g)
        ids = [[100 + (7 * i + b) % 30000 for i in range(args.words)] for b in range(args.batch)]
        batch = pack_windows(ids, frames, audio, cfg.audio_token_length)
        kw = {k: (v.to(args.device) if v is not None else None) for k, v in batch.model_kwargs().items()}
        with torch.no_grad():
            model(**kw)                                   # warm-up
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                model(**kw)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            vis, aud = model.vision_tokens(kw["frames"]), model.audio_tokens(kw["audio"])
            joint_times = []
            for _ in range(args.repeats):                # joint transformer only (encoders cached)
                t0 = time.perf_counter()
                model(tokens=kw["tokens"], audio_ptr=kw["audio_ptr"], vision_tokens=vis, audio_tokens=aud)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                joint_times.append(time.perf_counter() - t0)
        best, jbest = min(times), min(joint_times)
        print(f"frames/window={T} batch={args.batch} joint seq={batch.tokens.shape[1] + T * 60}: "
              f"full forward best {best:.2f} s/batch -> {args.batch / best:.2f} windows/s "
              f"(all: {', '.join(f'{t:.2f}' for t in times)}); joint transformer alone "
              f"{jbest:.2f} s/batch -> {args.batch / jbest:.2f} windows/s")


if __name__ == "__main__":
    main()
