"""Across hosts for real, on the SIMULATED engine: two network namespaces joined by a veth
pair ("machines" A and B, each with its own address), a prefill and a decode worker on
each, the coordinator on A, started the static way (tests/netns_cluster.py), mutual TLS.

The load generator runs on A (tests/netns_client.py). 100 greedy streams run undisturbed
(their outputs are the reference), then 100 again, and mid-stream node B is lost: every
process of B killed, or B's end of the veth taken down (a cable pulled). What must hold
(as for one machine, tests/test_faults_sim.py): no stream hangs, none ends silently (a
Completion or an explicit status), >= 95 % equal the undisturbed run exactly; and the
undisturbed run did cross the veth (hand-offs from A to B and back, bytes counted by the
kernel on B's end of the veth).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import netns
import pytest
from netns import Hosts
from netns_cluster import StaticCluster
from sim_serving import GREEDY, prompt_ids, sim_tokens

from slos_serve.up import ClusterSpec

pytestmark = pytest.mark.timeout(300)

STREAMS = 100
MAX_TOKENS = 100
SLOWDOWN = 6.0  # fewer tokens per second than tests/test_faults_sim.py: a shared coordinator


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    if reason := netns.skip_reason():
        pytest.skip(reason)
    netns.remove_stale()
    with Hosts.create() as h:
        yield h


def _exact(o: dict, want: list[int]) -> bool:
    c = o["completion"]
    return (c is not None and c["finish_reason"] == "length" and c["token_ids"] == want
            and o["tokens"] == want)


@pytest.mark.parametrize("fault", ["kill", "link-down"])
def test_a_node_lost_mid_load_loses_no_request(hosts: Hosts, model_dir: str, tmp_path: Path,
                                               fault: str) -> None:
    """kill: every process of B SIGKILLed (its sockets close: the coordinator sees it at
    once); link-down: B's end of the veth taken down (B's workers run on, unreachable, and
    nothing tells the coordinator: its keepalive pings and health polls must)."""
    a, b = hosts.a, hosts.b
    spec = ClusterSpec(model=model_dir, engine="sim", restart=False, start_timeout_s=300,
                       extra_worker_args=["--sim-slowdown", str(SLOWDOWN)])
    cluster = StaticCluster(hosts, spec, [("prefill", a), ("decode", b), ("prefill", b),
                                          ("decode", a)], tmp_path)
    cluster.start()
    on_b = {w.address for w in cluster.workers if w.host is b}
    prompts = [prompt_ids(40 + i % 7, offset=i) for i in range(STREAMS)]
    phase = {"prompts": prompts, "max_tokens": MAX_TOKENS, "options": GREEDY}
    killed: list[int] = []
    b_bytes: list[tuple[int, int]] = [b.rx_tx_bytes()]

    def lose_node_b() -> None:
        b_bytes.append(b.rx_tx_bytes())
        if fault == "kill":
            killed.extend(netns.kill_all_in(b.ns))
        else:
            killed.extend(netns.pids_in(b.ns))  # still running, cut off
            b.link(False)

    undisturbed, faulted = cluster.run_client(
        [phase, {**phase, "fault_after_tokens": 5}], on_fault=lose_node_b)
    print(cluster.client_stderr)

    # The reference run: every stream exact, every worker used, hand-offs across the veth.
    for o, p in zip(undisturbed, prompts, strict=True):
        assert _exact(o, sim_tokens(p, MAX_TOKENS, None)), (o["error"], cluster.logs())
    pairs = {(o["completion"]["prefill"], o["completion"]["decode"]) for o in undisturbed}
    assert {w.address for w in cluster.workers} <= {x for pair in pairs for x in pair}
    assert any((p in on_b) != (d in on_b) for p, d in pairs), f"no hand-off crossed: {pairs}"
    rx = b_bytes[1][0] - b_bytes[0][0]
    tx = b_bytes[1][1] - b_bytes[0][1]
    # B's decode worker streamed its share of the tokens to A (a few bytes each).
    assert rx > 0 and tx > STREAMS * MAX_TOKENS, (rx, tx)

    # Node B lost mid-stream: nothing hung or silent, >= 95 % exact, B's streams moved.
    assert len(killed) >= 2, "B's two workers were not running at the fault"
    assert not [o for o in faulted if o["hung"]], "streams hung"
    silent = [o for o in faulted if o["completion"] is None and o["error"] is None]
    assert not silent, "streams ended with neither a Completion nor a status"
    assert all(o["error"]["code"] for o in faulted if o["error"]), "an error without a status"
    want = [o["completion"]["token_ids"] for o in undisturbed]
    exact = [_exact(o, w) for o, w in zip(faulted, want, strict=True)]
    errors = [o["error"] for o in faulted if o["error"]]
    assert sum(exact) >= 0.95 * STREAMS, (sum(exact), errors[:5])
    moved = [o for o in faulted if o["started"] and o["started"]["decode"] in on_b]
    print(f"{fault}: {sum(exact)} of {STREAMS} exact, {len(moved)} were decoding on B, "
          f"errors {errors[:3]}")
    assert moved, "no stream was decoding on B when it was lost"
    for o, ok in zip(faulted, exact, strict=True):
        if ok and o in moved:
            assert o["completion"]["decode"] not in on_b and o["completion"]["resumes"] >= 1
