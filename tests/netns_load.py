"""The node-loss scenario of the netns tests on the SIMULATED engine, however the cluster was
started (the static way, tests/test_netns_sim.py; on Ray, tests/test_netns_ray.py): 100
greedy streams undisturbed (their outputs are the reference), then 100 again with node B
lost mid-stream, and what must hold after it (as for one machine, tests/test_faults_sim.py):
no stream hangs, none ends silently (a Completion or an explicit status), >= 95 % equal the
undisturbed run exactly, the streams decoding on B moved; and the undisturbed run did cross
the veth (every worker used, hand-offs between A and B, bytes counted by B's veth end).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import netns
from netns import Host
from sim_serving import GREEDY, prompt_ids, sim_tokens

STREAMS = 100
MAX_TOKENS = 100
SLOWDOWN = 6.0  # fewer tokens per second than tests/test_faults_sim.py: a shared coordinator
FAULT_AFTER_TOKENS = 5


def phases() -> list[dict]:
    """The undisturbed phase, then the same streams with the fault point."""
    prompts = [prompt_ids(40 + i % 7, offset=i) for i in range(STREAMS)]
    phase = {"prompts": prompts, "max_tokens": MAX_TOKENS, "options": GREEDY}
    return [phase, {**phase, "fault_after_tokens": FAULT_AFTER_TOKENS}]


@dataclass
class NodeLoss:
    """Loses host `b` when called (the client's fault point): `kill` SIGKILLs every process
    of it (its sockets close: the coordinator sees it at once), `link-down` takes its veth
    end down (its processes run on, unreachable, and nothing tells the coordinator: its
    keepalive pings and health polls must)."""

    b: Host
    fault: str = "kill"
    killed: list[int] = field(default_factory=list)  # the pids killed (or cut off)
    b_bytes: list[tuple[int, int]] = field(default_factory=list)  # before, at the fault

    def __post_init__(self) -> None:
        self.b_bytes.append(self.b.rx_tx_bytes())

    def __call__(self) -> None:
        self.b_bytes.append(self.b.rx_tx_bytes())
        if self.fault == "kill":
            self.killed.extend(netns.kill_all_in(self.b.ns))
        else:
            self.killed.extend(netns.pids_in(self.b.ns))
            self.b.link(False)


def _exact(o: dict, want: list[int]) -> bool:
    c = o["completion"]
    return (c is not None and c["finish_reason"] == "length" and c["token_ids"] == want
            and o["tokens"] == want)


def check(outcomes: list[list[dict]], loss: NodeLoss, workers: int,
          logs: Callable[[], str] = str, min_killed: int = 2, pairs_cross: bool = True
          ) -> str:
    """The assertions above, on run_client's outcomes of `phases()`; a summary line.
    `pairs_cross`: the placement puts each prefill worker's decode partner on the other
    host (the planner pairs the k-th prefill worker with the k-th decode worker, in
    membership order)."""
    (undisturbed, faulted), prompts = outcomes, phases()[0]["prompts"]
    b_ip = loss.b.ip

    def on_b(address: str) -> bool:
        return address.rsplit(":", 1)[0] == b_ip

    # The reference run: every stream exact, every worker used, hand-offs across the veth.
    for o, p in zip(undisturbed, prompts, strict=True):
        assert _exact(o, sim_tokens(p, MAX_TOKENS, None)), (o["error"], logs())
    pairs = {(o["completion"]["prefill"], o["completion"]["decode"]) for o in undisturbed}
    assert len({x for pair in pairs for x in pair}) == workers, pairs
    if pairs_cross:
        assert any(on_b(p) != on_b(d) for p, d in pairs), f"no hand-off crossed: {pairs}"
    rx = loss.b_bytes[1][0] - loss.b_bytes[0][0]
    tx = loss.b_bytes[1][1] - loss.b_bytes[0][1]
    # B's decode worker streamed its share of the tokens to A (a few bytes each).
    assert rx > 0 and tx > STREAMS * MAX_TOKENS, (rx, tx)

    # Node B lost mid-stream: nothing hung or silent, >= 95 % exact, B's streams moved.
    assert len(loss.killed) >= min_killed, f"B's processes were not running: {loss.killed}"
    assert not [o for o in faulted if o["hung"]], "streams hung"
    silent = [o for o in faulted if o["completion"] is None and o["error"] is None]
    assert not silent, "streams ended with neither a Completion nor a status"
    assert all(o["error"]["code"] for o in faulted if o["error"]), "an error without a status"
    want = [o["completion"]["token_ids"] for o in undisturbed]
    exact = [_exact(o, w) for o, w in zip(faulted, want, strict=True)]
    errors = [o["error"] for o in faulted if o["error"]]
    assert sum(exact) >= 0.95 * STREAMS, (sum(exact), errors[:5])
    moved = [o for o in faulted if o["started"] and on_b(o["started"]["decode"])]
    assert moved, "no stream was decoding on B when it was lost"
    for o, ok in zip(faulted, exact, strict=True):
        if ok and o in moved:
            assert not on_b(o["completion"]["decode"]) and o["completion"]["resumes"] >= 1
    return (f"{loss.fault}: {sum(exact)} of {STREAMS} exact, {len(moved)} were decoding on "
            f"B, errors {errors[:3]}")
