"""kv_transfer: hand-off metadata, engine config, and kv-bench (the vLLM CPU plugin:
tests/test_cpu_plugin.py).

Fast (no engine is started): the metadata and config tests are pure; the plugin is
exercised through vLLM's own plugin loader in a fresh interpreter and against a fake
platform; kv-bench really moves bytes between two processes over NIXL/UCX.
"""

from __future__ import annotations

import copy
import json
import math
import multiprocessing as mp
from pathlib import Path
from typing import Any

import pytest

from kv_transfer import config as kvconfig
from kv_transfer.metadata import KNOWN_KEYS, KvHandoff, prefill_params
from proto import slos_serve_pb2 as pb
from slos_serve.wire import handoff_from_proto, handoff_to_proto

ROOT = Path(__file__).resolve().parents[1]


def vllm_params(**overrides: Any) -> dict[str, Any]:
    """kv_transfer_params exactly as a vLLM 0.32 prefill engine returned them here."""
    params: dict[str, Any] = {
        "do_remote_prefill": True,
        "do_remote_decode": False,
        "remote_block_ids": [[1, 2, 3, 7]],
        "remote_engine_id": "e2e-prefill",
        "remote_request_id": "0-aa3df964",
        "remote_host": "127.0.0.1",
        "remote_port": 25600,
        "tp_size": 1,
        "dcp_size": 1,
        "pp_size": 1,
        "remote_num_tokens": 300,
        "remote_blocks_expiry_time": None,
        "transfer_mode": "pull",
        # not a field of the dataclass: a key this vLLM adds, carried in extra/extra_json
        "remote_prefill_cached_tokens": 0,
    }
    params.update(overrides)
    return params


def wire(h: KvHandoff) -> KvHandoff:
    """Through the proto and its bytes, as between two processes."""
    return handoff_from_proto(pb.KvHandoff.FromString(handoff_to_proto(h).SerializeToString()))


# ---------------------------------------------------------------- metadata round trips


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"remote_block_ids": [[0, 5], [], [2**40]], "tp_size": 2, "dcp_size": 2, "pp_size": 4},
        {"remote_blocks_expiry_time": 12345.678901234567, "do_remote_decode": True},
        {"transfer_mode": "push", "future_key": {"nested": [1, "x", None, 2.5]}},
        {"remote_host": "10.1.2.3", "remote_port": 65535, "remote_num_tokens": 2**31 - 1},
    ],
)
def test_round_trip_is_lossless(overrides: dict[str, Any]) -> None:
    original = vllm_params(**overrides)
    pristine = copy.deepcopy(original)
    h = KvHandoff.from_vllm(original)
    back = wire(h)
    assert back == h
    assert back.to_vllm() == original
    assert list(back.to_vllm()) == list(original)  # same key order as vLLM's
    assert original == pristine  # input untouched


def test_fields_and_extras_are_typed() -> None:
    h = KvHandoff.from_vllm(vllm_params(remote_block_ids=[[4, 5], [6]]))
    assert h.remote_block_ids == ((4, 5), (6,))
    assert h.num_blocks == 3
    assert h.peer == "127.0.0.1:25600"
    assert h.extra == {"remote_prefill_cached_tokens": 0}
    msg = handoff_to_proto(h)
    assert [list(b.ids) for b in msg.remote_block_ids] == [[4, 5], [6]]
    assert json.loads(msg.extra_json) == {
        "do_remote_prefill": True,
        "do_remote_decode": False,
        "remote_blocks_expiry_time": None,
        "remote_prefill_cached_tokens": 0,
    }
    assert hash(h) == hash(wire(h))
    with pytest.raises(AttributeError):
        h.remote_port = 1  # type: ignore[misc]  # frozen


def test_to_vllm_returns_a_fresh_dict() -> None:
    # NixlConnector marks the params it is given as consumed; that must not leak back.
    h = KvHandoff.from_vllm(vllm_params(extra_list=[1, 2]))
    first = h.to_vllm()
    first["do_remote_prefill"] = False
    first["remote_block_ids"][0].append(99)
    first["extra_list"].append(3)
    assert h.to_vllm() == vllm_params(extra_list=[1, 2])


def test_direct_construction_normalizes_and_validates() -> None:
    h = KvHandoff("e", "r", "h", 1, [[1, 2]])  # type: ignore[arg-type]
    assert h.remote_block_ids == ((1, 2),)
    assert wire(h) == h
    with pytest.raises(ValueError, match="extra"):
        KvHandoff("e", "r", "h", 1, ((1,),), extra={"tp_size": 2})


def test_proto_defaults_for_unset_scalars() -> None:
    msg = handoff_to_proto(KvHandoff.from_vllm(vllm_params()))
    msg.ClearField("tp_size")
    msg.ClearField("dcp_size")
    msg.ClearField("pp_size")
    msg.ClearField("transfer_mode")
    h = handoff_from_proto(msg)
    assert (h.tp_size, h.dcp_size, h.pp_size, h.transfer_mode) == (1, 1, 1, "pull")


def test_prefill_params() -> None:
    p = prefill_params()
    assert p == {"do_remote_decode": True, "do_remote_prefill": False}
    p["do_remote_decode"] = False
    assert prefill_params()["do_remote_decode"] is True  # fresh each call


def test_known_keys_match_what_vllm_emits() -> None:
    # If vLLM renames or drops one of these, the decode engine would silently recompute.
    assert set(vllm_params()) - set(KNOWN_KEYS) == {"remote_prefill_cached_tokens"}


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "field,value",
    [
        ("remote_engine_id", ""),
        ("remote_engine_id", 7),
        ("remote_request_id", None),
        ("remote_host", b"127.0.0.1"),
        ("remote_port", 0),
        ("remote_port", 70000),
        ("remote_port", True),
        ("remote_port", "25600"),
        ("remote_block_ids", []),
        ("remote_block_ids", [[]]),
        ("remote_block_ids", [1, 2]),
        ("remote_block_ids", "1,2"),
        ("remote_block_ids", [[1, -2]]),
        ("remote_block_ids", [[1.0]]),
        ("remote_num_tokens", -1),
        ("remote_num_tokens", 2**31),
        ("tp_size", 0),
        ("dcp_size", 1.5),
        ("pp_size", -3),
        ("transfer_mode", ""),
        ("do_remote_prefill", "yes"),
        ("do_remote_prefill", False),
        ("do_remote_decode", 1),
        ("remote_blocks_expiry_time", math.nan),
        ("remote_blocks_expiry_time", "soon"),
        ("some_future_key", {1, 2}),
        ("some_future_key", (1, 2)),
        ("some_future_key", math.inf),
    ],
)
def test_bad_field_is_named(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field.split("[")[0]):
        KvHandoff.from_vllm(vllm_params(**{field: value}))


@pytest.mark.parametrize(
    "missing",
    ["remote_engine_id", "remote_request_id", "remote_host", "remote_port", "remote_block_ids"],
)
def test_missing_required_field_is_named(missing: str) -> None:
    params = vllm_params()
    del params[missing]
    with pytest.raises(ValueError, match=f"{missing}: missing"):
        KvHandoff.from_vllm(params)


def test_none_and_non_dict_are_refused() -> None:
    with pytest.raises(ValueError, match="missing"):
        KvHandoff.from_vllm(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dict"):
        KvHandoff.from_vllm([("remote_port", 1)])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "mutate,field",
    [
        (lambda m: m.ClearField("remote_engine_id"), "remote_engine_id"),
        (lambda m: m.ClearField("remote_port"), "remote_port"),
        (lambda m: m.ClearField("remote_block_ids"), "remote_block_ids"),
        (lambda m: setattr(m, "extra_json", "{not json"), "extra_json"),
        (lambda m: setattr(m, "extra_json", "[1, 2]"), "extra_json"),
        (lambda m: setattr(m, "extra_json", '{"tp_size": 4}'), "extra_json"),
        (lambda m: setattr(m, "extra_json", '{"do_remote_prefill": false}'), "do_remote_prefill"),
    ],
)
def test_bad_proto_is_named(mutate: Any, field: str) -> None:
    msg = handoff_to_proto(KvHandoff.from_vllm(vllm_params()))
    mutate(msg)
    with pytest.raises(ValueError, match=field):
        handoff_from_proto(msg)


# ---------------------------------------------------------------- engine config


def test_kv_transfer_config_and_env() -> None:
    cfg = kvconfig.kv_transfer_config(buffer_device="cpu", engine_id="p0", extra={"num_threads": 1})
    assert cfg == {
        "kv_connector": "NixlConnector",
        "kv_role": "kv_both",
        "kv_buffer_device": "cpu",
        "engine_id": "p0",
        "kv_connector_extra_config": {"num_threads": 1},
    }
    assert kvconfig.kv_transfer_config()["kv_buffer_device"] in ("cpu", "cuda")
    with pytest.raises(ValueError, match="role"):
        kvconfig.kv_transfer_config(role="prefill")  # type: ignore[arg-type]
    env = kvconfig.engine_env(25600, kv_cache_gib=1, cpu_bind="0")
    assert env == {
        "VLLM_NIXL_SIDE_CHANNEL_HOST": "127.0.0.1",
        "VLLM_NIXL_SIDE_CHANNEL_PORT": "25600",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_CPU_OMP_THREADS_BIND": "0",
    }
    with pytest.raises(ValueError, match="side_channel_port"):
        kvconfig.engine_env(0)
    with pytest.raises(ValueError, match="host"):
        kvconfig.engine_env(25600, host="0.0.0.0")


# ---------------------------------------------------------------- vLLM CPU plugin

def test_kv_bench_between_two_processes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`slos-serve kv-bench` as its dispatcher calls it: real NIXL READs, 64 KiB..1 MiB."""
    import argparse

    from kv_transfer import bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    out_file = tmp_path / "kv.json"
    args = parser.parse_args(
        ["--min-size", "64K", "--max-size", "1M", "--reps", "3", "--json", str(out_file)]
    )
    assert bench.run(args) == 0
    out, err = capsys.readouterr()
    assert "NIXL GB/s" in out and "memcpy GB/s" in out and "1 MiB" in out
    assert "verified" in err  # progress lines
    data = json.loads(out_file.read_text())
    assert [s["size"] for s in data["sizes"]] == [64 * 1024, 256 * 1024, 1024 * 1024]
    for r in data["sizes"]:
        assert r["verified"]
        assert r["nixl_gbps_median"] > 0 and r["memcpy_gbps_median"] > 0 and r["ratio"] > 0
        assert r["nixl_gbps_min"] <= r["nixl_gbps_median"] <= r["nixl_gbps_max"]
    assert mp.active_children() == []  # the target process is gone


def test_kv_bench_sizes_and_parsing() -> None:
    from kv_transfer.bench import KIB, MIB, _parse_size, default_sizes

    assert default_sizes() == [64 * KIB * 4**i for i in range(7)]  # 64 KiB .. 256 MiB
    assert default_sizes(64 * KIB, 1 * MIB, 2) == [
        64 * KIB,
        128 * KIB,
        256 * KIB,
        512 * KIB,
        1 * MIB,
    ]
    assert _parse_size("64K") == _parse_size("64KiB") == 64 * KIB
    assert _parse_size("256m") == 256 * MIB
    with pytest.raises(ValueError):
        default_sizes(0, 10)
