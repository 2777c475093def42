"""Project the two reference studies with the fit's cost model (no measurement: brainalign.cluster.cost).

    python bench/study_sizing.py                          # the table of docs/cluster.md#sizing
    python bench/study_sizing.py --rates-before FILE      # another calibration of the fold engine

Studies (≈ 133,000 TRs per subject: CNeuroMod Friends seasons 1-6 at TR 1.49 s): the Algonauts 2025 release
(4 subjects, 1,000 parcels) and friends.fmriprep (6 subjects, ~250,000 voxels); 5 feature sets x 12 layers,
K = 10 outer folds with leave-one-fold-out inner CV, p = 768 x 6 FIR delays (the default at TR 1.49 s),
10 alphas, chunks of 1,000 voxels (configs/friends.yaml). For each engine ("fold": the engine before issue
20; "stats": the statistics engine) on CPU nodes (--cores, --mem-gb per node; as many ranks per node as the
memory allows, the node's cores split between them) and on nodes with one GPU (one rank per GPU at the GPU
rates of rates.json: ASSUMED until bench/gpu_check.py has measured a GPU).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "toolkit"))

from brainalign.cluster import cost  # noqa: E402

STUDIES = {"Algonauts 2025 parcels": dict(n=133_000, v=1_000, subjects=4),
           "friends.fmriprep voxels": dict(n=133_000, v=250_000, subjects=6)}


def layout(shape, engine, rates, cores, mem_gb, read):
    """(ranks per node, cores per rank, estimate on one node): the most ranks whose memory fits 90 % of a node."""
    best = None
    for rpn in (1, 2, 4, 8, 16, 32, 64):
        if rpn > cores:
            break
        e = cost.estimate(shape, rpn, cores // rpn, False, rates, engine, read)
        if e.mem_rank_bytes * rpn <= 0.9 * mem_gb * 2 ** 30 or best is None:
            best = (rpn, cores // rpn, e)
    return best


def nodes_for(shape, engine, rates, hours, per_node, cores_per_rank, gpu, read):
    n = 1
    while n < 100_000:
        e = cost.estimate(shape, n * per_node, cores_per_rank, gpu, rates, engine, read)
        if e.wall_s <= hours * 3600:
            return n, e
        n = n + 1 if n < 64 else int(n * 1.1) + 1
    return None, None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cores", type=int, default=64, help="cores per CPU node")
    ap.add_argument("--mem-gb", type=float, default=256, help="memory per CPU node (GiB)")
    ap.add_argument("--read-gbps", type=float, default=1.0, help="filesystem read bandwidth per rank (GB/s)")
    ap.add_argument("--hours", type=float, default=24.0, help="wall-time target for the node counts")
    ap.add_argument("--p", type=int, default=768 * 6, help="features per design")
    ap.add_argument("--rates-before", default=str(Path(__file__).with_name("cost_rates_fold_engine.json")),
                    help="rates of the fold engine: bench/cost_model.py's run on it, before the statistics engine "
                         "replaced it in fit (it cannot be re-run since)")
    args = ap.parse_args(argv)
    after = cost.Rates.load()
    before = cost.Rates.load(args.rates_before)
    print(f"# rates: {after.machine}, {after.measured or 'not measured'}; GPU: {after.gpu.note}")
    print(f"# CPU node: {args.cores} cores, {args.mem_gb:g} GiB; GPU node: 1 GPU, one rank; reads "
          f"{args.read_gbps:g} GB/s per rank (assumed)\n")
    print("| study | engine | flops | BOLD read | CPU: core-hours | memory per rank (ranks x cores per node) "
          f"| CPU nodes for {args.hours:g} h | GPU-hours | memory per GPU rank | GPU nodes for {args.hours:g} h |")
    print("|" + "---|" * 10)
    for name, kw in STUDIES.items():
        shape = cost.FitShape(p=args.p, designs=5, layers=12, K=10, alphas=10, chunk=1000, **kw)
        for engine, rates in (("fold", before), ("stats", after)):
            c = cost.counts(shape, engine)
            rpn, cpr, one = layout(shape, engine, rates, args.cores, args.mem_gb, args.read_gbps)
            n_cpu, e_cpu = nodes_for(shape, engine, rates, args.hours, rpn, cpr, False, args.read_gbps)
            n_gpu, e_gpu = nodes_for(shape, engine, rates, args.hours, 1, 1, True, args.read_gbps)
            print(f"| {name} | {engine} | {cost.fmt_flops(c.flops)} | {cost.fmt_bytes(c.bold_bytes_read)} "
                  f"({c.data_passes} passes) | {e_cpu.core_hours():,.0f} | {one.mem_rank_gib:.1f} GiB ({rpn} x {cpr}) "
                  f"| {n_cpu} ({cost.fmt_time(e_cpu.wall_s)}) | {e_gpu.cpu_s / 3600:,.0f} "
                  f"| {e_gpu.mem_rank_gib:.1f} GiB | {n_gpu} ({cost.fmt_time(e_gpu.wall_s)}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
