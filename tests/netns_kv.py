"""What the vLLM netns tests check, however the cluster was started (the static way,
tests/test_netns_vllm.py; on Ray, tests/test_netns_ray.py): every request prefilled on A
and decoded on B, greedy outputs equal to one colocated engine's (conftest's `reference`),
and the KV really crossed the veth: the kernel's byte counter of B's veth end grows by at
least the prompts' KV bytes (a decode that could not pull would recompute,
kv_load_failure_policy=recompute, and give the same tokens: the outputs alone prove nothing
about the transfer), and B's decode engine holds a connection to A's address.

UCX is told to use TCP over the veth (`ucx_env`): by default, UCX on one kernel finds the
peer on "the same host" and reads its memory with cross-memory attach, and the KV would
never touch the network.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from conftest import GREEDY
from netns import Host

from slos_serve.metrics import kv_bytes_per_token


def ucx_env(host: Host) -> dict[str, str]:
    return {"UCX_TLS": "tcp", "UCX_NET_DEVICES": host.ifname}


def phase(prompts: list[list[int]]) -> dict:
    """tests/netns_client.py's phase of `prompts`, greedy."""
    return {"prompts": prompts, "max_tokens": GREEDY["max_tokens"],
            "options": {k: v for k, v in GREEDY.items() if k != "max_tokens"}}


def check(outcomes: list[dict], prompts: list[list[int]], want: list[list[int]],
          model_dir: str, a: Host, b: Host, received_bytes: int,
          logs: Callable[[], str] = str) -> None:
    """The assertions above; `received_bytes`: what B's veth end received meanwhile."""
    for o, p, tokens in zip(outcomes, prompts, want, strict=True):
        c = o["completion"]
        assert c is not None, (o["error"], logs())
        assert c["token_ids"] == tokens, f"prompt of {len(p)} tokens"
        hosts = (c["prefill"].rsplit(":", 1)[0], c["decode"].rsplit(":", 1)[0])
        assert hosts == (a.ip, b.ip), hosts
        assert c["resumes"] == 0 and c["failovers"] == 0
    kv_bytes = sum(len(p) for p in prompts) * (kv_bytes_per_token(model_dir, 4) or 0)
    print(f"KV of the prompts {kv_bytes} B; B's veth end received {received_bytes} B",
          file=sys.stderr)
    assert kv_bytes > 0 and received_bytes >= kv_bytes, (received_bytes, kv_bytes)
    # B's decode engine pulled from A's side channel, not from anything on B's loopback.
    listing = b.run(["ss", "-tn"]).stdout
    assert a.ip in listing, listing
