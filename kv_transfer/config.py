"""The engine-side KV transfer configuration (NixlConnector)."""

from __future__ import annotations

from typing import Any


def kv_transfer_config() -> dict[str, Any]:
    """NixlConnector in both roles, KV buffers in host memory (CPU platform)."""
    return {"kv_connector": "NixlConnector", "kv_role": "kv_both", "kv_buffer_device": "cpu"}
