"""Prometheus metrics, scraped over HTTP from a real cluster on the SIMULATED engine.

One coordinator, one prefill and one decode worker (processes, gRPC on loopback, engines
simulated). The tests send requests in several tiers, scrape /metrics like Prometheus
would, and check the figures against what the client saw. Counters are compared as deltas
around each test, so the tests share the cluster and run in any order.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sim_serving import Samples, scrape, value

from slos_serve.client import Chunk, Client, Completion, Started
from slos_serve.errors import InvalidRequest
from slos_serve.metrics import (
    CUSTOM_TIER,
    CoordinatorMetrics,
    invalid_reason,
    kv_bytes_per_token,
    metrics_port_arg,
)
from slos_serve.up import ClusterSpec, LocalCluster

pytestmark = pytest.mark.timeout(120)

SIM_BLOCK_SIZE = 16  # SimEngine's default block size
SIM_KV_BLOCKS = 4096  # the workers' --sim-kv-blocks default



@pytest.fixture(scope="module")
def cluster(model_dir: str):
    c = LocalCluster(ClusterSpec(model=model_dir, engine="sim", prefill=1, decode=1))
    c.start(timeout_s=90, progress=False)
    try:
        yield c
    finally:
        c.stop()


def has(samples: Samples, name: str) -> bool:
    return any(n == name for n, _ in samples)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def wait_scrape(url: str, ready: Callable[[Samples], bool], what: str, timeout_s=20.0):
    """Scrapes until `ready`: a stream's last message reaches the client a moment before
    the server-side handler has finished (and counted) the request."""
    deadline = time.monotonic() + timeout_s
    while True:
        samples = scrape(url)
        if ready(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics never showed {what}")
        time.sleep(0.05)


def prompt(n: int, offset: int = 0) -> list[int]:
    return [3 + (offset * 37 + 11 * i) % 200 for i in range(n)]


# (prompt length, max_tokens, SLO): two named tiers, and an explicit TTFT no request can
# meet (its tier is "custom"); max_tokens=1 ends at the prefill.
SERVED = [
    (5, 6, {"tier": "tight"}),
    (40, 6, {"tier": "tight"}),
    (17, 4, {"tier": "loose"}),
    (100, 4, {"tier": "loose"}),
    (3, 1, {"tier": "loose"}),
    (9, 4, {"ttft_ms": 0.001}),
]


def serve_requests(target: str) -> list[Completion]:
    """Every request of SERVED, then two that validation refuses."""
    done: list[Completion] = []
    with Client(target, timeout=30) as client:
        for k, (n, max_tokens, slo) in enumerate(SERVED):
            done.append(client.generate(prompt(n, k), max_tokens=max_tokens, temperature=0,
                                        ignore_eos=True, **slo))
        with pytest.raises(InvalidRequest):
            client.generate(prompt(4), max_tokens=0, tier="tight")
        with pytest.raises(InvalidRequest):
            client.generate(prompt(4), max_tokens=4, tier="no-such-tier")
    return done


def check_tier_figures(coord0: Samples, coord: Samples, tier: str,
                       mine: list[Completion]) -> None:
    """One tier's decisions, verdicts and latency histograms match what its clients saw."""

    def d(name: str, **labels: str) -> float:
        return delta(coord0, coord, name, **labels)

    for decision in ("admitted", "best_effort", "rejected"):
        n = sum(c.decision.value == decision for c in mine)
        assert d("slos_requests_total", tier=tier, decision=decision) == n
        assert value(coord, "slos_requests_total", tier=tier, decision=decision) == n
    assert d("slos_requests_finished_total", tier=tier, reason="length") == len(mine)
    assert value(coord, "slos_requests_in_flight", tier=tier) == 0
    for objective, met in (("ttft", [c.ttft_met for c in mine]),
                           ("tpot", [c.tpot_met for c in mine]),
                           ("both", [c.slo_met for c in mine])):
        assert d("slos_slo_attained_total", tier=tier, objective=objective) == sum(met)
        assert d("slos_slo_missed_total", tier=tier, objective=objective) == (
            len(met) - sum(met))
    assert d("slos_ttft_seconds_count", tier=tier) == len(mine)
    assert d("slos_ttft_seconds_sum", tier=tier) == pytest.approx(
        sum(c.ttft_ms for c in mine) / 1000, rel=1e-6)
    several = [c for c in mine if c.completion_tokens > 1]
    assert d("slos_tpot_seconds_count", tier=tier) == len(several)
    assert d("slos_tpot_seconds_sum", tier=tier) == pytest.approx(
        sum(c.tpot_ms for c in several) / 1000, rel=1e-6)


def check_coordinator_figures(coord0: Samples, coord: Samples, done: list[Completion]) -> None:
    # the planner cannot meet a 0.001 ms TTFT: that request is served best effort
    assert [c.decision.value for c in done] == ["admitted"] * 5 + ["best_effort"]
    for tier in ("tight", "loose", CUSTOM_TIER):
        check_tier_figures(coord0, coord, tier, [c for c in done if c.tier == tier])
    assert delta(coord0, coord, "slos_slo_missed_total", tier=CUSTOM_TIER,
                 objective="ttft") == 1
    assert delta(coord0, coord, "slos_requests_invalid_total",
                 reason="sampling.max_tokens") == 1
    assert delta(coord0, coord, "slos_requests_invalid_total", reason="slo.tier") == 1
    assert delta(coord0, coord, "slos_requests_invalid_total") == 2
    # TTFT and TPOT buckets span 1 ms .. 30 s.
    les = {float(dict(ls)["le"]) for n, ls in coord if n == "slos_ttft_seconds_bucket"}
    assert min(les) == 0.001 and max(les - {math.inf}) == 30.0


def check_worker_figures(urls: dict[str, str], addresses: dict[str, str],
                         before: dict[str, Samples]) -> None:
    """Every request was prefilled; all but the max_tokens=1 one were handed off."""
    prefill0, decode0 = before["prefill-0"], before["decode-0"]
    handed_off = [(n, m) for n, m, _ in SERVED if m > 1]
    prefill = wait_scrape(
        urls["prefill-0"],
        lambda s: delta(prefill0, s, "slos_worker_requests_total") == len(SERVED),
        "every prefill counted")
    decode = wait_scrape(
        urls["decode-0"],
        lambda s: delta(decode0, s, "slos_worker_requests_total") == len(handed_off),
        "every decode counted")
    me = {"role": "prefill", "worker": addresses["prefill-0"]}
    assert delta(prefill0, prefill, "slos_worker_requests_total", rpc="prefill", outcome="ok",
                 **me) == len(SERVED)
    me = {"role": "decode", "worker": addresses["decode-0"]}
    assert delta(decode0, decode, "slos_worker_requests_total", rpc="decode", outcome="ok",
                 **me) == len(handed_off)
    assert delta(decode0, decode, "slos_worker_kv_handoff_blocks_count", **me) == len(handed_off)
    assert delta(decode0, decode, "slos_worker_kv_handoff_blocks_sum", **me) == sum(
        math.ceil((n + 1) / SIM_BLOCK_SIZE) for n, _ in handed_off)  # prompt + first token
    assert delta(decode0, decode, "slos_worker_kv_handoff_seconds_count", **me) == len(
        handed_off)
    assert delta(decode0, decode, "slos_worker_kv_handoff_seconds_sum", **me) > 0
    assert not has(decode, "slos_worker_kv_handoff_bytes_count")  # the sim moves no KV bytes
    for samples, role in ((prefill, "prefill"), (decode, "decode")):
        check_idle_worker(samples, {"role": role, "worker": addresses[f"{role}-0"]})


def check_idle_worker(samples: Samples, me: dict[str, str]) -> None:
    assert value(samples, "slos_worker_waiting", **me) == 0
    assert value(samples, "slos_worker_running", **me) == 0
    assert value(samples, "slos_worker_kv_blocks_used", **me) == 0
    assert value(samples, "slos_worker_kv_blocks_total", **me) == SIM_KV_BLOCKS
    assert value(samples, "slos_worker_kv_usage_ratio", **me) == 0
    assert value(samples, "slos_worker_spec_acceptance_ratio", **me) == 0
    assert value(samples, "slos_worker_engine_steps_total", **me) > 0
    assert value(samples, "slos_worker_mean_step_seconds", **me) > 0


def test_metrics_match_what_was_served(cluster: LocalCluster) -> None:
    urls = cluster.metrics_urls()
    addresses = {p.name: p.address for p in cluster.procs}
    before = {n: scrape(urls[n]) for n in ("coordinator", "prefill-0", "decode-0")}
    done = serve_requests(cluster.target)
    assert [c.tier for c in done] == ["tight"] * 2 + ["loose"] * 3 + [CUSTOM_TIER]
    assert not done[-1].ttft_met and not done[-1].slo_met
    coord0 = before["coordinator"]
    coord = wait_scrape(
        urls["coordinator"],
        lambda s: delta(coord0, s, "slos_requests_finished_total") == len(SERVED),
        "every request finished")
    check_coordinator_figures(coord0, coord, done)
    check_worker_figures(urls, addresses, before)


def test_in_flight_and_cancelled(cluster: LocalCluster) -> None:
    """A long request shows as in flight and running; leaving its stream counts it cancelled."""
    urls = cluster.metrics_urls()
    decode_addr = next(p.address for p in cluster.procs if p.name == "decode-0")
    coord0, decode0 = scrape(urls["coordinator"]), scrape(urls["decode-0"])
    with Client(cluster.target, timeout=30) as client:
        with client.stream(prompt(40, 99), max_tokens=1500, temperature=0, ignore_eos=True,
                           tier="loose") as stream:
            events = iter(stream)
            assert isinstance(next(events), Started)
            assert isinstance(next(events), Chunk)  # the prefill's first token
            assert isinstance(next(events), Chunk)  # decoding: 1500 tokens take seconds
            coord = scrape(urls["coordinator"])
            assert value(coord, "slos_requests_in_flight", tier="loose") == 1
            me = {"role": "decode", "worker": decode_addr}
            decode = scrape(urls["decode-0"])
            assert value(decode, "slos_worker_running", **me) == 1
            assert value(decode, "slos_worker_kv_blocks_used", **me) >= math.ceil(
                41 / SIM_BLOCK_SIZE)
            assert 0 < value(decode, "slos_worker_kv_usage_ratio", **me) < 1
        # leaving the stream cancels the request
    coord = wait_scrape(
        urls["coordinator"],
        lambda s: delta(coord0, s, "slos_requests_finished_total", tier="loose",
                        reason="cancelled") == 1,
        "the cancelled request")
    assert value(coord, "slos_requests_in_flight", tier="loose") == 0
    assert delta(coord0, coord, "slos_requests_total", tier="loose", decision="admitted") == 1
    assert delta(coord0, coord, "slos_ttft_seconds_count") == 0  # no Final, no verdict
    assert delta(coord0, coord, "slos_slo_missed_total") == 0
    decode = wait_scrape(
        urls["decode-0"],
        lambda s: delta(decode0, s, "slos_worker_requests_total", rpc="decode",
                        outcome="cancelled") == 1
        and value(s, "slos_worker_running") == 0,
        "the decode cancelled and its engine idle")
    assert value(decode, "slos_worker_kv_blocks_used") == 0


# ---------------------------------------------------------------- pure parts --


def test_invalid_reason_is_a_bounded_field_name() -> None:
    assert invalid_reason("sampling.max_tokens: must be > 0, got 0") == "sampling.max_tokens"
    assert invalid_reason("slo.tier: unknown tier 'x' (known: loose, tight)") == "slo.tier"
    assert invalid_reason("sampling.new_field: bad") == "sampling"
    assert invalid_reason("'; DROP TABLE: anything a client wrote") == "other"
    assert invalid_reason("no colon at all") == "other"


def test_kv_bytes_per_token(model_dir: str, tmp_path: Path) -> None:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    expected = 2 * config["num_hidden_layers"] * kv_heads * head_dim * 4
    assert kv_bytes_per_token(model_dir, 4) == expected
    assert kv_bytes_per_token(None, 4) is None
    assert kv_bytes_per_token(str(tmp_path), 4) is None  # no config.json


def test_metrics_port_flag() -> None:
    assert metrics_port_arg("0") == 0
    assert metrics_port_arg("9400") == 9400
    for bad in ("-1", "65536", "x"):
        with pytest.raises(Exception, match="not a port number"):
            metrics_port_arg(bad)


def test_custom_and_table_tiers_start_at_zero() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    CoordinatorMetrics(["tight", "loose"], registry=registry)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(generate_latest(registry).decode())
        for s in f.samples
    }
    tiers = {dict(ls).get("tier") for n, ls in samples if n == "slos_requests_total"}
    assert tiers == {"tight", "loose", CUSTOM_TIER}
    assert value(samples, "slos_requests_total") == 0
