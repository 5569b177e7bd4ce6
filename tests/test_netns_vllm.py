"""Across hosts for real, on vLLM engines: a prefill worker in namespace A, a decode worker
in namespace B (joined by a veth pair, each with its own address), the coordinator on A,
started the static way (tests/netns_cluster.py), mutual TLS.

Every request is prefilled on A and decoded on B: its KV crosses the veth over NIXL (the
decode engine reads it from the prefill engine's side channel at A's address). Greedy
outputs must equal one colocated engine's (conftest's reference), and the KV must really
have crossed: the kernel's byte counter of B's veth end grows by at least the prompts' KV
bytes (a decode that could not pull would recompute, kv_load_failure_policy=recompute,
and give the same tokens: the outputs alone prove nothing about the transfer).

UCX is told to use TCP over the veth (UCX_TLS=tcp, UCX_NET_DEVICES=the veth end): by
default, UCX on one kernel finds the peer on "the same host" and reads its memory with
cross-memory attach, and the KV would never touch the network.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import netns
import pytest
from conftest import GREEDY
from netns import Hosts
from netns_cluster import StaticCluster

from slos_serve.metrics import kv_bytes_per_token
from slos_serve.up import ClusterSpec

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def hosts() -> Iterator[Hosts]:
    if reason := netns.skip_reason():
        pytest.skip(reason)
    netns.remove_stale()
    with Hosts.create() as h:
        yield h


def _ucx_env(host: netns.Host) -> dict[str, str]:
    return {"UCX_TLS": "tcp", "UCX_NET_DEVICES": host.ifname}


def test_kv_crosses_the_veth_and_outputs_equal_a_colocated_engine(
        hosts: Hosts, model_dir: str, prompts: list[list[int]], reference,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    # `reference` first: its engine has stopped before the two workers start.
    a, b = hosts.a, hosts.b
    log_dir = tmp_path_factory.mktemp("netns-vllm")
    spec = ClusterSpec(model=model_dir, engine="vllm", scheduler="vllm", restart=False)
    cluster = StaticCluster(hosts, spec, [("prefill", a), ("decode", b)], Path(log_dir),
                            host_env={a.ns: _ucx_env(a), b.ns: _ucx_env(b)})
    cluster.start()
    phase = {"prompts": prompts, "max_tokens": GREEDY["max_tokens"],
             "options": {k: v for k, v in GREEDY.items() if k != "max_tokens"}}
    # Warm: the coordinator's warm-up hand-off has crossed; count only the test's requests.
    cluster.run_client([{**phase, "prompts": [prompts[0]]}])
    before = b.rx_tx_bytes()
    (outcomes,) = cluster.run_client([phase])
    after = b.rx_tx_bytes()

    prefill, decode = (w.address for w in cluster.workers)
    for o, p, want in zip(outcomes, prompts, reference["greedy"], strict=True):
        c = o["completion"]
        assert c is not None, (o["error"], cluster.logs())
        assert c["token_ids"] == want, f"prompt of {len(p)} tokens"
        assert (c["prefill"], c["decode"]) == (prefill, decode)
        assert c["resumes"] == 0 and c["failovers"] == 0
    kv_bytes = sum(len(p) for p in prompts) * (kv_bytes_per_token(model_dir, 4) or 0)
    received = after[0] - before[0]
    print(f"KV of the prompts {kv_bytes} B; B's veth end received {received} B, "
          f"sent {after[1] - before[1]} B", file=sys.stderr)
    assert kv_bytes > 0 and received >= kv_bytes, (received, kv_bytes)
    # B's decode engine pulled from A's side channel, not from anything on B's loopback.
    listing = b.run(["ss", "-tn"]).stdout
    assert a.ip in listing, listing
