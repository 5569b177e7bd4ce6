"""Across hosts for real, on vLLM engines: a prefill worker in namespace A, a decode worker
in namespace B (joined by a veth pair, each with its own address), the coordinator on A,
started the static way (tests/netns_cluster.py), mutual TLS.

Every request is prefilled on A and decoded on B: its KV crosses the veth over NIXL (the
decode engine reads it from the prefill engine's side channel at A's address); what must
hold is tests/netns_kv.py's (outputs equal a colocated engine's, the KV's bytes crossed).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import netns
import netns_kv
import pytest
from netns import Hosts
from netns_cluster import StaticCluster

from slos_serve.up import ClusterSpec

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def hosts() -> Iterator[Hosts]:
    with netns.made_or_skipped() as h:
        yield h


def test_kv_crosses_the_veth_and_outputs_equal_a_colocated_engine(
        hosts: Hosts, model_dir: str, prompts: list[list[int]], reference,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    # `reference` first: its engine has stopped before the two workers start.
    a, b = hosts.a, hosts.b
    log_dir = tmp_path_factory.mktemp("netns-vllm")
    spec = ClusterSpec(model=model_dir, engine="vllm", scheduler="vllm", restart=False)
    cluster = StaticCluster(hosts, spec, [("prefill", a), ("decode", b)], Path(log_dir),
                            host_env={a.ns: netns_kv.ucx_env(a), b.ns: netns_kv.ucx_env(b)})
    cluster.start()
    # Warm: the coordinator's warm-up hand-off has crossed; count only the test's requests.
    cluster.run_client([netns_kv.phase(prompts[:1])])
    before = b.rx_tx_bytes()
    (outcomes,) = cluster.run_client([netns_kv.phase(prompts)])
    received = b.rx_tx_bytes()[0] - before[0]
    netns_kv.check(outcomes, prompts, reference["greedy"], model_dir, a, b, received,
                   cluster.logs)
