"""``python -m benchmarks <command>``: the CLI only parses and dispatches (STYLE.md 12).

Each command module (imported on use) exposes ``add_arguments(parser)`` and ``main(args) -> int``;
its help is the docstring of its ``main``. A user error prints one line and exits with 2;
``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import signal
import sys
import threading

# command -> (module, one-line help)
COMMANDS = {
    "run": ("benchmarks.runner", "run a suite: cross-validation, ablation and memory grids, tables"),
    "list": ("benchmarks.registry", "list registered methods, families, needs and variants"),
    "check-method": ("benchmarks.checks", "check registered methods against the model contract (shapes, loss, "
                     "omics-free inference, state_dict, determinism, precision, bf16)"),
    "config": ("benchmarks.protocol", "print a suite's resolved protocol"),
    "prepare": ("benchmarks.prepare", "build the TCGA-BRCA manifest, HER2/PR/ODX labels and omics from public tables"),
    "perf": ("benchmarks.perf", "seconds per step and peak memory per method at 1k/10k/100k patches"),
    "stats": ("benchmarks.stats", "pairwise significance tests of a finished run"),
    "curves": ("benchmarks.curves", "learning curves (training loss, validation AUC per epoch) of finished runs"),
    "predict": ("benchmarks.predict", "apply a finished run's fold models to new slides (probabilities, attention)"),
    "heatmap": ("benchmarks.heatmaps", "draw one slide's attention per method (PNG/PDF) from a run's saved models"),
    "localise": ("benchmarks.heatmaps", "simulated runs: AUC of each method's attention against the informative patches"),
    "simulate": ("benchmarks.simwrite", "write the simulated cohort as TRIDENT-style h5 files (rehearse --data at any size)"),
    "splits": ("benchmarks.splitfiles", "export a run's splits (ours or CLAM) for `run --splits`"),
    "tables": ("benchmarks.report", "re-render Tables 1-4, stats and figures from a finished run"),
    "reproduce": ("benchmarks.reproduce", "reproduce published classic-MIL numbers, as published and leak-free"),
    "tune": ("benchmarks.tuning", "Optuna search of a method's hyper-parameters on validation parts"),
    "sync-mlflow": ("benchmarks.tracking", "log a finished run folder to MLflow (idempotent)"),
    "compare": ("benchmarks.tracking", "compare parent runs or methods read back from MLflow, with tests"),
}


_DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """All commands are listed; only ``only``'s module is imported (heavy imports stay deferred)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks",
                                     description="MoMKD benchmark suite: methods, protocol, tables.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="command")
    for name, (mod, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
        if name != only:
            continue
        try:
            importlib.import_module(mod).add_arguments(p)
        except ModuleNotFoundError as e:  # an optional dependency is missing
            p.set_defaults(_unavailable=str(e))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    if getattr(args, "_unavailable", None):
        print(f"error: command {args.command} is unavailable: {args._unavailable}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[args.command][0])
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)  # a scheduler's stop: clean up as after Ctrl-C
    try:
        return int(module.main(args) or 0)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (ValueError, KeyError, FileNotFoundError, ConnectionError) as e:
        if args.debug:
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except OSError as e:  # a full or read-only output disk, no permission
        if args.debug or e.errno not in _DISK_ERRNOS:
            raise
        print(f"error: cannot write {e.filename or 'the output'}: {e.strerror}. Free space, or choose a writable "
              "folder with --out (finished jobs are kept; rerun to resume).", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
