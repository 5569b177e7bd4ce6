"""`slos-serve mixed-worker`: a colocated worker process, prefill and decode on one engine.

It serves whole requests locally (prefill, then decode in the same engine: no KV hand-off)
and, under the adaptive layout, either side of a hand-off; the coordinator's plan decides
what it gets.
"""

from __future__ import annotations

import argparse

from slos_serve.worker.main import add_arguments, run_role

__all__ = ["add_arguments", "run"]


def run(args: argparse.Namespace) -> int:
    return run_role("mixed", args)
