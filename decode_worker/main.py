"""`slos-serve decode-worker`: a decode worker process."""

from __future__ import annotations

import argparse

from slos_serve.worker.main import add_arguments, run_role

__all__ = ["add_arguments", "run"]


def run(args: argparse.Namespace) -> int:
    return run_role("decode", args)


if __name__ == "__main__":
    import sys

    from slos_serve.cli import main

    sys.exit(main(["decode-worker", *sys.argv[1:]]))
