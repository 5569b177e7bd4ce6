"""The netns tests' load generator: runs INSIDE a namespace (the coordinator's), where the
coordinator's address is reachable, and reports what every stream saw as JSON.

    python tests/netns_client.py TARGET JOB.json OUT.json

JOB: {"workers": N, "ready_timeout_s": S, "phases": [{"prompts": [[ids]], "max_tokens": N,
"options": {...}, "fault_after_tokens": K or null}]}. It first waits (up to S seconds) until
the coordinator reports N healthy workers (printing "ready"), then runs each phase's
streams at once. A phase with `fault_after_tokens` prints "fault" once every stream has K
tokens (or ended) and waits for a line on stdin (the test injects its fault meanwhile)
before reading on. A stream still open STREAM_BOUND_S after it started is recorded as hung.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from slos_serve.client import AsyncClient, Chunk, Completion, Started
from slos_serve.errors import SloServeError

STREAM_BOUND_S = 90.0


async def _wait_healthy(c: AsyncClient, n: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            info = await c.cluster_info(timeout=2)
            if len(info.workers) == n and all(w.healthy for w in info.workers):
                return
        except SloServeError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"not {n} healthy workers after {timeout_s} s")
        await asyncio.sleep(0.2)


async def _read(c: AsyncClient, prompt: list[int], rid: str, max_tokens: int,
                options: dict, out: dict) -> None:
    out.update(tokens=[], hung=False, error=None, completion=None, started=None)
    try:
        async with asyncio.timeout(STREAM_BOUND_S):
            async for ev in c.stream(prompt, max_tokens=max_tokens, request_id=rid, **options):
                if isinstance(ev, Started):
                    out["started"] = {"prefill": ev.prefill_worker, "decode": ev.decode_worker}
                elif isinstance(ev, Chunk):
                    out["tokens"].extend(ev.token_ids)
                elif isinstance(ev, Completion):
                    out["completion"] = {
                        "token_ids": list(ev.token_ids), "finish_reason": ev.finish_reason,
                        "prefill": ev.prefill_worker, "decode": ev.decode_worker,
                        "resumes": ev.resumes, "failovers": ev.failovers}
    except TimeoutError:
        out["hung"] = True
    except SloServeError as err:
        out["error"] = {"code": err.code_name, "details": err.details}


async def _phase(c: AsyncClient, k: int, phase: dict) -> list[dict]:
    outs: list[dict] = [{} for _ in phase["prompts"]]
    tasks = [asyncio.create_task(_read(c, p, f"n{k}-{i}", phase["max_tokens"],
                                       phase.get("options", {}), outs[i]))
             for i, p in enumerate(phase["prompts"])]
    if (after := phase.get("fault_after_tokens")) is not None:
        while not all(t.done() or len(o.get("tokens", ())) >= after
                      for t, o in zip(tasks, outs, strict=True)):
            await asyncio.sleep(0.01)
        print("fault", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
    await asyncio.gather(*tasks)
    return outs


async def main(target: str, job: dict) -> list[list[dict]]:
    async with AsyncClient(target, timeout=STREAM_BOUND_S) as c:
        started = time.monotonic()
        await _wait_healthy(c, job["workers"], job["ready_timeout_s"])
        print(f"ready after {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
        print("ready", flush=True)
        outs = []
        for k, phase in enumerate(job["phases"]):
            started = time.monotonic()
            outs.append(await _phase(c, k, phase))
            print(f"phase {k}: {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
        return outs


if __name__ == "__main__":
    target, job_path, out_path = sys.argv[1:4]
    with open(job_path) as f:
        result = asyncio.run(main(target, json.load(f)))
    with open(out_path, "w") as f:
        json.dump(result, f)
    print("done", flush=True)
