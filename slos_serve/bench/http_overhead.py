"""On the SIMULATED engine: what the OpenAI HTTP front adds over the gRPC path.

`slos-serve bench http-overhead` starts a local cluster (`engine="sim"`) per shape and
measures, through its HTTP front (aiohttp client, POST /v1/completions) and through its
gRPC service (the SDK's `AsyncClient.stream`), on the same cluster with the same prompt:

- TTFT at concurrency 1: sequential requests, the two paths interleaved A/B/B/A so drift
  (other processes, the planner's state) falls on both alike; p50 / p99 of each and the
  difference of the p50s (the issue's target: <= 1 ms).
- Throughput: `concurrency` closed-loop clients (each sends its next request when its
  last one ended) of `max_tokens=2` requests for `seconds`, after a warm-up; requests/s
  through HTTP streamed, HTTP whole and gRPC (the issue's target: >= 1,000 req/s).
- The client alone: the same load against stub servers that answer at once with bytes of
  the same shape (slos_serve/bench/stub_server.py, its own process): the load generator's
  own ceiling on this machine, which bounds every throughput figure above; and a raw
  grpc.aio stub's call (`grpc-raw`, the way the coordinator calls a worker).
- CPU per request of every process (client, coordinator, workers, stub) over each window
  (/proc), and the rate the cores would allow at that cost. The stub runs give the floor:
  a request through the front crosses one HTTP hop (client + server) and one gRPC hop
  (the coordinator's call to its worker, both sides) at least; at the stubs' CPU per call,
  the cores allow at most cores x 1000 / (that sum) requests/s, before any work.

Everything runs on this machine's cores at once (the clients, the coordinator, the worker
processes): the figures are the whole system's on those cores, not the front's alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from slos_serve.bench.corpus import load_corpus
from slos_serve.bench.overhead import percentile
from slos_serve.bench.workload import cut_prompt
from slos_serve.up import ClusterSpec, LocalCluster, free_port

# name -> (ClusterSpec fields); the first is the default (the planner) configuration.
SHAPES: dict[str, dict[str, Any]] = {
    "mixed1-slos": {"mixed": 1, "scheduler": "slos"},
    "mixed1-vllm": {"mixed": 1, "scheduler": "vllm"},
    "pd-slos": {"prefill": 1, "decode": 1, "scheduler": "slos"},
    "pd-vllm": {"prefill": 1, "decode": 1, "scheduler": "vllm"},
}
PATHS = ("http-stream", "http-whole", "grpc")
Call = Callable[[], Awaitable[float]]  # one request; returns its TTFT (s)


class RawGrpcPath:
    """A generated stub's Generate over grpc.aio, no SDK: how the coordinator calls a
    worker (the stub runs only: the floor of one gRPC hop)."""

    def __init__(self, target: str) -> None:
        import grpc

        from proto import slos_serve_pb2 as pb
        from proto import slos_serve_pb2_grpc as pb_grpc

        self.channel = grpc.aio.insecure_channel(target)
        self.stub = pb_grpc.SloServeStub(self.channel)
        self.request = pb.GenerateRequest(sampling=pb.SamplingParams(max_tokens=2))

    async def stream(self) -> float:
        t0 = time.perf_counter()
        async for _ in self.stub.Generate(self.request):
            pass
        return time.perf_counter() - t0

    async def close(self) -> None:
        await self.channel.close()


class CallFailed(RuntimeError):
    """A request did not end with a finish reason (the figure would be meaningless)."""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ clients --


class HttpPath:
    """POST /v1/completions over one aiohttp session (keep-alive connections)."""

    def __init__(self, base_url: str, prompt: list[int]) -> None:
        import aiohttp

        self.url = base_url.rstrip("/") + "/v1/completions"
        self.prompt = prompt
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                             timeout=aiohttp.ClientTimeout(total=60))

    def body(self, max_tokens: int, stream: bool) -> dict[str, Any]:
        return {"prompt": self.prompt, "max_tokens": max_tokens, "temperature": 0.0,
                "ignore_eos": True, "stream": stream}

    async def stream(self, max_tokens: int) -> float:
        """TTFT: from the send to the first SSE chunk (it carries the first token)."""
        t0 = time.perf_counter()
        ttft, reason = None, None
        async with self.session.post(self.url, json=self.body(max_tokens, True)) as resp:
            if resp.status != 200:
                raise CallFailed(f"HTTP {resp.status}: {(await resp.text())[:200]}")
            async for line in resp.content:
                if not line.startswith(b"data: "):
                    continue
                if ttft is None:
                    ttft = time.perf_counter() - t0
                if line.startswith(b"data: [DONE]"):
                    break
                event = json.loads(line[6:])
                reason = event["choices"][0]["finish_reason"] or reason
        if ttft is None or not reason:
            raise CallFailed("stream ended without a finish reason")
        return ttft

    async def whole(self, max_tokens: int) -> float:
        """The whole answer's latency (there is no first token to time)."""
        t0 = time.perf_counter()
        async with self.session.post(self.url, json=self.body(max_tokens, False)) as resp:
            answer = await resp.json()
        if resp.status != 200 or not answer["choices"][0]["finish_reason"]:
            raise CallFailed(f"HTTP {resp.status}: {str(answer)[:200]}")
        return time.perf_counter() - t0

    async def close(self) -> None:
        await self.session.close()


class GrpcPath:
    """Generate through the SDK's AsyncClient (one channel)."""

    def __init__(self, target: str, prompt: list[int]) -> None:
        from slos_serve.client import AsyncClient

        self.client = AsyncClient(target, timeout=60)
        self.prompt = prompt

    async def stream(self, max_tokens: int) -> float:
        """TTFT: from the call to the first Chunk event."""
        from slos_serve.client import Chunk, Completion

        t0 = time.perf_counter()
        ttft, done = None, False
        async for event in self.client.stream(self.prompt, max_tokens=max_tokens,
                                              temperature=0.0, ignore_eos=True):
            if ttft is None and isinstance(event, Chunk):
                ttft = time.perf_counter() - t0
            done = done or isinstance(event, Completion)
        if ttft is None or not done:
            raise CallFailed("stream ended without a Completion")
        return ttft

    async def close(self) -> None:
        await self.client.close()


def _calls(http: HttpPath, grpc_path: GrpcPath, max_tokens: int) -> dict[str, Call]:
    return {"http-stream": lambda: http.stream(max_tokens),
            "http-whole": lambda: http.whole(max_tokens),
            "grpc": lambda: grpc_path.stream(max_tokens)}


# ------------------------------------------------------------- measurements --


async def ttft_ab(http: Call, grpc_call: Call, n: int, warmup: int = 20
                  ) -> dict[str, Any]:
    """n sequential requests per path, interleaved A B B A ... (order effects cancel)."""
    for _ in range(warmup):
        await http()
        await grpc_call()
    got: dict[str, list[float]] = {"http": [], "grpc": []}
    for i in range(n):
        order = (("http", http), ("grpc", grpc_call))
        for name, call in order if i % 2 == 0 else order[::-1]:
            got[name].append(1e3 * await call())
    out: dict[str, Any] = {k: {"ttft_ms_p50": statistics.median(v),
                               "ttft_ms_p99": percentile(v, 99),
                               "ttft_ms_mean": statistics.mean(v)} for k, v in got.items()}
    diffs = [h - g for h, g in zip(got["http"], got["grpc"], strict=True)]
    out["added_ttft_ms_p50"] = out["http"]["ttft_ms_p50"] - out["grpc"]["ttft_ms_p50"]
    out["paired_diff_ms_p50"] = statistics.median(diffs)
    out["requests"] = n
    return out


async def closed_loop(call: Call, concurrency: int, seconds: float,
                      pids: dict[str, int] | None = None, warmup_s: float = 1.0
                      ) -> dict[str, Any]:
    """`concurrency` clients, each sending its next request when its last one ended;
    requests/s: completions in the `seconds` after `warmup_s`. With `pids` (this process is
    added as "client"): each process's CPU ms per request over that window, and the rate
    the machine's cores would allow at that cost (cores x 1000 / the sum)."""
    start = time.perf_counter()
    window = (start + warmup_s, start + warmup_s + seconds)
    counted = {"done": 0, "errors": 0}
    latencies: list[float] = []
    procs = {"client": os.getpid(), **(pids or {})}
    cpu: dict[str, float] = {}

    async def sample_cpu() -> None:
        await asyncio.sleep(warmup_s)
        cpu.update({k: -cpu_seconds(p) for k, p in procs.items()})
        await asyncio.sleep(seconds)
        cpu.update({k: cpu[k] + cpu_seconds(p) for k, p in procs.items()})

    async def client() -> None:
        while (now := time.perf_counter()) < window[1]:
            try:
                await call()
            except Exception as exc:  # noqa: BLE001 - counted, the first shown
                counted["errors"] += 1
                if counted["errors"] == 1:
                    print(f"  request failed: {exc}", file=sys.stderr)
                continue
            end = time.perf_counter()
            if window[0] <= end <= window[1]:
                counted["done"] += 1
                latencies.append(end - now)

    await asyncio.gather(sample_cpu(), *(client() for _ in range(concurrency)))
    # completions inside the window over its length (clients send until its end: the load
    # is the same all through it)
    done = counted["done"]
    per_request = {k: 1e3 * v / max(done, 1) for k, v in cpu.items()}
    return {"requests_per_s": done / seconds, "errors": counted["errors"],
            "latency_ms_p50": 1e3 * percentile(latencies, 50),
            "latency_ms_p99": 1e3 * percentile(latencies, 99),
            "cpu_share": {k: v / seconds for k, v in cpu.items()},
            "cpu_ms_per_request": per_request,
            "cpu_bound_requests_per_s": (os.cpu_count() or 1) * 1e3
            / max(sum(per_request.values()), 1e-9)}


async def _throughput(calls: dict[str, Call], concurrency: int, seconds: float,
                      pids: dict[str, int]) -> dict[str, dict[str, Any]]:
    out = {}
    for name in calls:
        out[name] = await closed_loop(calls[name], concurrency, seconds, pids)
        await asyncio.sleep(0.3)  # let the planner drop the finished requests
    return out


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    prompt_tokens: int = 8
    ttft_output: int = 8
    requests: int = 200
    short_output: int = 2
    concurrency: int = 64
    seconds: float = 5.0


def measure_shape(model: str, shape: str, cfg: Settings, prompt: list[int],
                  latency: bool = True) -> dict[str, Any]:
    """One cluster of `shape`: TTFT A/B (if `latency`), then throughput per path."""
    spec = ClusterSpec(model=model, engine="sim", **SHAPES[shape])
    with LocalCluster(spec) as cluster:
        pids = {p.name: p.popen.pid for p in cluster.procs}

        async def run() -> dict[str, Any]:
            http, grpc_path = HttpPath(cluster.http_url, prompt), GrpcPath(cluster.target, prompt)
            try:
                res: dict[str, Any] = {"shape": shape, **SHAPES[shape]}
                if latency:
                    calls = _calls(http, grpc_path, cfg.ttft_output)
                    res["ttft"] = await ttft_ab(calls["http-stream"], calls["grpc"],
                                                cfg.requests)
                res["throughput"] = await _throughput(
                    _calls(http, grpc_path, cfg.short_output), cfg.concurrency, cfg.seconds,
                    pids)
                return res
            finally:
                await http.close()
                await grpc_path.close()

        return asyncio.run(run())


def measure_client_alone(cfg: Settings, prompt: list[int]) -> dict[str, Any]:
    """The same clients against stub servers (another process) that answer at once."""
    http_port, grpc_port = free_port(), free_port()
    stub = subprocess.Popen([sys.executable, "-m", "slos_serve.bench.stub_server",
                             str(http_port), str(grpc_port)], stdout=subprocess.PIPE)
    try:
        assert stub.stdout is not None
        if stub.stdout.readline().strip() != b"ready":
            raise RuntimeError("the stub server did not start")

        async def run() -> dict[str, Any]:
            http = HttpPath(f"http://127.0.0.1:{http_port}", prompt)
            grpc_path = GrpcPath(f"127.0.0.1:{grpc_port}", prompt)
            raw = RawGrpcPath(f"127.0.0.1:{grpc_port}")
            calls = {**_calls(http, grpc_path, cfg.short_output), "grpc-raw": raw.stream}
            try:
                tput = await _throughput(calls, cfg.concurrency, cfg.seconds,
                                         {"stub": stub.pid})
                return {"shape": "stub servers", "throughput": tput}
            finally:
                await http.close()
                await grpc_path.close()
                await raw.close()

        return asyncio.run(run())
    finally:
        stub.terminate()
        stub.wait(timeout=10)


def http_overhead(model: str, shapes: Sequence[str], cfg: Settings,
                  client_alone: bool = True) -> dict[str, Any]:
    """Every measurement; TTFT A/B on the first shape only (the planner's, by default)."""
    bad = [s for s in shapes if s not in SHAPES]
    if bad:
        raise SystemExit(f"unknown shape(s) {bad}; choose from {', '.join(SHAPES)}")
    prompt = list(cut_prompt(load_corpus(model), cfg.prompt_tokens, 1))
    runs = [measure_shape(model, s, cfg, prompt, latency=i == 0) for i, s in enumerate(shapes)]
    out: dict[str, Any] = {"engine": "SIMULATED", "settings": dataclasses.asdict(cfg),
                           "cores": os.cpu_count(), "runs": runs}
    if client_alone:
        stubs = measure_client_alone(cfg, prompt)
        runs.append(stubs)
        out["floor"] = floor(stubs["throughput"])
    return out


def floor(stub: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The least CPU a request through the front can cost: one HTTP hop and one gRPC hop
    (the coordinator's call to its worker), each at the stubs' CPU per call, both sides."""
    def hop(path: str) -> float:
        return sum(stub[path]["cpu_ms_per_request"].values())

    http_ms, grpc_ms = hop("http-stream"), hop("grpc-raw")
    return {"http_hop_ms": http_ms, "grpc_hop_ms": grpc_ms,
            "max_requests_per_s": (os.cpu_count() or 1) * 1e3 / (http_ms + grpc_ms)}


def http_overhead_table(r: dict[str, Any]) -> str:
    s = r["settings"]
    lines = [f"HTTP front vs gRPC, SIMULATED engine, prompt {s['prompt_tokens']} tokens"]
    first = r["runs"][0]
    if "ttft" in first:
        t = first["ttft"]
        lines += [
            f"TTFT at concurrency 1, {t['requests']} requests per path interleaved, "
            f"max_tokens {s['ttft_output']}, shape {first['shape']}:",
            f"  {'':<8}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}",
            *(f"  {k:<8}{t[k]['ttft_ms_p50']:>9.3f}{t[k]['ttft_ms_p99']:>9.3f}"
              f"{t[k]['ttft_ms_mean']:>9.3f}" for k in ("http", "grpc")),
            f"  added by HTTP: {t['added_ttft_ms_p50']:+.3f} ms (p50 difference), "
            f"{t['paired_diff_ms_p50']:+.3f} ms (median of paired differences)",
        ]
    lines += [
        f"requests/s, max_tokens {s['short_output']}, {s['concurrency']} closed-loop clients, "
        f"{s['seconds']:g} s each; CPU ms per request by process (all on "
        f"{os.cpu_count()} cores); bound = cores x 1000 / the CPU sum:",
        f"  {'shape':<14}{'path':<13}{'req/s':>7}{'lat p50':>9}{'client':>8}{'coord':>7}"
        f"{'workers':>8}{'stub':>6}{'bound':>7}{'err':>5}"]
    for run in r["runs"]:
        for path, t in run["throughput"].items():
            ms = t["cpu_ms_per_request"]
            workers = sum(v for k, v in ms.items() if k not in ("client", "coordinator",
                                                                 "stub"))
            lines.append(
                f"  {run['shape']:<14}{path:<13}{t['requests_per_s']:>7.0f}"
                f"{t['latency_ms_p50']:>7.1f}ms{ms['client']:>8.2f}"
                f"{ms.get('coordinator', 0.0):>7.2f}{workers:>8.2f}{ms.get('stub', 0.0):>6.2f}"
                f"{t['cpu_bound_requests_per_s']:>7.0f}{t['errors']:>5}")
        tp = run["throughput"]
        ratio = tp["http-stream"]["requests_per_s"] / max(tp["grpc"]["requests_per_s"], 1e-9)
        lines.append(f"  {'':<14}http-stream / grpc: {ratio:.2f}")
    if "floor" in r:
        f = r["floor"]
        lines.append(
            f"floor: a request through the front crosses an HTTP hop ({f['http_hop_ms']:.2f} ms "
            f"CPU, both sides, stubs) and a gRPC hop ({f['grpc_hop_ms']:.2f} ms, grpc-raw): at "
            f"most {f['max_requests_per_s']:.0f} requests/s on {r['cores']} cores before any "
            f"work")
    return "\n".join(lines)
