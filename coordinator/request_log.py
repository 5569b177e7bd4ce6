"""`--request-log FILE`: one JSON line per finished request, as the coordinator measured it
(the per-request records a client-side benchmark can be checked against)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from proto import slos_serve_pb2 as pb
from slos_serve.wire import DECISION_NAMES


class RequestLog:
    def __init__(self, path: str | Path) -> None:
        self.file = open(path, "a", buffering=1)  # noqa: SIM115 - open while serving

    def __call__(self, request_id: str, final: pb.Final, tier: str) -> None:
        self.file.write(json.dumps({
            "request_id": request_id, "t_end": round(time.time(), 6), "tier": tier,
            "decision": DECISION_NAMES.get(final.decision, ""),
            "finish_reason": final.finish_reason, "prompt_tokens": final.prompt_tokens,
            "completion_tokens": final.completion_tokens, "ttft_ms": round(final.ttft_ms, 3),
            "tpot_ms": round(final.tpot_ms, 3), "e2e_ms": round(final.e2e_ms, 3),
            "slo_met": final.slo_met,
        }) + "\n")

    def close(self) -> None:
        self.file.close()
