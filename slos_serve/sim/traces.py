"""Synthetic Azure-format traces with bursts, and the small ones the project ships.

The Azure LLM inference traces (`TIMESTAMP,ContextTokens,GeneratedTokens`) are what the paper
replays, compressed in time, for its bursty evaluation; they are not downloaded here. This
module writes traces of the same format whose arrivals are gamma-distributed with shape
`burstiness` (coefficient of variation of the inter-arrival times 1/sqrt(burstiness): 1 is
Poisson, < 1 comes in bursts) and whose lengths are a scenario's (`workloads.PROFILES`; a
request's ContextTokens is its first prompt, GeneratedTokens all its output). `--trace` reads
them back through `workloads.load_trace`, like a real Azure trace.

Shipped (`slos_serve/sim/data/`, made by `slos-serve simulate make-trace`, see SHIPPED): a
few hundred rows each, for tests and quick bursty runs; `--trace NAME` finds them by name.
"""

from __future__ import annotations

import csv
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from slos_serve.sim.workloads import TraceRow, WorkloadSpec, build_workload

DATA_DIR = Path(__file__).resolve().parent / "data"
# Azure 2023 traces' timestamp format, 7 fraction digits; the synthetic ones start here
EPOCH = datetime(2023, 11, 16, 18, 0, 0)

# name -> (scenario, mean rate req/s, burstiness, duration s, seed)
SHIPPED: dict[str, tuple[str, float, float, float, int]] = {
    "azure-chatbot-b0.3": ("chatbot", 5.0, 0.3, 60.0, 0),
    "azure-mixed-b0.1": ("mixed", 5.0, 0.1, 60.0, 1),
    "azure-coding-b1": ("coding", 5.0, 1.0, 60.0, 2),
}


def make_trace(
    scenario: str, rate: float, burstiness: float, duration_s: float, seed: int = 0
) -> list[TraceRow]:
    """The requests of `scenario` arriving in [0, duration_s) at mean `rate`, as trace rows."""
    n = max(16, int(rate * duration_s * 2))
    while True:
        reqs = build_workload(WorkloadSpec(scenario, rate, n, seed=seed, burstiness=burstiness))
        if reqs[-1].arrival >= duration_s:
            break
        n *= 2  # a long lull: request i's arrival and lengths do not depend on n
    return [TraceRow(r.arrival, r.prompt_tokens, r.output_tokens)
            for r in reqs if r.arrival < duration_s]


def write_trace(rows: list[TraceRow], path: str | Path) -> None:
    """Write rows as an Azure-format CSV, timestamps as the Azure traces print them."""
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["TIMESTAMP", "ContextTokens", "GeneratedTokens"])
        for r in rows:
            stamp = (EPOCH + timedelta(seconds=r.t)).strftime("%Y-%m-%d %H:%M:%S.%f") + "0"
            out.writerow([stamp, r.context_tokens, r.generated_tokens])


def resolve(trace: str) -> str:
    """A trace path as given, or the shipped trace of that name."""
    if Path(trace).exists() or trace not in SHIPPED:
        return trace
    return str(DATA_DIR / f"{trace}.csv")


def inter_arrival_cv(rows: list[TraceRow]) -> float:
    """Coefficient of variation of the inter-arrival times (1 for Poisson, > 1 bursty)."""
    gaps = np.diff([r.t for r in rows])
    return float(np.std(gaps) / np.mean(gaps))
