"""`slos-serve bench soak`: many concurrent streams for minutes on the SIMULATED engine.

Starts a local cluster (`engine="sim"`, the planner on; shape `pd`: 1 prefill + 1 decode
worker by default, so every request crosses the KV hand-off path) and drives it closed-loop
from this process with grpc.aio (raw stubs, no SDK: 1,000 streams cost the load generator
less so): each of `streams` streams sends a request, reads it to its end, sends the next, for
`seconds`; prompts and outputs of varied lengths (uniform in `prompt_tokens` and
`output_tokens`, EOS ignored). Then it waits up to `drain_s` for the requests in flight.

What it shows (the issue's soak target):
- every request accounted for: sent == completed + refused (an error status before the
  Started event: the coordinator declined it) + failed (after it, or a Final that is not a
  normal finish, or a token count that differs from the Final's) + hung (still in flight
  after the drain); the coordinator's own count of requests (its Prometheus counters) is
  compared with `sent`;
- RSS of every cluster process (its process group: a worker with its engine processes) at the
  end of the warm-up and at the end of the run, each the mean of the samples over the last
  RSS_WINDOW_S before it, and the growth: pass if < 5 % for each;
- a process restarted by the supervisor fails the run (its RSS would start over).

The load generator shares the machine's cores with the cluster: the request rate is the whole
machine's, not the cluster's alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from slos_serve.supervise import group_members
from slos_serve.up import ClusterSpec, LocalCluster

SHAPES: dict[str, dict[str, int]] = {
    "pd": {"prefill": 1, "decode": 1},
    "mixed": {"mixed": 1},
    "pd2": {"prefill": 2, "decode": 2},
}
RSS_GROWTH_LIMIT = 0.05
RSS_WINDOW_S = 5.0
TOKEN_IDS = (3, 1000)  # prompt token ids drawn from here (inside the tiny model's vocabulary)
NORMAL_FINISH = ("stop", "length")


@dataclass(frozen=True, slots=True, kw_only=True)
class SoakSettings:
    streams: int = 1000
    seconds: float = 600.0
    warmup_s: float | None = None  # default: a fifth of the run, at most 60 s
    progress_s: float = 30.0
    shape: str = "pd"
    prompt_tokens: tuple[int, int] = (8, 512)
    output_tokens: tuple[int, int] = (1, 64)
    request_timeout_s: float = 120.0
    drain_s: float = 60.0
    seed: int = 0

    def warmup(self) -> float:
        return self.warmup_s if self.warmup_s is not None else min(60.0, self.seconds / 5)


@dataclass
class Tally:
    """Outcomes so far; a request is in flight from its send to its outcome."""

    sent: int = 0
    completed: int = 0
    tokens: int = 0
    in_flight: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)

    def done(self) -> int:
        return self.completed + sum(self.refused.values()) + sum(self.failed.values())


class RssLog:
    """RSS samples of named processes (Linux /proc), in bytes."""

    def __init__(self, pids: Callable[[], dict[str, list[int]]]) -> None:
        self.pids = pids  # name -> pids, asked at each sample (a restart changes them)
        self.samples: dict[str, list[tuple[float, int]]] = {}

    def sample(self, t: float) -> dict[str, int]:
        now = {name: sum(rss_bytes(pid) for pid in pids) for name, pids in self.pids().items()}
        for name, rss in now.items():
            self.samples.setdefault(name, []).append((t, rss))
        return now

    def cpu_s(self) -> dict[str, float]:
        """CPU seconds used so far by each name's processes (the living ones)."""
        from slos_serve.bench.http_overhead import cpu_seconds

        out = {}
        for name, pids in self.pids().items():
            total = 0.0
            for pid in pids:
                try:
                    total += cpu_seconds(pid)
                except OSError:  # gone meanwhile
                    pass
            out[name] = total
        return out

    def mean(self, name: str, until: float) -> float:
        window = [r for t, r in self.samples.get(name, []) if until - RSS_WINDOW_S <= t <= until]
        return sum(window) / len(window) if window else 0.0

    def peak(self, name: str) -> int:
        return max((r for _, r in self.samples.get(name, [])), default=0)


def rss_bytes(pid: int) -> int:
    """A process's resident set (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


# ------------------------------------------------------------------ the load --


def _request(rng: random.Random, s: SoakSettings) -> Any:
    from proto import slos_serve_pb2 as pb

    n = rng.randint(*s.prompt_tokens)
    ids = [rng.randrange(*TOKEN_IDS) for _ in range(n)]
    return pb.GenerateRequest(
        token_ids=pb.TokenIds(ids=ids),
        sampling=pb.SamplingParams(max_tokens=rng.randint(*s.output_tokens), temperature=0.0,
                                   ignore_eos=True))


async def _one(stub: Any, request: Any, tally: Tally, timeout_s: float,
               metadata: tuple[tuple[str, str], ...]) -> None:
    """One request read to its end; its outcome tallied (cancelled: none, it stays in
    flight and counts as hung)."""
    import grpc

    tally.sent += 1
    tally.in_flight += 1
    started, tokens, final = False, 0, None
    try:
        async for msg in stub.Generate(request, timeout=timeout_s, metadata=metadata):
            kind = msg.WhichOneof("kind")
            if kind == "started":
                started = True
            elif kind == "chunk":
                tokens += len(msg.chunk.token_ids)
            elif kind == "final":
                final = msg.final
    except grpc.aio.AioRpcError as err:
        (tally.failed if started else tally.refused)[err.code().name] += 1
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # the load generator's own bug: counted, never lost
        tally.failed[f"client {type(exc).__name__}"] += 1
    else:
        if final is None:
            tally.failed["no Final"] += 1
        elif final.finish_reason not in NORMAL_FINISH:
            tally.failed[f"finish {final.finish_reason}"] += 1
        elif tokens != final.completion_tokens:
            tally.failed["token count != Final's"] += 1
        else:
            tally.completed += 1
            tally.tokens += tokens
    tally.in_flight -= 1


async def _stream(k: int, stub: Any, s: SoakSettings, tally: Tally, stop_at: float,
                  metadata: tuple[tuple[str, str], ...]) -> None:
    rng = random.Random(s.seed * 1_000_003 + k)
    while time.monotonic() < stop_at:
        await _one(stub, _request(rng, s), tally, s.request_timeout_s, metadata)


async def _drive(cluster: LocalCluster, s: SoakSettings, say: Callable[[str], None]
                 ) -> dict[str, Any]:
    """The load and the RSS samples; returns the raw figures."""
    import grpc

    from proto import slos_serve_pb2_grpc as pb_grpc

    tally = Tally()
    rss = RssLog(lambda: {**{p.name: group_members(p.pid) for p in cluster.procs},
                          "load": [os.getpid()]})
    t0 = time.monotonic()
    stop_at, warm_at = t0 + s.seconds, t0 + s.warmup()
    async with grpc.aio.insecure_channel(cluster.target) as channel:
        stub = pb_grpc.SloServeStub(channel)
        tasks = [asyncio.create_task(_stream(k, stub, s, tally, stop_at,
                                             cluster.auth_metadata()))
                 for k in range(s.streams)]
        last_print, last_done, cpu_warm = t0, 0, None
        while time.monotonic() < stop_at:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            sample = rss.sample(now - t0)
            if cpu_warm is None and now >= warm_at:
                cpu_warm = (now - t0, rss.cpu_s())
            if now - last_print >= s.progress_s or now >= stop_at:
                rate = (tally.done() - last_done) / (now - last_print)
                say(_progress_line(now - t0, tally, rate, sample))
                last_print, last_done = now, tally.done()
        ended = time.monotonic() - t0
        rss.sample(ended)
        cpu_end, in_run = rss.cpu_s(), (tally.done(), tally.tokens)
        _, pending = await asyncio.wait(tasks, timeout=s.drain_s)
        hung = tally.in_flight
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    assert cpu_warm is not None  # the loop ran past the warm-up (warmup < seconds)
    cores = {n: (cpu_end[n] - cpu_warm[1].get(n, 0.0)) / max(1e-9, ended - cpu_warm[0])
             for n in cpu_end}
    return {"tally": tally, "hung": hung, "rss": rss, "warm_t": warm_at - t0,
            "end_t": ended, "drain_s": time.monotonic() - t0 - ended, "cores": cores,
            "in_run": in_run}


def _progress_line(t: float, tally: Tally, rate: float, rss: dict[str, int]) -> str:
    mb = " ".join(f"{n} {v / 2**20:.0f}" for n, v in rss.items())
    bad = sum(tally.refused.values()) + sum(tally.failed.values())
    return (f"  [{t:5.0f} s] done {tally.done()} ({rate:.0f} req/s), in flight "
            f"{tally.in_flight}, refused+failed {bad} | RSS MB: {mb}")


# --------------------------------------------------------------- the figures --


def coordinator_count(metrics_url: str) -> int | None:
    """Requests the coordinator counted: validated (served or rejected by the planner) plus
    refused by validation. None if its metrics cannot be read."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(metrics_url, timeout=10) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in ("slos_requests_total", "slos_requests_invalid_total"):
                total += sample.value
    return int(total)


def _figures(s: SoakSettings, raw: dict[str, Any], counted: int | None,
             restarts: dict[str, int]) -> dict[str, Any]:
    tally, rss = raw["tally"], raw["rss"]
    unaccounted = tally.sent - tally.done() - raw["hung"]
    memory = {}
    for name in rss.samples:
        warm, end = rss.mean(name, raw["warm_t"]), rss.mean(name, raw["end_t"])
        memory[name] = {"warm_mb": warm / 2**20, "end_mb": end / 2**20,
                        "peak_mb": rss.peak(name) / 2**20, "cpu_cores": raw["cores"][name],
                        "growth_pct": 100.0 * (end - warm) / warm if warm else None}
    judged = {n: m for n, m in memory.items() if n != "load"}  # the cluster's processes
    rss_ok = all(m["growth_pct"] is not None and m["growth_pct"] < 100 * RSS_GROWTH_LIMIT
                 for m in judged.values())
    accounted = unaccounted == 0 and raw["hung"] == 0 and counted in (None, tally.sent)
    verdict = {"rss_growth_below_5pct": rss_ok, "all_accounted": accounted,
               "no_failures": not tally.failed, "no_restarts": not any(restarts.values())}
    return {
        "engine": "sim (SIMULATED)", "shape": s.shape, "cluster": SHAPES[s.shape],
        "settings": dataclasses.asdict(s) | {"warmup_s": s.warmup()},
        "run_s": raw["end_t"], "drain_s": raw["drain_s"],
        "requests": {"sent": tally.sent, "completed": tally.completed,
                     "refused": dict(tally.refused), "failed": dict(tally.failed),
                     "hung": raw["hung"], "unaccounted": unaccounted,
                     "coordinator_counted": counted},
        "rate_req_s": raw["in_run"][0] / raw["end_t"],
        "tokens_s": raw["in_run"][1] / raw["end_t"],
        "rss": memory, "restarts": restarts,
        "pass": verdict | {"all": all(verdict.values())},
    }


def soak(model: str, s: SoakSettings, say: Callable[[str], None] | None = None
         ) -> dict[str, Any]:
    """Runs the soak; returns its figures (see `soak_table`)."""
    say = say or (lambda text: print(text, file=sys.stderr, flush=True))
    if s.shape not in SHAPES:
        raise ValueError(f"shape {s.shape!r}: choose from {', '.join(SHAPES)}")
    if not 0 <= s.warmup() < s.seconds - 1:
        raise ValueError(f"warm-up {s.warmup()} s: from 0 to the run's length "
                         f"({s.seconds} s) less 1 s")
    spec = ClusterSpec(model=model, engine="sim", http=False, **SHAPES[s.shape])
    with LocalCluster(spec) as cluster:
        say(f"soak: {s.streams} streams for {s.seconds:.0f} s (warm-up {s.warmup():.0f} s) "
            f"against {s.shape} {SHAPES[s.shape]}, SIMULATED engine")
        raw = asyncio.run(_drive(cluster, s, say))
        counted = coordinator_count(cluster.metrics_urls()["coordinator"])
        restarts = cluster.restarts()
    return _figures(s, raw, counted, restarts)


def soak_table(res: dict[str, Any]) -> str:
    r, p = res["requests"], res["pass"]
    lines = [
        f"soak, {res['engine']}, {res['shape']} {res['cluster']}: "
        f"{res['settings']['streams']} streams, {res['run_s']:.0f} s "
        f"(warm-up {res['settings']['warmup_s']:.0f} s), drain {res['drain_s']:.1f} s",
        f"requests: sent {r['sent']} = completed {r['completed']} + refused "
        f"{_by_status(r['refused'])} + failed {_by_status(r['failed'])} + hung {r['hung']}; "
        f"unaccounted {r['unaccounted']}; the coordinator counted {r['coordinator_counted']}",
        f"rate: {res['rate_req_s']:.1f} req/s over the run, {res['tokens_s']:.0f} tokens/s "
        f"(load generator and cluster on this machine's {os.cpu_count()} cores)",
        "RSS (MB)       warm-up end      end     peak   growth   CPU (cores, after warm-up)",
    ]
    for name, m in res["rss"].items():
        growth = "n/a" if m["growth_pct"] is None else f"{m['growth_pct']:+.2f} %"
        note = "  (load generator, not judged)" if name == "load" else ""
        lines.append(f"  {name:<12} {m['warm_mb']:12.1f} {m['end_mb']:8.1f} "
                     f"{m['peak_mb']:8.1f} {growth:>9} {m['cpu_cores']:6.2f}{note}")
    lines.append(f"restarts: {res['restarts']}")
    checks = ", ".join(f"{k} {'ok' if v else 'FAIL'}" for k, v in p.items() if k != "all")
    lines.append(f"{'PASS' if p['all'] else 'FAIL'}: {checks}")
    return "\n".join(lines)


def _by_status(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    return f"{total} {counts}" if counts else "0"

