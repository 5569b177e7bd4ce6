"""`slos-serve prefill-worker`: a prefill worker process."""

from __future__ import annotations

import argparse

from slos_serve.worker.main import add_arguments, run_role

__all__ = ["add_arguments", "run"]


def run(args: argparse.Namespace) -> int:
    return run_role("prefill", args)


if __name__ == "__main__":
    import sys

    from slos_serve.cli import main

    sys.exit(main(["prefill-worker", *sys.argv[1:]]))
