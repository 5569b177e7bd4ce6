"""The `slos-serve` command: one subcommand per role and tool.

Each subcommand lives in its own module exposing `add_arguments(parser)` and
`run(args) -> int`. Modules import heavy dependencies (vLLM, torch) inside
`run`, so `slos-serve --help` stays fast. This dispatcher imports the command modules
(and `supervise`, for `die_with_parent`) only when it runs, so importing it loads none of them.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("slos_serve.up", "start a local cluster: coordinator + prefill, decode, mixed workers"),
    "scale": ("slos_serve.scale", "add or drain-and-remove workers of a running cluster "
              "(with --ray: as Ray actors)"),
    "coordinator": ("coordinator.main", "run the client-facing coordinator"),
    "prefill-worker": ("prefill_worker.main", "run a prefill worker (vLLM or simulated engine)"),
    "decode-worker": ("decode_worker.main", "run a decode worker (vLLM or simulated engine)"),
    "mixed-worker": ("slos_serve.worker.main", "run a mixed worker: prefill and decode on one "
                     "engine (vLLM or simulated)"),
    "certs": ("slos_serve.certs", "make the cluster's CA and TLS certificates (mutual TLS "
              "between coordinator and workers, TLS for clients)"),
    "generate": ("slos_serve.generate_cli", "send one request to a coordinator and stream it"),
    "demo": ("slos_serve.demo", "start a local cluster, serve a few requests, stop (make run)"),
    "make-model": ("slos_serve.model", "build the tiny local LLaMA model and tokenizer"),
    "kv-bench": ("kv_transfer.bench", "NIXL DRAM-to-DRAM bandwidth between two processes"),
    "simulate": ("slos_serve.sim.cli", "cluster simulator: attainment, capacity, overhead"),
    "bench": ("slos_serve.bench.cli", "live benchmark: systems side by side, capacity, plots"),
    "profile": ("slos_serve.profile", "measure the engine's batch times and fit the performance model"),  # noqa: E501
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slos-serve", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:  # a partial install must not hide the other commands
            p = sub.add_parser(name, help=f"{help_text} (unavailable: {exc})")
            p.set_defaults(_unavailable=str(exc))
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from slos_serve.supervise import die_with_parent

    die_with_parent()
    args = build_parser().parse_args(argv)
    if getattr(args, "_unavailable", None):
        print(f"slos-serve {args.command}: unavailable: {args._unavailable}", file=sys.stderr)
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
