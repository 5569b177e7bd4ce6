"""On the SIMULATED engine (no model runs): is the load generator, or the coordinator, a limit?

`loadgen_check`: the load generator against a 1P+1D `--engine sim` cluster at rates far
above the live benchmark's: achieved send rate against the requested and the scheduled one
(Poisson arrivals are random: the schedule's own rate differs from the nominal one), and
send lateness (actual - scheduled send time) p50 / p99 / max.

`coordinator_overhead`: the same requests through the coordinator and straight to the
workers' Worker service (Prefill, then Decode with the hand-off, as the coordinator calls
them): at concurrency 1 the latency the coordinator adds (TTFT, mean inter-token latency,
E2E per token), and closed-loop throughput (requests/s, tokens/s) at a concurrency.
Everything measured here is the coordinator and gRPC on this machine, with SIMULATED
engines whose step times are fixed by a linear model (4 ms + per token/sequence terms).
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import numpy as np

from proto import slos_serve_pb2 as pb
from proto import slos_serve_pb2_grpc as pb_grpc
from slos_serve.bench.corpus import load_corpus
from slos_serve.bench.loadgen import run_load
from slos_serve.bench.records import CallResult, add_tokens
from slos_serve.bench.runner import LiveSession
from slos_serve.bench.systems import ClusterSystem
from slos_serve.bench.workload import (
    WorkloadOptions,
    cut_prompt,
    loose_stage,
    mean_rate,
    to_bench_requests,
    workload_requests,
)
from slos_serve.core.stages import StageSpec
from slos_serve.grpc_util import open_channel
from slos_serve.tls import NODE_OPTIONS

LOOSE_SCALE = 1000.0  # SLOs play no part in these checks


def percentile(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def loadgen_check(
    model: str, rates: Sequence[float], seconds: float = 5.0, scenario: str = "coding",
    max_output: int = 8, system_name: str = "vllm-pd", seed: int = 0, progress: bool = True,
) -> list[dict[str, Any]]:
    """One row per rate: requested / scheduled / achieved rate, lateness percentiles."""
    corpus = load_corpus(model)
    rows = []
    with LiveSession(ClusterSystem(system_name, model, engine="sim"), 60.0) as s:
        for rate in rates:
            wl = WorkloadOptions(scenario=scenario, requests=max(2, int(rate * seconds)),
                                 seed=seed, max_output=max_output)
            requests = to_bench_requests(workload_requests(wl, rate), corpus, LOOSE_SCALE)
            res = s.run(run_load(requests, s.driver, system=f"{system_name} (SIMULATED)",
                                 scenario=scenario, rate=rate, max_context=wl.max_context,
                                 request_timeout_s=60, drain_s=30, progress=progress))
            sent = [r["sent"] for r in res.records if r["sent"] is not None]
            late = [r["lateness_ms"] for r in res.records if r["lateness_ms"] is not None]
            scheduled = mean_rate([p.arrival for p in requests])
            achieved = mean_rate(sent)
            rows.append({
                "rate": rate, "requests": len(requests), "scheduled_rate": scheduled,
                "achieved_rate": achieved, "achieved_over_scheduled": achieved / scheduled,
                "achieved_over_requested": achieved / rate,
                "lateness_ms_p50": percentile(late, 50), "lateness_ms_p99": percentile(late, 99),
                "lateness_ms_max": max(late) if late else float("nan"),
                "finished": sum(r["finished"] for r in res.records),
                "errors": sum(bool(r["error"]) for r in res.records),
                "wall_s": res.wall_s,
            })
            s.run(s.system.wait_idle())
    return rows


def loadgen_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["load generator against a 1P+1D cluster on the SIMULATED engine",
             f"{'rate':>7} {'reqs':>5} {'scheduled':>9} {'achieved':>9} {'ach/sch':>8} "
             f"{'late p50':>9} {'late p99':>9} {'late max':>9} {'done':>5} {'err':>4}"]
    for r in rows:
        lines.append(
            f"{r['rate']:>7g} {r['requests']:>5} {r['scheduled_rate']:>9.1f} "
            f"{r['achieved_rate']:>9.1f} {r['achieved_over_scheduled']:>8.3f} "
            f"{r['lateness_ms_p50']:>7.2f}ms {r['lateness_ms_p99']:>7.2f}ms "
            f"{r['lateness_ms_max']:>7.2f}ms {r['finished']:>5} {r['errors']:>4}")
    return "\n".join(lines)


# ------------------------------------------------------------ coordinator overhead --


class DirectDriver:
    """Calls a prefill and a decode worker's Worker service directly (no coordinator), with
    the cluster's own node credentials (workers require mutual TLS unless --insecure)."""

    def __init__(self, prefill: str, decode: str,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        self._channels = [open_channel(a, credentials, NODE_OPTIONS) for a in (prefill, decode)]
        self.prefill = pb_grpc.WorkerStub(self._channels[0])
        self.decode = pb_grpc.WorkerStub(self._channels[1])

    async def call(self, prompt: list[int], stages: Sequence[StageSpec],
                   result: CallResult, clock: Callable[[], float]) -> list[int]:
        rid = uuid.uuid4().hex
        max_tokens = sum(s.max_tokens for s in stages)
        sampling = pb.SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True,
                                     seed=0)
        slo = pb.WorkerSlo(ttft_deadline_unix=time.time() + 600, tpot_ms=1e6, tier="direct")
        first = await self.prefill.Prefill(pb.PrefillRequest(
            request_id=rid, prompt_token_ids=prompt, sampling=sampling, slo=slo,
            hand_off=max_tokens > 1))
        add_tokens(result, 1, clock())
        out = [first.first_token_id]
        result.decision, result.finish_reason = "admitted", first.finish_reason
        if first.finish_reason:
            return out
        async for msg in self.decode.Decode(pb.DecodeRequest(
                request_id=rid, prompt_token_ids=prompt, sampling=sampling, slo=slo,
                handoff=first.handoff, first_token_id=first.first_token_id,
                first_text=first.first_text)):
            if msg.token_ids:
                add_tokens(result, len(msg.token_ids), clock())
                out.extend(msg.token_ids)
            if msg.finish_reason:
                result.finish_reason = msg.finish_reason
        return out

    async def close(self) -> None:
        for ch in self._channels:
            await ch.close()


async def _one(driver: Any, prompt: list[int], out: int, clock: Callable[[], float]
               ) -> CallResult:
    res = CallResult(sent=clock())
    await driver.call(prompt, (loose_stage(out),), res, clock)
    return res


async def _latency(drivers: dict[str, Any], prompt: list[int], out: int, n: int
                   ) -> dict[str, dict[str, float]]:
    """n requests one at a time through each driver, alternating."""
    t0 = time.perf_counter()

    def clock() -> float:
        return time.perf_counter() - t0

    got: dict[str, list[CallResult]] = {k: [] for k in drivers}
    for _ in range(n):
        for k, d in drivers.items():
            got[k].append(await _one(d, prompt, out, clock))
    stats = {}
    for k, results in got.items():
        ttft = [1e3 * (r.token_times[0] - r.sent) for r in results]
        itl = [1e3 * (b - a) for r in results
               for a, b in zip(r.token_times, r.token_times[1:], strict=False)]
        e2e = [1e3 * (r.token_times[-1] - r.sent) for r in results]
        stats[k] = {"ttft_ms_p50": statistics.median(ttft), "itl_ms_mean": statistics.mean(itl),
                    "e2e_ms_p50": statistics.median(e2e)}
    return stats


async def _throughput(driver: Any, prompt: list[int], out: int, concurrency: int,
                      seconds: float) -> dict[str, float]:
    """Closed loop: `concurrency` clients, each sending its next request when one ends."""
    t0 = time.perf_counter()

    def clock() -> float:
        return time.perf_counter() - t0

    done = {"requests": 0, "tokens": 0}

    async def worker() -> None:
        while clock() < seconds:
            r = await _one(driver, prompt, out, clock)
            done["requests"] += 1
            done["tokens"] += len(r.token_times)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = clock()
    return {"requests_per_s": done["requests"] / wall, "tokens_per_s": done["tokens"] / wall}


def coordinator_overhead(
    model: str, prompt_tokens: int = 64, output_tokens: int = 64, n: int = 20,
    concurrency: int = 32, seconds: float = 5.0, short_output: int = 2,
    scheduler: str = "slos",
) -> dict[str, Any]:
    """Latency added at concurrency 1 and throughput at `concurrency`, SIMULATED engine."""
    prompt = list(cut_prompt(load_corpus(model), prompt_tokens, 1))
    name = "slos-pd" if scheduler == "slos" else "vllm-pd"
    system = ClusterSystem(name, model, engine="sim")
    with LiveSession(system, 60.0) as s:
        addr = system.worker_addresses()
        direct = s.run(_make_direct(addr["prefill-0"], addr["decode-0"],
                                    system.cluster.internal_credentials()))
        try:
            drivers = {"coordinator": s.driver, "direct": direct}
            latency = s.run(_latency(drivers, prompt, output_tokens, n))
            tput = {k: s.run(_throughput(d, prompt, output_tokens, concurrency, seconds))
                    for k, d in drivers.items()}
            short = {k: s.run(_throughput(d, prompt, short_output, concurrency, seconds))
                     for k, d in drivers.items()}
        finally:
            s.run(direct.close())
    c, d = latency["coordinator"], latency["direct"]
    return {
        "engine": "SIMULATED", "scheduler": scheduler, "prompt_tokens": prompt_tokens,
        "output_tokens": output_tokens, "requests": n, "concurrency": concurrency,
        "latency": latency,
        "added_ttft_ms": c["ttft_ms_p50"] - d["ttft_ms_p50"],
        "added_itl_ms": c["itl_ms_mean"] - d["itl_ms_mean"],
        "added_e2e_ms_per_token": (c["e2e_ms_p50"] - d["e2e_ms_p50"]) / output_tokens,
        "throughput": tput,
        "short_requests": {"output_tokens": short_output, **short},
    }


async def _make_direct(prefill: str, decode: str,
                       credentials: grpc.ChannelCredentials | None) -> DirectDriver:
    return DirectDriver(prefill, decode, credentials)


def overhead_table(r: dict[str, Any]) -> str:
    lat, tp, sh = r["latency"], r["throughput"], r["short_requests"]
    c, d = lat["coordinator"], lat["direct"]
    conc = f"tokens/s, conc. {r['concurrency']}"
    short = f"requests/s ({sh['output_tokens']} tok each)"
    return "\n".join([
        f"coordinator overhead, SIMULATED engine, 1P+1D, scheduler {r['scheduler']}: "
        f"prompt {r['prompt_tokens']}, output {r['output_tokens']} tokens",
        f"{'':<28}{'coordinator':>14}{'direct':>14}{'added':>12}",
        f"{'TTFT p50 (ms), conc. 1':<28}{c['ttft_ms_p50']:>14.2f}{d['ttft_ms_p50']:>14.2f}"
        f"{r['added_ttft_ms']:>12.2f}",
        f"{'mean ITL (ms), conc. 1':<28}{c['itl_ms_mean']:>14.3f}{d['itl_ms_mean']:>14.3f}"
        f"{r['added_itl_ms']:>12.3f}",
        f"{'E2E p50 (ms), conc. 1':<28}{c['e2e_ms_p50']:>14.2f}{d['e2e_ms_p50']:>14.2f}"
        f"{r['added_e2e_ms_per_token']:>8.3f}/tok",
        f"{conc:<28}{tp['coordinator']['tokens_per_s']:>14.0f}"
        f"{tp['direct']['tokens_per_s']:>14.0f}",
        f"{short:<28}{sh['coordinator']['requests_per_s']:>14.1f}"
        f"{sh['direct']['requests_per_s']:>14.1f}",
    ])
