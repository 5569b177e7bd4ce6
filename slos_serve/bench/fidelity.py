"""Simulated against live attainment: does the simulator predict what this machine does?

A comparison run (`slos-serve bench --systems ... --rates ...`) writes, per system and rate,
every request's verdict (records.jsonl) and the workload it drew them from (meta.json: the
workload options, the SLO scale settled at zero load). The workload is deterministic, so the
same requests with the same scaled SLOs can go through the simulator, on this machine's
performance model (the profile the cluster plans with, `.cache/profile-cpu.json` by
default) and its KV capacity. Pure but for reading the run's files.

Live systems and the simulated system that models each (`SIM_SYSTEMS`): the planner's
layouts map to the simulator's (`slos-mixed` is the colocated planner), vLLM's server to the
simulator's `vllm` (V1 scheduling, one engine per core); `vllm-pd` and `vllm-serve-priority`
have no simulated twin and are left out (said so in the table).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from slos_serve.bench.records import read_records
from slos_serve.bench.workload import WorkloadOptions, workload_requests
from slos_serve.core.perf_model import PerfModel, load_profile
from slos_serve.sim.core import SimConfig
from slos_serve.sim.simulator import simulate
from slos_serve.sim.workloads import Request

# live system -> (simulated system, P:D split or None)
SIM_SYSTEMS: dict[str, tuple[str, tuple[int, int] | None]] = {
    "slos-mixed": ("slos-colocated", None),
    "slos": ("slos", None),
    "slos-pd": ("slos-pd", (1, 1)),
    "vllm-serve": ("vllm", None),
}
ENGINE_KV_GIB = 1  # VLLM_CPU_KVCACHE_SPACE of the bench's engines
CLOSE_POINTS = 10.0  # the bound: simulated within 10 points of live


@dataclass(frozen=True, slots=True)
class Fidelity:
    system: str
    rate: float
    requests: int
    live: float  # attainment, 0..1
    simulated: float | None  # None: no simulated twin

    @property
    def gap_points(self) -> float | None:
        return None if self.simulated is None else 100 * (self.simulated - self.live)


def kv_bytes_per_token(model_dir: str | Path, dtype_bytes: int = 4) -> int:
    """K and V of every layer for one token, from the model's config.json."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    heads = cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    head_dim = cfg.get("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
    return 2 * cfg["num_hidden_layers"] * heads * head_dim * dtype_bytes


def scaled(requests: list[Request], slo_scale: float) -> list[Request]:
    """The requests with their SLOs as the live run sent them (times `slo_scale`)."""
    return [replace(r, segments=tuple(
        replace(s, ttft_slo=None if s.ttft_slo is None else s.ttft_slo * slo_scale,
                tpot_slo=s.tpot_slo * slo_scale) for s in r.segments)) for r in requests]


def simulated_attainment(requests: list[Request], system: str, model: PerfModel,
                         kv_tokens: int, spec_tokens: int = 0) -> float | None:
    """Attainment of the simulated twin of live `system` on `requests` (None: no twin)."""
    twin = SIM_SYSTEMS.get(system)
    if twin is None:
        return None
    name, split = twin
    cfg = SimConfig(workers=2, kv_capacity_tokens=kv_tokens, max_spec_len=spec_tokens,
                    pd_ratio=split)
    return simulate(requests, name, cfg, model).summary.attainment


def compare(run_dir: str | Path, profile: str | None = None) -> list[Fidelity]:
    """Per (system, rate) of a comparison run: live and simulated attainment."""
    run = Path(run_dir)
    meta = json.loads((run / "meta.json").read_text())
    model = load_profile(profile or meta.get("profile") or ".cache/profile-cpu.json")
    kv_tokens = ENGINE_KV_GIB * (1 << 30) // kv_bytes_per_token(meta["model"])
    opts = WorkloadOptions(**meta["workload"])
    scale = float(meta["slo_scale"])
    by_run: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for r in read_records(run / "records.jsonl"):
        if not r.get("probe"):
            by_run[(r["system"], float(r["rate"]))].append(r)
    out = []
    for (system, rate), recs in sorted(by_run.items()):
        reqs = scaled(workload_requests(opts, rate), scale)
        sim = simulated_attainment(reqs, system, model, kv_tokens, meta.get("spec_tokens", 0))
        live = sum(r["attained"] for r in recs) / len(recs)
        out.append(Fidelity(system, rate, len(recs), live, sim))
    return out


def fidelity_table(rows: list[Fidelity]) -> str:
    lines = [f"{'system':<20} {'rate':>7} {'n':>5} {'live':>7} {'simulated':>10} {'gap':>8}"]
    for f in rows:
        sim = "no twin" if f.simulated is None else f"{100 * f.simulated:.1f} %"
        gap = "" if f.gap_points is None else f"{f.gap_points:+.1f} pt"
        lines.append(f"{f.system:<20} {f.rate:>7.3g} {f.requests:>5} {100 * f.live:>5.1f} % "
                     f"{sim:>10} {gap:>8}")
    return "\n".join(lines)
