"""Request validation rules that mirror what the engine refuses (issue 14): each one is
INVALID_ARGUMENT at the coordinator, naming the field. Pure logic, no processes."""

from __future__ import annotations

import asyncio
import threading

import pytest

from coordinator import openai_api as api
from coordinator.validate import (
    INLINE_TOKENIZE_CHARS,
    TEXT_BYTES_PER_TOKEN,
    InvalidRequest,
    ModelFacts,
    validate,
    validate_async,
)
from proto import slos_serve_pb2 as pb
from slos_serve.core.slo import MAX_SLO_MS, MIN_SLO_MS, SloError, TierTable

TIERS = TierTable.builtin()
FACTS = ModelFacts(max_model_len=64, vocab_size=100)


def tokenize(text: str) -> list[int]:
    return [ord(c) % 100 for c in text[:8]]


def request(**kw) -> pb.GenerateRequest:
    kw.setdefault("sampling", pb.SamplingParams(max_tokens=8))
    if "text" not in kw and "token_ids" not in kw:
        kw["text"] = "hello"
    return pb.GenerateRequest(**kw)


def sampling(**kw) -> pb.SamplingParams:
    return pb.SamplingParams(max_tokens=4, **kw)


@pytest.mark.parametrize("req, field", [
    (request(sampling=sampling(temperature=2.5)), "sampling.temperature"),
    (request(sampling=sampling(temperature=float("nan"))), "sampling.temperature"),
    (request(sampling=sampling(temperature=float("inf"))), "sampling.temperature"),
    (request(sampling=sampling(top_p=1.5)), "sampling.top_p"),
    (request(sampling=sampling(top_p=float("nan"))), "sampling.top_p"),
    (request(sampling=sampling(seed=-1)), "sampling.seed"),
    (request(sampling=sampling(seed=-(2**63))), "sampling.seed"),
    (request(sampling=sampling(stop=[""])), "sampling.stop[0]"),
    (request(sampling=sampling(stop=["ok", "a\x00b"])), "sampling.stop[1]"),
    (request(sampling=sampling(stop=["x" * 300])), "sampling.stop[0]"),
    (request(sampling=sampling(stop=["s"] * 17)), "sampling.stop"),
    (request(on_reject=7), "on_reject"),
    (request(on_reject=-1), "on_reject"),
    (request(request_id="a\nb"), "request_id"),
    (request(request_id="a b"), "request_id"),
    (request(request_id="caf\u00e9"), "request_id"),
    (request(request_id="\x1b[31m"), "request_id"),
    (request(slo=pb.Slo(tpot_ms=1e-321)), "slo.tpot_ms"),
    (request(slo=pb.Slo(ttft_ms=float("nan"))), "slo.ttft_ms"),
    (request(slo=pb.Slo(ttft_ms=float("inf"))), "slo.ttft_ms"),
    (request(slo=pb.Slo(ttft_ms=1e300)), "slo.ttft_ms"),
    (request(slo=pb.Slo(tpot_ms=MIN_SLO_MS / 2)), "slo.tpot_ms"),
    (request(slo=pb.Slo(tier="t" * 10_000)), "slo.tier"),
    (request(slo=None, stages=[pb.Stage(slo=pb.Slo(tpot_ms=1e-300), max_tokens=2),
                               pb.Stage()]), "stages[0].slo.tpot_ms"),
    (request(slo=None, stages=[pb.Stage(until="\x07", max_tokens=2), pb.Stage()]),
     "stages[0].until"),
    (request(text="x" * (TEXT_BYTES_PER_TOKEN * 64 + 1)), "prompt.text"),
    (request(text="\u00e9" * (TEXT_BYTES_PER_TOKEN * 32 + 1)), "prompt.text"),  # 2 B each
    (request(token_ids=pb.TokenIds(ids=[1] * 100_000)), "prompt"),
])
def test_engine_limits_are_refused_naming_the_field(req, field) -> None:
    with pytest.raises(InvalidRequest) as exc:
        validate(req, FACTS, TIERS, tokenize)
    assert str(exc.value).startswith(field + ":"), exc.value
    assert exc.value.code == "INVALID_ARGUMENT"
    assert len(str(exc.value)) < 400  # an echoed value is cut short


@pytest.mark.parametrize("req", [
    request(sampling=sampling(temperature=2.0, top_p=1.0, seed=2**63 - 1)),
    request(sampling=sampling(temperature=0.0, seed=0, stop=["\n", "\t}", "END"])),
    request(request_id="req-1_a:b/c.d"),
    request(slo=pb.Slo(ttft_ms=MIN_SLO_MS, tpot_ms=MAX_SLO_MS)),
    request(on_reject=pb.REJECT),
])
def test_values_at_the_limits_are_served(req) -> None:
    validate(req, FACTS, TIERS, tokenize)


def test_slo_range_is_the_tier_tables_too(tmp_path) -> None:
    path = tmp_path / "tiers.json"
    path.write_text('{"tiers": {"t": {"ttft_ms": 100, "tpot_ms": 1e-320}}}')
    with pytest.raises(ValueError, match="tpot_ms"):
        TierTable.load(path)
    with pytest.raises(SloError):
        TIERS.resolve(tpot_ms=1e-321)


def test_bad_fields_are_refused_before_tokenizing() -> None:
    called = []
    bad = request(sampling=sampling(temperature=9.0))
    with pytest.raises(InvalidRequest):
        validate(bad, FACTS, TIERS, lambda t: called.append(t) or [])
    assert called == []


def test_long_texts_are_tokenized_off_the_event_loop() -> None:
    threads: list[int] = []

    def tok(text: str) -> list[int]:
        threads.append(threading.get_ident())
        return [1, 2, 3]

    long_text = "y" * (INLINE_TOKENIZE_CHARS + 1)
    facts = ModelFacts(max_model_len=INLINE_TOKENIZE_CHARS, vocab_size=100)

    async def run() -> int:
        await validate_async(request(text=long_text), facts, TIERS, tok)
        await validate_async(request(text="short"), facts, TIERS, tok)
        return threading.get_ident()

    loop_thread = asyncio.run(run())
    assert threads[0] != loop_thread and threads[1] == loop_thread


def _parse(body: dict, **headers: str) -> api.Call:
    async def render(messages):
        return [1, 2, 3]

    return asyncio.run(api.parse_call(body, headers, chat="messages" in body, model="m",
                                      tiers=TIERS, render_chat=render, max_model_len=64))


@pytest.mark.parametrize("body, field", [
    ({"prompt": "x", "max_tokens": 2**40}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 1e300}, "max_tokens"),
    ({"prompt": "x", "seed": 2**70}, "seed"),
    ({"prompt": "x", "on_reject": {}}, "on_reject"),  # unhashable: once an HTTP 500
    ({"prompt": "x", "on_reject": ["reject"]}, "on_reject"),
    ({"prompt": "x", "on_reject": 1}, "on_reject"),
    ({"messages": [{"role": "user", "content": "z" * (TEXT_BYTES_PER_TOKEN * 64)}]},
     "messages"),
])
def test_http_bodies_out_of_range_name_the_field(body, field) -> None:
    with pytest.raises(api.BadRequest) as exc:
        _parse(body)
    assert exc.value.field == field
