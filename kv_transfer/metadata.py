"""Typed KV hand-off metadata between a prefill and a decode engine.

vLLM's NixlConnector describes a finished prefill as a plain dict (`kv_transfer_params`
on the prefill engine's `RequestOutput`): which engine holds the KV blocks, where its
NIXL side channel listens, and which blocks to read. The decode engine needs that
exact dict back in `SamplingParams.extra_args["kv_transfer_params"]`. Between the two
the dict crosses the coordinator over gRPC, so it is validated once here (a malformed
hand-off must fail loudly at the coordinator, not as an assertion deep inside the
decode engine's scheduler) and carried as the proto message `KvHandoff` (converted in
slos_serve/wire.py, losslessly).

This module imports neither vLLM nor torch nor the proto stubs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["JSON_KEYS", "KNOWN_KEYS", "PROTO_KEYS", "KvHandoff", "prefill_params"]

_INT32_MAX = 2**31 - 1
_INT64_MAX = 2**63 - 1

# Keys of NixlConnector's kv_transfer_params that have their own proto field.
PROTO_KEYS = (
    "remote_engine_id",
    "remote_request_id",
    "remote_host",
    "remote_port",
    "remote_block_ids",
    "remote_num_tokens",
    "tp_size",
    "dcp_size",
    "pp_size",
    "transfer_mode",
)
# Keys the dataclass names but the proto carries inside extra_json (the proto has no
# field for them; they are still typed and validated here).
JSON_KEYS = ("do_remote_prefill", "do_remote_decode", "remote_blocks_expiry_time")
# Every key the dataclass names, in the order vLLM's NixlConnector emits them.
KNOWN_KEYS: tuple[str, ...] = (
    "do_remote_prefill",
    "do_remote_decode",
    "remote_block_ids",
    "remote_engine_id",
    "remote_request_id",
    "remote_host",
    "remote_port",
    "tp_size",
    "dcp_size",
    "pp_size",
    "remote_num_tokens",
    "remote_blocks_expiry_time",
    "transfer_mode",
)


def prefill_params() -> dict[str, bool]:
    """kv_transfer_params for a prefill-only request (`SamplingParams.extra_args`).

    `do_remote_decode=True` tells NixlConnector to keep the prompt's KV blocks after
    the request finishes and to return the hand-off in `RequestOutput`. A fresh dict
    each call, because vLLM mutates the params it is given.
    """
    return {"do_remote_decode": True, "do_remote_prefill": False}


def _fail(name: str, problem: str, value: Any) -> ValueError:
    return ValueError(f"kv_transfer_params.{name}: {problem} (got {value!r})")


def _req_str(params: Mapping[str, Any], name: str) -> str:
    if name not in params:
        raise _fail(name, "missing", None)
    value = params[name]
    if not isinstance(value, str) or not value:
        raise _fail(name, "must be a non-empty string", value)
    return value


def _int(
    params: Mapping[str, Any],
    name: str,
    *,
    default: int | None,
    lo: int,
    hi: int = _INT32_MAX,
) -> int:
    if name not in params or params[name] is None:
        if default is None:
            raise _fail(name, "missing", None)
        return default
    value = params[name]
    # bool is an int subclass; True as a port or size is a bug, not a 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(name, "must be an integer", value)
    if not lo <= value <= hi:
        raise _fail(name, f"must be in [{lo}, {hi}]", value)
    return value


def _bool(params: Mapping[str, Any], name: str, default: bool) -> bool:
    value = params.get(name, default)
    if not isinstance(value, bool):
        raise _fail(name, "must be a boolean", value)
    return value


def _block_ids(params: Mapping[str, Any]) -> tuple[tuple[int, ...], ...]:
    name = "remote_block_ids"
    if name not in params:
        raise _fail(name, "missing", None)
    value = params[name]
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise _fail(name, "must be a list of block-id lists, one per KV cache group", value)
    groups: list[tuple[int, ...]] = []
    for g, group in enumerate(value):
        if isinstance(group, (str, bytes)) or not isinstance(group, Sequence):
            raise _fail(f"{name}[{g}]", "must be a list of block ids", group)
        for b in group:
            if isinstance(b, bool) or not isinstance(b, int) or not 0 <= b <= _INT64_MAX:
                raise _fail(f"{name}[{g}]", "block ids must be non-negative integers", b)
        groups.append(tuple(group))
    if not any(groups):
        # The decode engine would assert deep in its scheduler; fail here instead.
        raise _fail(name, "no blocks to transfer", value)
    return tuple(groups)


def _json_native(name: str, value: Any) -> None:
    """Reject values that would not survive a JSON round trip unchanged."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise _fail(name, f"not JSON-serializable ({exc})", value) from None
    if json.loads(text) != value or _has_tuple(value):
        raise _fail(name, "does not survive a JSON round trip unchanged", value)


def _has_tuple(value: Any) -> bool:
    if isinstance(value, tuple):
        return True
    if isinstance(value, list):
        return any(_has_tuple(v) for v in value)
    if isinstance(value, dict):
        return any(not isinstance(k, str) or _has_tuple(v) for k, v in value.items())
    return False


@dataclass(frozen=True)
class KvHandoff:
    """One prefill's KV hand-off, as NixlConnector's prefill engine reports it.

    Field names are vLLM's keys. `extra` holds keys this class does not name (a newer
    vLLM may add some); they pass through untouched so that nothing is dropped.
    """

    remote_engine_id: str
    remote_request_id: str
    remote_host: str
    remote_port: int
    remote_block_ids: tuple[tuple[int, ...], ...]
    remote_num_tokens: int = 0
    tp_size: int = 1
    dcp_size: int = 1
    pp_size: int = 1
    transfer_mode: str = "pull"
    do_remote_prefill: bool = True
    do_remote_decode: bool = False
    # The prefill engine's time.perf_counter() deadline (only set by a decode engine in
    # bidirectional mode): meaningless in any other process, carried as is.
    remote_blocks_expiry_time: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        # Validate and normalize however the object was built (directly, from vLLM, from
        # proto), so that equal hand-offs compare equal (lists become tuples, etc.).
        if not isinstance(self.extra, Mapping):
            raise _fail("extra", "must be a mapping", self.extra)
        clash = sorted(set(self.extra) & set(KNOWN_KEYS))
        if clash:
            raise _fail("extra", "must not repeat named fields", clash)
        params = {k: getattr(self, k) for k in KNOWN_KEYS}
        params.update(self.extra)
        for name, value in self._validated(params).items():
            object.__setattr__(self, name, value)

    @staticmethod
    def _validated(params: Mapping[str, Any]) -> dict[str, Any]:
        """Check every field; return the constructor kwargs. Raises ValueError."""
        if not isinstance(params, Mapping):
            raise ValueError(f"kv_transfer_params must be a dict (got {type(params).__name__})")
        expiry = params.get("remote_blocks_expiry_time")
        if expiry is not None and (
            isinstance(expiry, bool)
            or not isinstance(expiry, (int, float))
            or not math.isfinite(expiry)
        ):
            raise _fail("remote_blocks_expiry_time", "must be a finite number or null", expiry)
        mode = params.get("transfer_mode", "pull")
        if not isinstance(mode, str) or not mode:
            raise _fail("transfer_mode", "must be a non-empty string", mode)
        extra = {k: v for k, v in params.items() if k not in KNOWN_KEYS}
        for key, value in extra.items():
            if not isinstance(key, str):
                raise ValueError(f"kv_transfer_params: key {key!r} is not a string")
            _json_native(key, value)
        return {
            "remote_engine_id": _req_str(params, "remote_engine_id"),
            "remote_request_id": _req_str(params, "remote_request_id"),
            "remote_host": _req_str(params, "remote_host"),
            "remote_port": _int(params, "remote_port", default=None, lo=1, hi=65535),
            "remote_block_ids": _block_ids(params),
            "remote_num_tokens": _int(params, "remote_num_tokens", default=0, lo=0),
            "tp_size": _int(params, "tp_size", default=1, lo=1),
            "dcp_size": _int(params, "dcp_size", default=1, lo=1),
            "pp_size": _int(params, "pp_size", default=1, lo=1),
            "transfer_mode": mode,
            "do_remote_prefill": _bool(params, "do_remote_prefill", True),
            "do_remote_decode": _bool(params, "do_remote_decode", False),
            "remote_blocks_expiry_time": None if expiry is None else float(expiry),
            "extra": extra,
        }

    # vLLM dict <-> dataclass

    @classmethod
    def from_vllm(cls, params: Mapping[str, Any]) -> KvHandoff:
        """Build from a prefill engine's `RequestOutput.kv_transfer_params`.

        Raises ValueError naming the first bad field. A hand-off that does not ask the
        decode side to pull (`do_remote_prefill` false) is refused: handing it to a
        decode engine would make it silently recompute the whole prompt.
        """
        if params is None:
            raise ValueError(
                "kv_transfer_params is missing: the prefill engine kept no KV blocks "
                "(request aborted, or NixlConnector not configured?)"
            )
        kwargs = cls._validated(params)
        if not kwargs["do_remote_prefill"]:
            raise _fail("do_remote_prefill", "must be true in a prefill hand-off", False)
        return cls(**kwargs)

    def to_vllm(self) -> dict[str, Any]:
        """The dict for the decode engine's `SamplingParams.extra_args["kv_transfer_params"]`.

        A fresh dict each call: NixlConnector mutates it (marks it consumed).
        """
        out: dict[str, Any] = {
            "do_remote_prefill": self.do_remote_prefill,
            "do_remote_decode": self.do_remote_decode,
            "remote_block_ids": [list(g) for g in self.remote_block_ids],
            "remote_engine_id": self.remote_engine_id,
            "remote_request_id": self.remote_request_id,
            "remote_host": self.remote_host,
            "remote_port": self.remote_port,
            "tp_size": self.tp_size,
            "dcp_size": self.dcp_size,
            "pp_size": self.pp_size,
            "remote_num_tokens": self.remote_num_tokens,
            "remote_blocks_expiry_time": self.remote_blocks_expiry_time,
            "transfer_mode": self.transfer_mode,
        }
        out.update(json.loads(json.dumps(dict(self.extra))))  # deep copy
        return out

    # conveniences

    @property
    def num_blocks(self) -> int:
        """Blocks the decode side will read, over all KV cache groups."""
        return sum(len(g) for g in self.remote_block_ids)

    @property
    def peer(self) -> str:
        """`host:port` of the prefill engine's NIXL side channel (for logs and errors)."""
        return f"{self.remote_host}:{self.remote_port}"
