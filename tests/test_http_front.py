"""The OpenAI-compatible HTTP front, driven by the official `openai` SDK and raw HTTP, on a
SIMULATED-engine cluster with an API key: streams with SLO headers and fields, the decision
and the measured verdict in the chunks, OpenAI error objects (400 naming the field, 401, 404,
429 + Retry-After, 503), the same key on gRPC, and a client disconnect freeing the workers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import openai
import pytest

from slos_serve.client import Client
from slos_serve.errors import SloServeError
from slos_serve.up import ClusterSpec, LocalCluster, free_port

pytestmark = pytest.mark.timeout(180)

KEY = "test-key-5f1c9e"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster(model_dir: str, tmp_path_factory):
    log = tmp_path_factory.mktemp("front") / "requests.jsonl"
    c = LocalCluster(ClusterSpec(model=model_dir, engine="sim", prefill=1, decode=1,
                                 api_key=KEY, request_log=str(log)))
    c.start(timeout_s=120, progress=False)
    c.request_log = log  # type: ignore[attr-defined]
    yield c
    c.stop()


@pytest.fixture(scope="module")
def sdk(cluster) -> openai.OpenAI:
    return openai.OpenAI(base_url=cluster.http_url + "/v1", api_key=KEY, max_retries=0)


@pytest.fixture(scope="module")
def model_id(cluster) -> str:
    return cluster.spec.model


def _post(cluster, path: str, body: dict, key: str | None = KEY, **headers: str):
    auth = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(cluster.http_url + path, json=body, headers={**auth, **headers},
                      timeout=30)


def test_sdk_streams_a_completion_with_slo_headers(sdk, model_id, cluster) -> None:
    stream = sdk.completions.create(
        model=model_id, prompt="def fib(n):", max_tokens=12, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
        extra_headers={"x-slo-ttft-ms": "3000", "x-slo-tpot-ms": "400"})
    chunks = list(stream)
    texts = [c.choices[0].text for c in chunks if c.choices]
    first = chunks[0].model_extra["slo"]
    assert first["decision"] == "admitted" and first["tpot_slo_ms"] == 400
    closing = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
    verdict = closing.model_extra["slo"]
    assert closing.choices[0].finish_reason == "length"
    assert verdict["ttft_ms"] > 0 and verdict["slo_met"] is True
    assert chunks[-1].usage.completion_tokens == 12 and chunks[-1].usage.prompt_tokens > 0
    assert "".join(texts)


def test_sdk_chat_completion_with_a_tier_and_body_slo(sdk, model_id) -> None:
    stream = sdk.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "Say hi"}],
        max_completion_tokens=8, stream=True, extra_headers={"x-slo-tier": "loose"},
        extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].model_extra["slo"]["tier"] == "loose"
    whole = sdk.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "Say hi"}], max_tokens=6,
        extra_body={"slo": {"ttft_ms": 5000, "tpot_ms": 500}, "ignore_eos": True})
    assert whole.choices[0].message.role == "assistant"
    assert whole.usage.completion_tokens == 6
    assert whole.model_extra["slo"]["tpot_slo_ms"] == 500


def test_decision_header_and_greedy_text_equal_to_grpc(cluster, model_id) -> None:
    body = {"model": model_id, "prompt": [5, 6, 7, 8, 9], "max_tokens": 10,
            "temperature": 0, "ignore_eos": True, "return_token_ids": True}
    r = _post(cluster, "/v1/completions", body)
    assert r.status_code == 200, r.text
    assert r.headers["x-slo-decision"] == "admitted" and r.headers["x-request-id"]
    out = r.json()["choices"][0]
    with Client(cluster.target, api_key=KEY, timeout=30) as c:
        ref = c.generate([5, 6, 7, 8, 9], max_tokens=10, temperature=0.0, ignore_eos=True)
    assert out["token_ids"] == list(ref.token_ids) and out["text"] == ref.text


@pytest.mark.parametrize(("body", "field"), [
    ({"prompt": "x", "max_tokens": -1}, "max_tokens"),
    ({"prompt": "x", "max_tokens": "ten"}, "max_tokens"),
    ({"prompt": "x", "temperature": -0.5}, "temperature"),
    ({"max_tokens": 4}, "prompt"),
    ({"prompt": ["a", "b"]}, "prompt"),
    ({"prompt": "x", "n": 2}, "n"),
    ({"prompt": "x", "slo": {"tier": "nope"}}, "slo.tier"),
    ({"prompt": "x", "slo": {"tpot_ms": "fast"}}, "slo.tpot_ms"),
    ({"prompt": "x", "on_reject": "drop"}, "on_reject"),
    ({"prompt": [1, 99999]}, "prompt"),
])
def test_bad_input_is_400_naming_the_field(cluster, body: dict, field: str) -> None:
    r = _post(cluster, "/v1/completions", body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == field and err["message"].startswith(field), err


def test_bad_header_and_bad_json(cluster) -> None:
    r = _post(cluster, "/v1/completions", {"prompt": "x"}, **{"x-slo-tpot-ms": "-3"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "x-slo-tpot-ms"
    r = httpx.post(cluster.http_url + "/v1/chat/completions", content=b"{not json",
                   headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "body"
    r = _post(cluster, "/v1/chat/completions", {"messages": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


def test_unknown_model_is_404(sdk) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        sdk.completions.create(model="gpt-4", prompt="x", max_tokens=2)
    assert "gpt-4" in str(exc.value)
    assert sdk.models.list().data[0].id  # the served id


def test_rejected_request_is_429_with_retry_after(cluster, model_id) -> None:
    body = {"model": model_id, "prompt": "x", "max_tokens": 4, "on_reject": "reject",
            "slo": {"ttft_ms": 0.01, "tpot_ms": 0.01}}
    r = _post(cluster, "/v1/completions", body)
    assert r.status_code == 429 and float(r.headers["Retry-After"]) > 0
    assert "rejected by the planner" in r.json()["error"]["message"]
    served = _post(cluster, "/v1/completions", {**body, "on_reject": "best_effort"})
    assert served.status_code == 200 and served.headers["x-slo-decision"] == "best_effort"
    assert served.headers["x-slo-reason"]


def test_api_key_on_http_and_grpc(cluster, model_id) -> None:
    for key in (None, "wrong"):
        r = _post(cluster, "/v1/completions", {"prompt": "x"}, key=key)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    bad = openai.OpenAI(base_url=cluster.http_url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    assert httpx.get(cluster.http_url + "/health").status_code == 200  # open
    assert "slos_" in httpx.get(cluster.http_url + "/metrics").text
    with Client(cluster.target, api_key="", timeout=10) as c:
        with pytest.raises(SloServeError) as exc:
            c.generate("x", max_tokens=2)
    assert exc.value.code == grpc.StatusCode.UNAUTHENTICATED
    logs = "".join(p.read_text() for p in Path(cluster.log_dir).glob("*.log"))
    assert KEY not in logs and "wrong" not in logs


def _idle(cluster) -> bool:
    with Client(cluster.target, api_key=KEY, timeout=5) as c:
        workers = c.cluster_info().workers
    return all(w.load is not None and w.load.active_requests == 0
               and w.load.kv_blocks_used == 0 for w in workers)


def test_client_disconnect_aborts_on_the_workers(cluster, model_id) -> None:
    body = {"model": model_id, "prompt": "a long story", "max_tokens": 1500,
            "ignore_eos": True, "stream": True}
    with httpx.stream("POST", cluster.http_url + "/v1/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as r:
        lines = r.iter_lines()
        got = [line for line, _ in zip(lines, range(6), strict=False) if line]
        assert got and got[0].startswith("data: ")
        rid = r.headers["x-request-id"]
        deadline = time.monotonic() + 5  # the workers report their load periodically
        while _idle(cluster):
            assert time.monotonic() < deadline, "the workers never reported the request"
            time.sleep(0.1)
    deadline = time.monotonic() + 5
    while not _idle(cluster):
        assert time.monotonic() < deadline, "the workers still serve a disconnected request"
        time.sleep(0.2)
    records = [json.loads(x) for x in cluster.request_log.read_text().splitlines()]
    mine = [x for x in records if x["request_id"] == rid]
    assert mine and mine[0]["finish_reason"] == "cancelled"
    assert 1 <= mine[0]["completion_tokens"] < 1500


def test_no_worker_is_503(model_dir: str, tmp_path: Path) -> None:
    http, grpc_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "slos_serve.cli", "coordinator", "--model", model_dir,
         "--prefill", f"127.0.0.1:{free_port()}", "--decode", f"127.0.0.1:{free_port()}",
         "--scheduler", "vllm", "--port", str(grpc_port), "--http-port", str(http),
         "--metrics-port", "0"], cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "coordinator.log", "w"), process_group=0,
        env={k: v for k, v in os.environ.items() if k != "SLOS_SERVE_API_KEY"})
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{http}/health", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, (
                    (tmp_path / "coordinator.log").read_text())
                time.sleep(0.3)
        assert health.status_code == 503
        r = httpx.post(f"http://127.0.0.1:{http}/v1/completions",
                       json={"prompt": "x", "max_tokens": 2}, timeout=10)
        assert r.status_code == 503 and r.json()["error"]["type"] == "service_unavailable"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)


def test_stages_and_vllm_priority_map_to_slos(cluster, model_id) -> None:
    body = {"model": model_id, "prompt": "x", "max_tokens": 10, "ignore_eos": True,
            "stages": [{"slo": {"tier": "tight"}, "max_tokens": 4}, {"slo": {"tier": "loose"}}]}
    r = _post(cluster, "/v1/completions", body)
    assert r.status_code == 200, r.text
    stages = r.json()["slo"]["stages"]
    assert [s["tier"] for s in stages] == ["tight", "loose"]
    assert [s["tokens"] for s in stages] == [4, 6]
    # vLLM's priority (smaller: sooner) picks the tier of that TPOT rank, tightest first
    ranks = {p: _post(cluster, "/v1/completions", {"prompt": "x", "max_tokens": 2,
                                                     "priority": p}).headers["x-slo-tier"]
             for p in (0, 1, 7)}
    assert ranks == {0: "tight", 1: "loose", 7: "loose"}
    r = _post(cluster, "/v1/completions", {"prompt": "x", "priority": -1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "priority"
