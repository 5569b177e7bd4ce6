"""The decode side's window of recent hand-off waits (metrics.RecentWaits): bounded, its
percentiles follow the present, and /metrics shows them."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry

from slos_serve.metrics import RecentWaits, WaitSummary, WorkerMetrics


def test_an_empty_window_reports_nothing() -> None:
    assert RecentWaits().summary() == WaitSummary(0, 0.0, 0.0)


def test_the_window_keeps_the_last_waits_only() -> None:
    w = RecentWaits(size=100)
    for _ in range(1000):
        w.add(2.0)  # an old, slow period
    for k in range(100):
        w.add(0.001 * (k + 1))  # 1 .. 100 ms, the present
    s = w.summary()
    assert s.count == 100
    assert s.p50_s == 0.050 and s.p99_s == 0.099


def test_a_decode_workers_hand_offs_reach_the_window_and_metrics() -> None:
    registry = CollectorRegistry()
    m = WorkerMetrics("decode", "w0", registry)
    for ms in (4, 5, 6, 300):
        m.handoff(8, 16, ms / 1000)
    assert m.handoffs.summary() == WaitSummary(4, 0.005, 0.300)
    labels = {"role": "decode", "worker": "w0"}
    name = "slos_worker_kv_handoff_recent_seconds"
    assert registry.get_sample_value(name, {**labels, "quantile": "0.99"}) == 0.300
    assert registry.get_sample_value(name, {**labels, "quantile": "0.5"}) == 0.005


def test_the_bench_reads_a_clusters_hand_off_percentiles(sim_cluster) -> None:
    """After requests were handed off, ClusterInfo carries each decode worker's recent
    hand-off waits, and the bench's summary of them (SIMULATED engines)."""
    import asyncio
    from types import SimpleNamespace

    from slos_serve.bench.runner import handoff_latency
    from slos_serve.bench.systems import ClusterSystem
    from slos_serve.client import Client

    with Client(sim_cluster.target, timeout=30) as client:
        for k in range(6):
            client.generate([3 + k, 5, 7, 11], max_tokens=3, temperature=0)
    system = SimpleNamespace(name="sim", target=sim_cluster.target)
    system.handoffs = lambda: ClusterSystem.handoffs(system)  # type: ignore[arg-type]
    deadline = time.monotonic() + 10  # the coordinator polls the workers' loads
    while True:
        found = asyncio.run(handoff_latency(system))
        counted = sum(w["count"] for w in found.get("workers", {}).values())
        if counted >= 6 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    # the requests' hand-offs (the coordinator's warm-ups stay out of the window)
    assert counted >= 6
    assert 0 < found["p50_ms"] <= found["p99_ms"] < 5000
    assert asyncio.run(handoff_latency(SimpleNamespace(name="vllm-serve"))) == {}
