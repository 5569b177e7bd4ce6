"""Across hosts for real, on the SIMULATED engine: two network namespaces joined by a veth
pair ("machines" A and B, each with its own address), a prefill and a decode worker on
each, the coordinator on A, started the static way (tests/netns_cluster.py), mutual TLS.

The load generator runs on A (tests/netns_client.py); the scenario and what must hold
are tests/netns_load.py's: 100 greedy streams undisturbed, then 100 again with node B lost
mid-stream (every process of B killed, or B's end of the veth taken down: a cable pulled),
and no request lost.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import netns
import netns_load
import pytest
from netns import Hosts
from netns_cluster import StaticCluster

from slos_serve.up import ClusterSpec

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    with netns.made_or_skipped() as h:
        yield h


@pytest.mark.parametrize("fault", ["kill", "link-down"])
def test_a_node_lost_mid_load_loses_no_request(hosts: Hosts, model_dir: str, tmp_path: Path,
                                               fault: str) -> None:
    """kill: the coordinator sees B's sockets close at once; link-down: nothing tells it,
    its keepalive pings and health polls must find out."""
    a, b = hosts.a, hosts.b
    spec = ClusterSpec(model=model_dir, engine="sim", restart=False, start_timeout_s=300,
                       sim_slowdown=netns_load.SLOWDOWN)
    cluster = StaticCluster(hosts, spec, [("prefill", a), ("decode", b), ("prefill", b),
                                          ("decode", a)], tmp_path)
    cluster.start()
    loss = netns_load.NodeLoss(b, fault)
    outcomes = cluster.run_client(netns_load.phases(), on_fault=loss)
    print(cluster.client_stderr)
    print(netns_load.check(outcomes, loss, len(cluster.workers), cluster.logs))
