"""Report-stage benchmark on Schaefer-1000 parcel data: this checkout vs the code before the report scaled
(a git revision), in one run, each in a fresh subprocess; prints wall and CPU seconds and the ratio.

    python bench/report.py                       # 1000 parcels, peer = a2e90a0, peer killed after 300 s
    python bench/report.py --rois 100 1000 --peer-timeout 600 --json out.json

The inputs are what the fit stage writes for the Algonauts 2025 data (4 subjects, the 97 x 115 x 97
Schaefer-1000 parcellation, one ROI per parcel) with 4 feature sets, 12 layers and 3 contrasts: scores.h5 is
synthetic (planted r), stats.h5 is made by this checkout's stats stage (both report versions read it). The
peer runs with a config both versions accept. CPU time is the children's user + system time (getrusage),
which stays meaningful on a machine other jobs share.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "toolkit"))

from brainalign.h5io import atomic_h5, str_attr  # noqa: E402

FEATURE_SETS = ["joint", "no_vision", "no_language", "crossmodal"]
CONTRASTS = [{"name": "vision_gain", "a": "joint", "b": "no_vision"},
             {"name": "language_gain", "a": "joint", "b": "no_language"},
             {"name": "crossmodal_vs_0", "a": "crossmodal"}]


def parcellation(shape, n):
    idx = np.indices(shape).reshape(3, -1).T.astype(float)
    c = (np.asarray(shape) - 1) / 2
    inside = np.flatnonzero((((idx - c) / (np.asarray(shape) / 2.2)) ** 2).sum(1) <= 1.0)
    lab = np.zeros(int(np.prod(shape)), np.int32)
    for k, part in enumerate(np.array_split(inside, n)):
        lab[part] = k + 1
    return lab.reshape(shape)


def make_scores(out: Path, n_rois: int, grid=(97, 115, 97), subjects=4, layers=12, folds=5, seed=0):
    """scores.h5 in the fit stage's layout for parcel data with an atlas (brain.space 'parcels')."""
    from brainalign.brain.space import MapSpace

    rng = np.random.default_rng(seed)
    atlas = parcellation(grid, n_rois)
    affine = np.array([[-2.0, 0, 0, 96], [0, 2, 0, -132], [0, 0, 2, -78], [0, 0, 0, 1]])
    space = MapSpace.parcels_of(atlas, affine, n_rois)
    S, F, L, V = subjects, len(FEATURE_SETS), layers, n_rois
    base = 0.05 + 0.1 * rng.random((1, 1, 1, V))
    r_mean = (base * np.linspace(0.5, 1.2, L)[None, None, :, None] + 0.02 * rng.standard_normal((S, F, L, V)))
    r_mean[:, 0] += 0.02
    with atomic_h5(out / "scores.h5", "fit", "bench: 1\n") as f:
        f.create_dataset("r", data=np.repeat(r_mean[:, :, :, None], folds, axis=3).astype(np.float32))
        f.create_dataset("r_mean", data=r_mean.astype(np.float32))
        space.to_h5(f)
        f.create_dataset("roi_labels", data=space.parcel_labels.astype(np.int32))
        f.attrs["subjects"] = str_attr([f"{i + 1:02d}" for i in range(S)])
        f.attrs["feature_sets"] = str_attr(FEATURE_SETS)
        f.attrs["layers"] = np.arange(L, dtype=np.int64)
        f.attrs["folds"] = str_attr([f"fold{k}" for k in range(folds)])
        f.attrs["roi_ids"] = space.parcel_labels
        f.attrs["roi_names"] = str_attr([f"7Networks_LH_Vis_{k}" for k in space.parcel_labels])


def write_config(path: Path, out: Path):
    data = {"name": "bench-report", "output": str(out),
            "data": {"episodes": ["s01e01a", "s01e01b", "s01e02a"], "bold": {"subjects": ["01", "02", "03", "04"]}},
            "model": {"conditions": ["joint", "no_vision", "no_language"]},
            "align": {"residuals": [{"name": "crossmodal", "target": "joint",
                                     "predictors": ["no_vision", "no_language"]}]},
            "stats": {"contrasts": CONTRASTS, "noise_ceiling": "none"},
            "report": {"title": "report benchmark"}}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def peer_tree(rev: str, dest: Path) -> Path:
    """The toolkit/ of git revision ``rev`` extracted into ``dest`` (git archive)."""
    tar = dest / "peer.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(tar), rev, "toolkit"], check=True)
    with tarfile.open(tar) as t:
        t.extractall(dest, filter="data")
    return dest / "toolkit"


def timed(toolkit: Path, config: Path, timeout: float):
    """Run the report stage of ``config`` with the package under ``toolkit``; (wall s, cpu s, status)."""
    code = ("import sys; from brainalign.config import load_config; from brainalign.report import run_report; "
            f"run_report(load_config({str(config)!r}))")
    env = {**os.environ, "PYTHONPATH": str(toolkit), "BRAINALIGN_PROGRESS": "0", "MPLBACKEND": "Agg"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
        status = "ok" if p.returncode == 0 else f"failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}"
    except subprocess.TimeoutExpired:
        status = f"killed after {timeout:.0f} s"
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, status


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rois", type=int, nargs="+", default=[1000])
    ap.add_argument("--peer", default="a2e90a0", help="git revision of the peer (the report before this change)")
    ap.add_argument("--peer-timeout", type=float, default=300.0)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    from brainalign.config import load_config
    from brainalign.stats import run_stats

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        tmp = Path(tmp)
        peer = peer_tree(args.peer, tmp)
        for n in args.rois:
            out = tmp / f"r{n}"
            out.mkdir()
            make_scores(out, n)
            cfg = write_config(tmp / f"r{n}.yaml", out)
            run_stats(load_config(cfg))
            ours = timed(ROOT / "toolkit", cfg, 600)
            theirs = timed(peer, cfg, args.peer_timeout)
            rows.append({"rois": n, "ours_wall": ours[0], "ours_cpu": ours[1], "ours": ours[2],
                         "peer_wall": theirs[0], "peer_cpu": theirs[1], "peer": theirs[2]})
    print(f"report stage, 4 subjects x 4 feature sets x 12 layers x 3 contrasts, parcels in a 97x115x97 atlas; "
          f"peer = {args.peer}; {os.cpu_count()} cores")
    print("| ROIs | brainalign wall (s) | CPU (s) | peer wall (s) | peer CPU (s) | peer status | speed-up (wall) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        more = ">" if r["peer"] != "ok" else ""
        print(f"| {r['rois']} | {r['ours_wall']:.1f} | {r['ours_cpu']:.1f} | {more}{r['peer_wall']:.1f} | "
              f"{more}{r['peer_cpu']:.1f} | {r['peer']} | {more}{r['peer_wall'] / r['ours_wall']:.1f}x |")
        if r["ours"] != "ok":
            print(f"brainalign failed: {r['ours']}", file=sys.stderr)
            return 1
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
