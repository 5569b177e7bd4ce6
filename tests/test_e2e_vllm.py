"""End to end on real vLLM engines: 2 prefill + 2 decode workers, KV over NIXL, gRPC.

Slow (engine starts): one cluster is shared by every test of this module.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import GREEDY, SEEDED

from slos_serve.client import AsyncClient, Chunk, Client, Started
from slos_serve.errors import InvalidRequest, Rejected

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(model_dir: str, reference):
    # `reference` first: its engine has stopped before this cluster's four start.
    from slos_serve.up import ClusterSpec, LocalCluster

    cluster = LocalCluster(ClusterSpec(model=model_dir, engine="vllm", prefill=2, decode=2))
    cluster.start(timeout_s=600, progress=False)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def client(cluster):
    with Client(cluster.target, timeout=120) as c:
        yield c


def test_greedy_outputs_equal_a_colocated_engine(client, prompts, reference) -> None:
    for prompt, expected in zip(prompts, reference["greedy"], strict=True):
        got = client.generate(prompt, **GREEDY)
        assert got.token_ids == expected, f"prompt of {len(prompt)} tokens"
        assert got.completion_tokens == len(expected)
        assert got.finish_reason == "length"


def test_seeded_sampling_equals_a_colocated_engine(client, prompts, reference) -> None:
    for prompt, expected in zip(prompts, reference["seeded"], strict=True):
        got = client.generate(prompt, **SEEDED)
        assert got.token_ids == expected, f"prompt of {len(prompt)} tokens"


def test_streamed_text_is_the_detokenized_output(client, prompts, model_dir) -> None:
    from slos_serve.tokenizer import load_tokenizer

    tok = load_tokenizer(model_dir)
    chunks, ids = [], []
    stream = client.stream(prompts[4], **GREEDY)
    for event in stream:
        if isinstance(event, Chunk):
            chunks.append(event.text)
            ids.extend(event.token_ids)
    assert ids == stream.completion.token_ids
    assert "".join(chunks) == tok.decode(ids)


def test_32_concurrent_streams_all_complete_and_match(cluster, prompts, reference) -> None:
    async def run_all():
        async with AsyncClient(cluster.target, timeout=300) as ac:
            jobs = [
                ac.generate(prompts[i % len(prompts)], request_id=f"conc-{i}", **GREEDY)
                for i in range(32)
            ]
            return await asyncio.gather(*jobs)

    results = asyncio.run(run_all())
    assert len(results) == 32
    for i, got in enumerate(results):
        assert got.token_ids == reference["greedy"][i % len(prompts)], f"request {i}"
    workers = {r.decode_worker for r in results}
    assert len(workers) == 2, "both decode workers should have served"


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": list(range(1, 2100))}, "prompt"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"tier": "platinum"}, "slo.tier"),
        ({"ttft_ms": 0.0}, "slo.ttft_ms"),
        ({"tpot_ms": -1.0}, "slo.tpot_ms"),
        ({"tier": "tight", "tpot_ms": 5.0}, "slo.tpot_ms"),
    ],
)
def test_bad_input_is_invalid_argument_and_cluster_keeps_serving(client, kwargs, field) -> None:
    args = {"prompt": "def main():", "max_tokens": 4, "temperature": 0.0, **kwargs}
    with pytest.raises(InvalidRequest) as exc:
        client.generate(args.pop("prompt"), **args)
    assert exc.value.code_name == "INVALID_ARGUMENT"
    assert field in exc.value.details
    ok = client.generate("def main():", max_tokens=3, temperature=0.0)
    assert ok.completion_tokens == 3


def test_oversize_message_is_resource_exhausted(client) -> None:
    with pytest.raises(Rejected) as exc:
        client.generate("x" * (5 * 1024 * 1024), max_tokens=2)
    assert exc.value.code_name == "RESOURCE_EXHAUSTED"
    assert client.generate("def main():", max_tokens=2, temperature=0.0).completion_tokens == 2


def test_cancel_midway_aborts_on_workers_and_frees_kv(client, prompts) -> None:
    stream = client.stream(prompts[6], max_tokens=1200, temperature=0.0, ignore_eos=True)
    decode_worker = None
    seen_tokens = 0
    events = iter(stream)  # kept: leaving a `for` loop over it would cancel the stream
    while seen_tokens < 20:
        event = next(events)
        if isinstance(event, Started):
            decode_worker = event.decode_worker
        elif isinstance(event, Chunk):
            seen_tokens += len(event.token_ids)
    # Mid-stream, the request holds KV blocks on its decode worker (load reports come
    # every 250 ms: wait for one taken during the request; 1200 tokens last seconds).
    deadline = time.monotonic() + 2
    while True:
        busy = {w.address: w.load for w in client.cluster_info().workers}
        if busy[decode_worker].kv_blocks_used > 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert busy[decode_worker].kv_blocks_used > 0
    stream.cancel()
    deadline = time.monotonic() + 15
    while True:
        loads = {w.address: w.load for w in client.cluster_info().workers}
        idle = all(
            load.running == 0 and load.kv_blocks_used == 0 and load.active_requests == 0
            for load in loads.values()
        )
        if idle:
            break
        assert time.monotonic() < deadline, f"workers still busy after cancel: {loads}"
        time.sleep(0.2)
    assert client.generate("def main():", max_tokens=2, temperature=0.0).completion_tokens == 2


# ------------------------------------------------- the OpenAI-compatible HTTP front --
def test_http_front_outputs_equal_a_colocated_engine(cluster, prompts, reference) -> None:
    """The same cluster through /v1/completions (openai SDK): greedy and seeded token ids
    equal one colocated engine's, as over gRPC."""
    import openai

    sdk = openai.OpenAI(base_url=cluster.http_url + "/v1", api_key="none", max_retries=0)
    for sampling, expected_all in ((GREEDY, reference["greedy"]),
                                   (SEEDED, reference["seeded"])):
        for prompt, expected in zip(prompts[:5], expected_all, strict=False):
            body = {k: v for k, v in sampling.items() if k in ("seed", "ignore_eos")}
            out = sdk.completions.create(
                model=cluster.spec.model, prompt=prompt, max_tokens=sampling["max_tokens"],
                temperature=sampling["temperature"], top_p=sampling.get("top_p"),
                extra_body={**body, "return_token_ids": True})
            assert out.choices[0].model_extra["token_ids"] == expected
            assert out.usage.completion_tokens == len(expected)


def test_http_disconnect_frees_kv_on_vllm_workers(cluster, client, prompts) -> None:
    import httpx

    body = {"prompt": prompts[6], "max_tokens": 1200, "temperature": 0, "ignore_eos": True,
            "stream": True}
    with httpx.stream("POST", cluster.http_url + "/v1/completions", json=body,
                      timeout=120) as r:
        lines = r.iter_lines()
        assert [x for x, _ in zip(lines, range(40), strict=False) if x]
        decode_worker = None
        deadline = time.monotonic() + 3
        while decode_worker is None and time.monotonic() < deadline:
            loads = {w.address: w.load for w in client.cluster_info().workers}
            decode_worker = next((a for a, load in loads.items() if load.role == "decode"
                                  and load.kv_blocks_used > 0), None)
            time.sleep(0.05)
        assert decode_worker is not None, "the request never held KV on a decode worker"
    deadline = time.monotonic() + 15
    while True:
        loads = {w.address: w.load for w in client.cluster_info().workers}
        if all(x.running == 0 and x.kv_blocks_used == 0 and x.active_requests == 0
               for x in loads.values()):
            break
        assert time.monotonic() < deadline, f"workers still busy after disconnect: {loads}"
        time.sleep(0.2)
