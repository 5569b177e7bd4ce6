"""The decode side's window of recent hand-off waits (metrics.RecentWaits): bounded, its
percentiles follow the present, and /metrics shows them."""

from __future__ import annotations

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
