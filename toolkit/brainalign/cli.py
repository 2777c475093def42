"""Command line: parsing only; every verb calls a stage function. User errors print one line, exit 2."""
import argparse
import contextlib
import errno
import os
import sys

import yaml

from . import __version__
from .errors import BrainAlignError, one_line, output_error
from .interrupt import Interrupted, on_signals
from .log import get_logger, rank_info, setup_logging
from .paths import report_index
from .pipeline.lock import OutputLock, OutputLocked
from .stagetable import STAGES
from .stagetable import VERBS as STAGE_VERBS

#: verb -> help: the stage verbs of the stage table (brainalign.stagetable), then the verbs of the whole study
VERBS = {name: STAGES[name].help for name in STAGE_VERBS}
VERBS.update({
    "run": "run the config's pipeline (default: extract align fit stats report; the demo adds simulate)",
    "submit": "plan the study as SLURM jobs and submit them through submitit: extraction as an array, the fit "
              "as an MPI job (srun), then stats and report, chained with afterok; --dry-run prints the plan",
    "status": "per stage of the config's pipeline: current (would be skipped), stale (with what changed: a "
              "config value it reads, an upstream output, an input file) or missing; runs nothing",
    "validate": "check everything `run` would reject before doing work -- the config against the schema, the "
                "backbone name, that the files its data section resolves to exist (listing the first missing "
                "ones) -- and print a one-line verdict (-v: also the config as resolved); runs nothing",
})


def parse_value(text: str):
    """A --set value as YAML (numbers, lists, null, ...), except that text YAML cannot read or would read as a
    mapping without any ``key: value`` pair -- a path template such as ``{root}/atlas.nii.gz`` or ``{root}`` --
    stays the string it is."""
    from .config import YAMLTooLarge, safe_load

    try:
        value = safe_load(text)
    except YAMLTooLarge as e:
        raise BrainAlignError(f"--set value: not accepted ({e.problem})") from None
    except yaml.YAMLError:
        return text
    if isinstance(value, dict) and value and all(v is None for v in value.values()):
        return text                      # "{root}" is a flow mapping {root: null} to YAML, a template to us
    return value


def _parse_set(items):
    out = {}
    for item in items or ():
        if "=" not in item:
            raise BrainAlignError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = parse_value(v)
    return out


def build_parser():
    p = argparse.ArgumentParser(
        prog="brainalign",
        description="Measure how a multimodal video transformer's layer-wise representations align with "
                    "fMRI: extract features under input conditions, fit voxel-wise ridge encoding models "
                    "with nested CV, run group statistics and write maps, tables and a report. "
                    "Every verb takes one YAML config (see configs/demo.yaml and the README).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'brainalign VERB --help' for a verb's options. Exit codes: 0 ok, 2 bad input (one line "
               "names the culprit), 1 internal error.",
    )
    p.add_argument("--version", action="version", version=f"brainalign {__version__}")
    sub = p.add_subparsers(dest="verb", metavar="VERB")
    for verb, help_text in VERBS.items():
        sp = sub.add_parser(verb, help=help_text, description=help_text)
        sp.add_argument("config", help="experiment YAML file")
        sp.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a config key, e.g. --set fit.backend=torch (repeatable)")
        sp.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        if verb not in ("validate", "status"):
            sp.add_argument("--force", action="store_true",
                            help="recompute even if the stage's output is current (its stage key matches)")
        if verb != "validate":            # every verb that reads stage keys
            sp.add_argument("--verify", action="store_true",
                            help="compare input files by content (SHA-256) instead of size + mtime "
                                 "(= pipeline.fingerprint: content)")
        if verb not in ("validate", "status", "submit", "simulate"):
            sp.add_argument("--allow-stale", action="store_true",
                            help="use an upstream output whose stage key is not the one its stage would give it "
                                 "now (made with other settings or inputs) instead of refusing; logged")
        if verb == "status":
            sp.add_argument("--stages", nargs="+", help="only these stages (default: the config's pipeline)")
        if verb == "extract":
            sp.add_argument("--episodes", nargs="+", help="only these episodes (e.g. one SLURM array task)")
            sp.add_argument("--device", help="torch device for the backbone (overrides model.device)")
        if verb == "finetune":
            sp.add_argument("--device", help="torch device for training (overrides finetune.device)")
        if verb == "run":
            sp.add_argument("--stages", nargs="+", help="run only these stages, in this order")
        if verb == "submit":
            sp.add_argument("--cluster", choices=("slurm", "local", "debug"), default="slurm",
                            help="slurm: sbatch through submitit; local: subprocesses on this machine; "
                                 "debug: run in this process (default slurm)")
            sp.add_argument("--profile", default=None,
                            help="cluster profile YAML (partition, account, gpus, time, mem, nodes, tasks, "
                                 "container image, binds); default configs/cluster/local.yaml")
            sp.add_argument("--dry-run", action="store_true", help="print the plan, submit nothing")
            sp.add_argument("--wait", action="store_true", help="wait for the last job and report its state")
            sp.add_argument("--emit-sbatch", metavar="DIR",
                            help="write the plan as sbatch scripts + submit.sh (+ frozen config) into DIR "
                                 "instead of submitting (with --cluster slurm)")
    return p


def main(argv=None):
    """The ``brainalign`` command (``argv=None``: the process's own arguments; a list: called as a function)."""
    code = _main(argv)
    from .h5io import FAILED_WRITE

    if argv is None and FAILED_WRITE:     # HDF5's exit handler would crash on the file it could not write
        import logging

        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    return code


def _main(argv):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verb:
        parser.print_help()
        return 2
    setup_logging("DEBUG" if getattr(args, "verbose", False) else os.environ.get("BRAINALIGN_LOG", "INFO"))
    log = get_logger("cli")
    try:
        from .config import load_config

        overrides = _parse_set(args.set)
        if getattr(args, "device", None):
            overrides["finetune.device" if args.verb == "finetune" else "model.device"] = args.device
        cfg = load_config(args.config, overrides)
        if getattr(args, "verify", False):
            cfg.pipeline.fingerprint = "content"
        cfg.pipeline.allow_stale = bool(getattr(args, "allow_stale", False))
        if args.verb == "validate":
            from .pipeline.preflight import preflight

            from .pipeline.checkpoints import check_checkpoints

            n_ckpt = check_checkpoints(cfg)
            summary = preflight(cfg)
            summary += f"; {n_ckpt} checkpoint(s) readable" if n_ckpt else ""
            if args.verbose:                  # the config as resolved (with the --set overrides)
                print(cfg.text, end="" if cfg.text.endswith("\n") else "\n")
            sets = f", {len(overrides)} --set override(s)" if overrides else ""
            print(f"config {cfg.source}: ok ({cfg.name}{sets}; pipeline {' '.join(cfg.pipeline)}; backbone "
                  f"{cfg.model.backbone}; feature sets {' '.join(cfg.feature_sets)}; {summary})")
            sys.stdout.flush()
            return 0
        if args.verb == "run":               # bad stage names or backbone: one line before any output exists
            from .pipeline import check_pipeline

            check_pipeline(cfg, args.stages)
        if args.verb not in ("status", "submit"):
            with on_signals(), (OutputLock(cfg.out, args.verb) if args.verb != "simulate"
                                else contextlib.nullcontext()):
                return _run_verb(args, cfg)
        if args.verb == "status":
            from .pipeline.status import print_status

            print_status(cfg, stages=args.stages, verbose=args.verbose)
        else:
            from .cluster.submit import submit_study

            submit_study(cfg, cluster=args.cluster, profile=args.profile, dry_run=args.dry_run,
                         wait=args.wait, force=args.force, emit_sbatch=args.emit_sbatch)
        sys.stdout.flush()                   # a closed pipe is seen here, not in the interpreter's exit
        return 0
    except Interrupted as e:
        print(f"brainalign {args.verb}: {one_line(e, 1000)}", file=sys.stderr)
        _leave_mpi(e.exit_code)
        return e.exit_code
    except BrainAlignError as e:
        print(f"brainalign {args.verb}: error: {one_line(e)}", file=sys.stderr)
        if isinstance(e, OutputLocked):
            _abort_job(e.exit_code)
        return e.exit_code
    except BrokenPipeError:                  # `brainalign status ... | head`: the reader stopped reading
        _silence_stdout()
        print(f"brainalign {args.verb}: error: output closed early (broken pipe)", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno == errno.ELOOP:
            print(f"brainalign {args.verb}: error: symbolic link loop at {e.filename} "
                  f"({e.strerror}); fix or remove that link", file=sys.stderr)
            return 2
        return _other_error(args, e, log)
    except KeyboardInterrupt:
        print(f"brainalign {args.verb}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        return _other_error(args, e, log)


def _other_error(args, e, log) -> int:
    """A full disk, a read-only or foreign output folder: one line, exit 2; anything else is an internal error."""
    err = output_error(e)
    if err is not None:
        print(f"brainalign {args.verb}: error: {one_line(err)}", file=sys.stderr)
        return err.exit_code
    log.exception("internal error (please report it with the traceback above)")
    return 1


def _silence_stdout():
    """After a broken pipe: point stdout at /dev/null so the interpreter's final flush does not raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):            # stdout without a file descriptor (tests' capture)
        pass


def _run_verb(args, cfg) -> int:
    """A verb that runs stages (under :func:`brainalign.interrupt.on_signals`)."""
    from .pipeline import run_pipeline, run_stage

    if args.verb == "run":
        outs = run_pipeline(cfg, stages=args.stages, force=args.force)
        print(f"brainalign: results in {cfg.out}/ (report: {report_index(cfg)})")
        for stage, out in outs.items():
            print(f"  {stage:<9} {out}")
    elif args.verb == "extract" and args.episodes:
        from .extract import run_extract

        print(run_extract(cfg, episodes=args.episodes, force=args.force))
    else:
        out = run_stage(cfg, args.verb, force=args.force)
        if rank_info()[0] == 0:          # under MPI only rank 0 reports
            print(out)
    sys.stdout.flush()                   # a closed pipe is seen here, not in the interpreter's exit
    return 0


def _abort_job(code: int):
    """Rank 0 found the output locked before MPI started: the other ranks (which follow rank 0's lock) would
    wait for it forever, so end the whole job."""
    from .sharding.comm import launcher_size

    if (launcher_size() or 1) > 1:
        sys.stderr.flush()
        from mpi4py import MPI

        MPI.COMM_WORLD.Abort(code)


LEAVE_WAIT_S = 20.0


def _leave_mpi(code: int):
    """After a signal under MPI with several ranks: exit now. MPI_Finalize (mpi4py's atexit) could wait
    forever on a rank that is gone or on a request the signal left pending; the launcher ends the rest."""
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is None or not mpi.Is_initialized() or mpi.Is_finalized() or mpi.COMM_WORLD.Get_size() < 2:
        return
    import logging
    import time

    sys.stdout.flush()
    sys.stderr.flush()
    # the launcher kills every rank once one exits: wait (a while) for the others to have saved their work
    # too (they got the same signal: SLURM and mpiexec signal every task)
    req, t0 = mpi.COMM_WORLD.Ibarrier(), time.monotonic()
    while not req.Test() and time.monotonic() - t0 < LEAVE_WAIT_S:
        time.sleep(0.01)
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
