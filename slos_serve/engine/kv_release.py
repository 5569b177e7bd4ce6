"""Releasing a hand-off's KV at once, instead of at the end of NixlConnector's lease.

A prefill that hands off keeps its KV blocks until the decode side has read them, or until
the lease (`kv_lease_duration`, 30 s) runs out. When no decode will read them (the request
was cancelled, its coordinator died, or it ended at EOS on its first token) those blocks
sat idle for 30 s. `KvRelease` is a vLLM worker extension (`worker_extension_cls`): the
engine's workers gain `slos_release_held_kv`, which AsyncLLM.collective_rpc calls, and
which ends the lease of the given requests now; the connector's next `get_finished` reports
them done sending, and the scheduler frees their blocks.

This is the one place that touches NixlConnector's private state (vLLM 0.32: the worker
side's `_reqs_to_send`, request id -> lease expiry): keep it here.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("vllm.slos_serve.kv_release")

WORKER_EXTENSION = "slos_serve.engine.kv_release.KvRelease"
RELEASE_METHOD = "slos_release_held_kv"


class KvRelease:
    """Mixed into vLLM's worker class: the engine's workers gain the method below."""

    def slos_release_held_kv(self, request_ids: list[str]) -> int:
        """Ends the lease of those of `request_ids` whose KV this worker still holds for
        a reader; returns how many it held (ids already read or freed are skipped)."""
        from vllm.distributed.kv_transfer import get_kv_transfer_group, has_kv_transfer_group

        if not has_kv_transfer_group():
            return 0
        worker = getattr(get_kv_transfer_group(), "connector_worker", None)
        leases = getattr(worker, "_reqs_to_send", None)
        if not isinstance(leases, dict):
            return 0
        held = [rid for rid in request_ids if rid in leases]
        for rid in held:
            leases[rid] = 0.0  # expired: released at the next get_finished
        if held:
            logger.info("released the KV of %d hand-off(s) no decode will read", len(held))
        return len(held)
