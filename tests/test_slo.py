"""SLO tiers and request validation: pure logic, no processes."""

import pytest

from coordinator.validate import InvalidRequest, ModelFacts, validate
from proto import slos_serve_pb2 as pb
from slos_serve.core.slo import SloError, TierTable

TIERS = TierTable.builtin()
FACTS = ModelFacts(max_model_len=64, vocab_size=100)


def tokenize(text: str) -> list[int]:
    return [ord(c) % 100 for c in text]


def request(**kw) -> pb.GenerateRequest:
    kw.setdefault("sampling", pb.SamplingParams(max_tokens=8))
    if "text" not in kw and "token_ids" not in kw:
        kw["text"] = "hello"
    return pb.GenerateRequest(**kw)


def test_tier_resolution() -> None:
    assert TIERS.resolve("tight").tpot_ms == 60.0
    assert TIERS.resolve().name == TIERS.default
    custom = TIERS.resolve(ttft_ms=123.0)
    assert (custom.name, custom.ttft_ms) == ("custom", 123.0)
    assert TIERS.resolve("tight", tpot_ms=60.0).name == "tight"  # agreeing values are fine


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"tier": "gold"}, "slo.tier"),
        ({"ttft_ms": 0.0}, "slo.ttft_ms"),
        ({"tpot_ms": -5.0}, "slo.tpot_ms"),
        ({"tier": "tight", "tpot_ms": 10.0}, "slo.tpot_ms"),
    ],
)
def test_bad_slos_name_their_field(kwargs, field) -> None:
    with pytest.raises(SloError) as exc:
        TIERS.resolve(**kwargs)
    assert exc.value.field == field
    assert str(exc.value).startswith(field)


@pytest.mark.parametrize(
    "req, needle",
    [
        (pb.GenerateRequest(sampling=pb.SamplingParams(max_tokens=1)), "prompt"),
        (request(text="   "), "prompt.text"),
        (request(token_ids=pb.TokenIds(ids=[])), "prompt"),
        (request(token_ids=pb.TokenIds(ids=[1, 100])), "prompt.token_ids"),
        (request(text="x" * 64), "prompt:"),
        (request(sampling=pb.SamplingParams(max_tokens=0)), "sampling.max_tokens"),
        (request(sampling=pb.SamplingParams(max_tokens=-3)), "sampling.max_tokens"),
        (request(sampling=pb.SamplingParams(max_tokens=60)), "sampling.max_tokens"),
        (request(sampling=pb.SamplingParams(max_tokens=4, top_p=0)), "sampling.top_p"),
        (request(sampling=pb.SamplingParams(max_tokens=4, temperature=-1)), "sampling.temperature"),
        (request(slo=pb.Slo(tier="nope")), "slo.tier"),
        (request(slo=pb.Slo(tier="loose", ttft_ms=1)), "slo.ttft_ms"),
        (request(request_id="r" * 300), "request_id"),
    ],
)
def test_invalid_requests_name_their_field(req, needle) -> None:
    with pytest.raises(InvalidRequest) as exc:
        validate(req, FACTS, TIERS, tokenize)
    assert needle in str(exc.value)
    assert exc.value.code == "INVALID_ARGUMENT"


def test_stages_resolve_each_slo_and_stage_zero_is_the_request_tier() -> None:
    stages = [pb.Stage(slo=pb.Slo(tier="tight"), max_tokens=4),
              pb.Stage(slo=pb.Slo(tpot_ms=500.0), until="END")]
    spec = validate(request(slo=None, stages=stages), FACTS, TIERS, tokenize)
    assert [s.tier for s in spec.stages] == ["tight", "custom"]
    assert spec.tier.name == "tight" and spec.stages[1].tpot_ms == 500.0
    assert spec.stages[0].max_tokens == 4 and spec.stages[1].until == "END"


def test_single_stage_request_has_one_stage_from_its_slo() -> None:
    spec = validate(request(), FACTS, TIERS, tokenize)
    assert len(spec.stages) == 1 and spec.stages[0].tier == spec.tier.name


def test_sampled_requests_get_a_seed_greedy_ones_do_not() -> None:
    sampled = validate(request(), FACTS, TIERS, tokenize)
    assert sampled.sampling.HasField("seed")
    greedy = validate(
        request(sampling=pb.SamplingParams(max_tokens=4, temperature=0)), FACTS, TIERS, tokenize
    )
    assert not greedy.sampling.HasField("seed")
    assert greedy.prompt_token_ids == tokenize("hello")
