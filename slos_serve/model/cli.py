"""The command line of `slos-serve make-model DIR`."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from pathlib import Path

from slos_serve.model.build import build_model
from slos_serve.model.recipe import DEFAULT_MODEL_DIR, DEFAULT_TRAIN_STEPS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `slos-serve make-model`."""
    parser.add_argument(
        "dir", nargs="?", type=Path, default=DEFAULT_MODEL_DIR,
        help=f"output directory (default: {DEFAULT_MODEL_DIR})",
    )
    parser.add_argument(
        "--train-steps", type=int, default=DEFAULT_TRAIN_STEPS,
        help=f"training steps after the bigram initialisation (default: {DEFAULT_TRAIN_STEPS})",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and data order")
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")


def run(args: argparse.Namespace) -> int:
    """Entry point of `slos-serve make-model`; returns the exit status."""
    # Idle OpenMP threads must sleep, not spin: on a small machine shared with engines and
    # tests, spinning threads made training 3-4x slower. Only effective before torch loads.
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Turn SIGTERM into SystemExit so that the temporary build directory is removed.
    previous = None
    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        previous = signal.signal(
            signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    try:
        build_model(args.dir, train_steps=args.train_steps, seed=args.seed, force=args.force)
    except (FileExistsError, ValueError) as exc:
        print(f"slos-serve make-model: {exc}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0
