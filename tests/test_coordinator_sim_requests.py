"""The coordinator's request contract, fast: a real cluster on the SIMULATED engine.

Bad input is INVALID_ARGUMENT naming the field, multi-stage requests are judged per stage,
and the info, health and reflection services answer. Helpers: tests/sim_serving.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sim_serving import (
    GREEDY,
    MAX_MODEL_LEN,
    all_healthy,
    assert_serves,
    prompt_ids,
    sim_tokens,
    wait_for,
)

from slos_serve.client import Client, HealthStatus, StageSpec
from slos_serve.errors import InvalidRequest, Rejected

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def client(sim_cluster) -> Iterator[Client]:
    with Client(sim_cluster.target, timeout=30) as c:
        yield c


# ------------------------------------------------------------------ bad input --

BAD_REQUESTS: dict[str, tuple[dict, str]] = {
    # case: (generate kwargs, the field the error must name)
    "empty text": ({"prompt": "", "max_tokens": 4}, "prompt"),
    "blank text": ({"prompt": "  \n\t ", "max_tokens": 4}, "prompt"),
    "empty token ids": ({"prompt": [], "max_tokens": 4}, "prompt"),
    "prompt longer than context": (
        {"prompt": prompt_ids(MAX_MODEL_LEN + 10), "max_tokens": 4}, "prompt"),
    "prompt exactly the context": ({"prompt": prompt_ids(MAX_MODEL_LEN), "max_tokens": 1},
                                   "prompt"),
    "prompt + max_tokens over context": (
        {"prompt": prompt_ids(MAX_MODEL_LEN - 10), "max_tokens": 20}, "max_tokens"),
    "token id outside vocab": ({"prompt": [5, 10**6], "max_tokens": 4}, "token_ids"),
    "negative token id": ({"prompt": [5, -1], "max_tokens": 4}, "token_ids"),
    "max_tokens zero": ({"prompt": prompt_ids(5), "max_tokens": 0}, "max_tokens"),
    "max_tokens negative": ({"prompt": prompt_ids(5), "max_tokens": -3}, "max_tokens"),
    "unknown tier": ({"prompt": prompt_ids(5), "max_tokens": 4, "tier": "platinum"},
                     "slo.tier"),
    "zero ttft": ({"prompt": prompt_ids(5), "max_tokens": 4, "ttft_ms": 0.0}, "slo.ttft_ms"),
    "negative ttft": ({"prompt": prompt_ids(5), "max_tokens": 4, "ttft_ms": -100.0},
                      "slo.ttft_ms"),
    "nan ttft": ({"prompt": prompt_ids(5), "max_tokens": 4, "ttft_ms": float("nan")},
                 "slo.ttft_ms"),
    "zero tpot": ({"prompt": prompt_ids(5), "max_tokens": 4, "tpot_ms": 0.0}, "slo.tpot_ms"),
    "negative tpot": ({"prompt": prompt_ids(5), "max_tokens": 4, "tpot_ms": -1.0},
                      "slo.tpot_ms"),
    "tier contradicts ttft": (
        {"prompt": prompt_ids(5), "max_tokens": 4, "tier": "tight", "ttft_ms": 5.0},
        "slo.ttft_ms"),
    "tier contradicts tpot": (
        {"prompt": prompt_ids(5), "max_tokens": 4, "tier": "loose", "tpot_ms": 1.0},
        "slo.tpot_ms"),
    "negative temperature": (
        {"prompt": prompt_ids(5), "max_tokens": 4, "temperature": -0.5}, "temperature"),
    "top_p zero": ({"prompt": prompt_ids(5), "max_tokens": 4, "top_p": 0.0}, "top_p"),
    "top_p above one": ({"prompt": prompt_ids(5), "max_tokens": 4, "top_p": 1.5}, "top_p"),
    "request_id too long": (
        {"prompt": prompt_ids(5), "max_tokens": 4, "request_id": "x" * 1000}, "request_id"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_is_invalid_argument_naming_the_field(client: Client, case: str) -> None:
    kwargs, field = BAD_REQUESTS[case]
    with pytest.raises(InvalidRequest) as info:
        client.generate(**kwargs)
    assert info.value.code_name == "INVALID_ARGUMENT"
    assert field in info.value.details, info.value.details
    assert_serves(client)


def test_tier_with_agreeing_explicit_values_is_accepted(client: Client) -> None:
    out = client.generate(prompt_ids(5), max_tokens=2, tier="tight", ttft_ms=1000.0,
                          tpot_ms=60.0)
    assert (out.tier, out.ttft_slo_ms, out.tpot_slo_ms) == ("tight", 1000.0, 60.0)


def test_oversize_message_is_resource_exhausted(client: Client) -> None:
    with pytest.raises(Rejected) as info:
        client.generate("a" * (5 * 1024 * 1024), max_tokens=4)  # > the 4 MiB server limit
    assert info.value.code_name == "RESOURCE_EXHAUSTED"
    assert_serves(client)


def test_multi_stage_request_is_judged_per_stage(client: Client) -> None:
    """Reasoning: 8 thinking tokens under the tight tier, then the answer under a custom
    TPOT no engine can meet: the first stage is met, the second missed, the request too."""
    stages = [StageSpec(max_tokens=8, tier="tight"), StageSpec(tpot_ms=0.001)]
    prompt = prompt_ids(5)
    out = client.generate(prompt, max_tokens=12, stages=stages, **GREEDY)
    assert out.token_ids == sim_tokens(prompt, 12, None)
    assert [s.tokens for s in out.stages] == [8, 4]
    assert [s.tier for s in out.stages] == ["tight", "custom"]
    assert out.stages[0].slo_met and out.stages[0].ttft_slo_ms == 1000.0
    assert not out.stages[1].slo_met and out.stages[1].tpot_slo_ms == pytest.approx(0.001)
    assert out.tier == "tight" and not out.slo_met


@pytest.mark.parametrize(("stages", "field"), [
    ([StageSpec(tier="tight"), StageSpec(tier="loose")], "stages[0]"),
    ([StageSpec(max_tokens=-1, tier="tight"), StageSpec()], "stages[0].max_tokens"),
    ([StageSpec(max_tokens=2, tier="nope"), StageSpec()], "stages[0].slo.tier"),
])
def test_bad_stages_are_invalid_argument(client: Client, stages, field: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        client.generate(prompt_ids(5), max_tokens=12, stages=stages)
    assert info.value.details.startswith(field)


def test_stages_and_a_request_slo_together_are_invalid(client: Client) -> None:
    with pytest.raises(InvalidRequest) as info:
        client.generate(prompt_ids(5), max_tokens=4, tier="tight",
                        stages=[StageSpec(max_tokens=2, tier="tight"), StageSpec()])
    assert info.value.details.startswith("slo:")


# --------------------------------------------------------- info, health, reflection --


def test_model_info_lists_the_tiers(client: Client) -> None:
    info = client.model_info()
    tiers = {t.name: (t.ttft_ms, t.tpot_ms) for t in info.tiers}
    assert tiers == {"tight": (1000.0, 60.0), "loose": (4000.0, 200.0)}
    assert info.default_tier == "loose"
    assert info.max_model_len == MAX_MODEL_LEN
    assert info.vocab_size > 0
    assert info.model


def test_cluster_info_lists_four_healthy_workers(client: Client, sim_cluster) -> None:
    # Not at once after start: a worker may join late (test_coordinator_sim.fragile_cluster).
    wait_for(lambda: all_healthy(client.cluster_info(), 4), 20, "4 healthy workers")
    info = client.cluster_info()
    assert len(info.workers) == 4
    assert sorted(w.role for w in info.workers) == ["decode", "decode", "prefill", "prefill"]
    assert all(w.healthy for w in info.workers)
    assert all(w.load is not None and w.load.role == w.role for w in info.workers)
    worker_addresses = {p.address for p in sim_cluster.procs if p.name != "coordinator"}
    assert {w.address for w in info.workers} == worker_addresses
    assert info.scheduler == "slos"


def test_health_check_is_serving(client: Client) -> None:
    assert client.health() is HealthStatus.SERVING


def test_server_reflection_lists_the_service(client: Client) -> None:
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    db = ProtoReflectionDescriptorDatabase(client.channel)
    services = set(db.get_services())
    assert "slos_serve.v1.SloServe" in services
    assert "grpc.health.v1.Health" in services
    service = DescriptorPool(db).FindServiceByName("slos_serve.v1.SloServe")
    assert {m.name for m in service.methods} == {"Generate", "Abort", "ModelInfo", "ClusterInfo",
                                                 "AddWorker", "RemoveWorker"}
    generate = service.methods_by_name["Generate"]
    assert generate.server_streaming and not generate.client_streaming
