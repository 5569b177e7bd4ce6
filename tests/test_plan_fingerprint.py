"""plan() decisions pinned by a fingerprint, so that speed work on the planner cannot change
what it decides: verdicts, prefill schedules and decode plans (every batch) of seeded
snapshots, both layouts, 4 to 64 workers, with best-effort requests, decoders of unknown
pace, busy workers, requests that ask to be rejected and KV that binds.

If a change is MEANT to alter decisions (a new policy), re-record: run this file with
`-s`, check the change is intended, and paste the printed digest into EXPECTED."""

from __future__ import annotations

import copy
import hashlib
import pickle
import random
from dataclasses import replace

from slos_serve.core.planner import Plan, PlannedBatch, Snapshot, plan
from slos_serve.core.planner.schedule import PredictedBatches
from slos_serve.sim.overhead import make_snapshot

EXPECTED = "2eac03886ea8c25773e6a33aa85003c50c9caefeacb7b428b0822f73b163d6aa"
# the same snapshots as a live coordinator's: a TTFT outlook and measured per-tier acceptance
EXPECTED_MEASURED = "1b135226906e6b156467e6bd52298a0667f047936c200fd74229f2d0f973f34f"


def varied(snap: Snapshot, seed: int) -> Snapshot:
    """The overhead snapshot with some requests best effort, of unknown pace or rejecting,
    some workers busy, (odd seeds) KV tight enough to bind, and a half KV reserve or a
    speculation cap."""
    rng = random.Random(1000 + seed)
    reqs = []
    for r in snap.requests:
        x = rng.random()
        if r.state == "admitted" and x < 0.1:
            r = replace(r, state="best_effort")
        elif r.state == "admitted" and r.phase == "decode" and x < 0.2:
            r = replace(r, token_deadline=None)
        elif r.state == "new" and x < 0.3:
            r = replace(r, on_reject="reject")
        reqs.append(r)
    kv = 6_000 if seed % 2 else None
    ws = [replace(w, busy_until=snap.now + rng.uniform(0.0, 0.05) if rng.random() < 0.5
                  else 0.0, kv_capacity_blocks=kv or w.kv_capacity_blocks)
          for w in snap.workers]
    return replace(snap, requests=reqs, workers=ws, route_start=rng.randrange(100),
                   kv_output_reserve=0.5 if seed == 2 else 1.0,
                   max_spec_len=2 if seed == 1 else snap.max_spec_len)


def cases(measured: bool = False) -> list[Snapshot]:
    out = []
    for mode in ("disagg", "colocated"):
        for workers, live, new in ((2, 16, 4), (4, 64, 16), (4, 256, 16), (16, 256, 16),
                                   (64, 256, 16), (64, 1024, 64)):
            for seed in range(3):
                snap = make_snapshot(live, new, mode=mode, workers=workers, seed=seed,
                                     measured=measured)
                out.append(snap)
                out.append(varied(snap, seed))
    return out


def fingerprint(p: Plan) -> str:
    """Every decision of a plan (dataclass reprs print floats exactly)."""
    return repr((p.verdicts, sorted(p.prefill.items()), sorted(p.decode.items()), p.admitted))


def digest(snaps: list[Snapshot]) -> str:
    h = hashlib.sha256()
    for snap in snaps:
        h.update(fingerprint(plan(snap)).encode())
    return h.hexdigest()


def test_plan_decisions_are_unchanged() -> None:
    d = digest(cases())
    print(f"plan fingerprint {d}")
    assert d == EXPECTED


def test_plan_decisions_under_a_ttft_outlook_are_unchanged() -> None:
    snaps = cases(measured=True)
    assert all(s.ttft_outlook is not None and s.spec_alpha for s in snaps)
    d = digest(snaps)
    print(f"plan fingerprint (measured) {d}")
    assert d == EXPECTED_MEASURED


def test_deferred_batches_read_later_are_those_of_the_snapshot_planned() -> None:
    """Schedules emitted on first read (workers no decision depends on) are those of the
    snapshot as planned, even once the caller has moved its (shared) workers on."""
    snap = make_snapshot(256, 16, mode="colocated", workers=64, seed=3)
    fresh = make_snapshot(256, 16, mode="colocated", workers=64, seed=3)
    p = plan(snap)
    deferred = [w for w, s in p.prefill.items() if isinstance(s.batches, PredictedBatches)]
    assert deferred  # most of 64 workers get no new prompt
    for w in snap.workers:
        w.busy_until = snap.now + 1.0
    q = plan(fresh)
    for w in p.prefill:
        assert p.prefill[w].batches == q.prefill[w].batches
        assert p.decode[w].batches == q.decode[w].batches
    assert fingerprint(p) == fingerprint(q)


def test_predicted_batches_behave_as_a_list() -> None:
    calls = []
    batch = PlannedBatch(0.0, 0.1, [("a", 5)], [])

    def emit() -> list[PlannedBatch]:
        calls.append(1)
        return [batch]

    b = PredictedBatches(emit)
    assert not calls  # nothing emitted until read
    assert b == [batch] and list(b) == [batch] and b[0] is batch and len(b) == 1
    assert b[:1] == [batch] and repr(b) == repr([batch])
    assert len(calls) == 1  # emitted once
    assert pickle.loads(pickle.dumps(b)) == [batch]
    assert type(copy.deepcopy(b)) is list
