"""`slos-serve profile`: measure the engine's batch times and fit the performance model.

With `--engine vllm` one offline vLLM engine runs a grid of workloads (see `grid`) with
our scheduler's sample recorder on; every executed step gives its batch composition
(prefill, decode and speculative-verify tokens, requests, KV context tokens, longest
draft) and its times (see `measure`). The samples are fitted with
`slos_serve.core.perf_model.fit`, scored on held-out samples (see `fitting`), and saved as
JSON whose name, source and meta say on which machine, engine and model they were
measured.

With `--engine sim` the SIMULATED engine's timing model (`SimTiming`) is evaluated over
the same kinds of batches instead: no model runs, and the profile says so.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from slos_serve.profile.cache import DEFAULT_OUT
from slos_serve.profile.fitting import measure_and_fit
from slos_serve.profile.report import print_report
from slos_serve.profile.samples import CLOCK_HELP, CLOCKS

SIM_OUT = Path(".cache/profile-sim.json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", choices=("vllm", "sim"), default="vllm",
                        help="vllm (default) or sim: the SIMULATED engine's timing model")
    parser.add_argument("--model", default=None, help="model directory (required for vllm)")
    parser.add_argument("--out", default=None,
                        help=f"profile JSON to write (default {DEFAULT_OUT}, or "
                             f"{SIM_OUT} with --engine sim)")
    parser.add_argument("--quick", action="store_true",
                        help="a smaller grid (about a minute with the engine start)")
    parser.add_argument("--cpu", default="auto",
                        help="core the engine is bound to (VLLM_CPU_OMP_THREADS_BIND); "
                             "default: the idlest core at start")
    parser.add_argument("--kv-cache-gib", type=int, default=1)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--max-num-batched-tokens", type=int, default=2048)
    parser.add_argument("--spec-tokens", type=int, default=4,
                        help="ngram speculative tokens (0 = off; on: verify tokens are profiled)")
    parser.add_argument("--pieces", type=int, default=2, help="max-of-linear pieces to fit")
    parser.add_argument("--time-limit-s", type=float, default=None,
                        help="stop measuring in time to finish within this many seconds "
                             "(default 55 with --quick, else 175)")
    parser.add_argument("--clock", choices=CLOCKS, default="ready",
                        help="the step time to fit: " + "; ".join(
                            f"{k}: {v}" for k, v in CLOCK_HELP.items()) + " (default ready)")
    parser.add_argument("--outlier-factor", type=float, default=3.0,
                        help="set aside samples this many times off a first fit "
                             "(0 = keep all)")
    parser.add_argument("--samples", default=None,
                        help="also keep the raw step samples (JSON lines) at this path")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    if args.engine == "vllm" and not args.model:
        raise SystemExit("profile: --model is required with --engine vllm")
    out = Path(args.out) if args.out else (SIM_OUT if args.engine == "sim" else DEFAULT_OUT)
    result = measure_and_fit(args, t0)
    out.parent.mkdir(parents=True, exist_ok=True)
    result.report.model.save(out)
    print_report(result, args, out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slos-serve profile", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
