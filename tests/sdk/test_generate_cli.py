"""`slos-serve generate` against the scripted server: output, JSON, exit codes."""

from __future__ import annotations

import argparse
import json

import grpc
import pytest

from proto import slos_serve_pb2 as pb
from sdk.scripted_server import RunningServer, Status, free_port, m_final, m_started
from slos_serve import generate_cli

pytestmark = pytest.mark.timeout(30)


# --------------------------------------------------------------- generate CLI --


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="slos-serve generate")
    generate_cli.add_arguments(parser)
    return generate_cli.run(parser.parse_args(argv))


def test_cli_streams_text_then_verdict(srv: RunningServer, capsys: pytest.CaptureFixture) -> None:
    rc = run_cli(["--target", srv.target, "--prompt", "hi", "--max-tokens", "3", "--seed", "1",
                  "--tier", "interactive", "--stop", "a", "b", "--stop", "c", "--ignore-eos"])
    out, err = capsys.readouterr()
    assert rc == 0
    assert out == "Hello!\n"
    assert "admitted" in err and "TTFT 12.5 ms (SLO 200 ms): met" in err
    assert "TPOT 4.2 ms (SLO 50 ms): met" in err and "SLO: met" in err
    (req,) = srv.servicer.requests
    assert list(req.sampling.stop) == ["a", "b", "c"] and req.sampling.ignore_eos
    assert req.slo.tier == "interactive" and req.sampling.seed == 1


def test_cli_json(srv: RunningServer, capsys: pytest.CaptureFixture) -> None:
    rc = run_cli(["--target", srv.target, "--prompt", "hi", "--ttft-ms", "100", "--tpot-ms",
                  "20", "--json"])
    out, _ = capsys.readouterr()
    assert rc == 0
    data = json.loads(out)
    assert data["text"] == "Hello!" and data["decision"] == "admitted" and data["slo_met"]
    assert data["token_ids"] == [1, 2, 3] and data["stages"][0]["tokens"] == 3
    req = srv.servicer.requests[0]
    assert (req.slo.ttft_ms, req.slo.tpot_ms) == (100, 20)


@pytest.mark.parametrize(
    ("code", "rc", "name"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 2, "InvalidRequest"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 3, "Rejected"),
        (grpc.StatusCode.INTERNAL, 1, "Internal"),
    ],
)
def test_cli_errors_and_exit_codes(
    srv: RunningServer, capsys: pytest.CaptureFixture, code: grpc.StatusCode, rc: int, name: str
) -> None:
    srv.servicer.script = [Status(code, "slo.tier: unknown tier 'x'")]
    assert run_cli(["--target", srv.target, "--prompt", "hi", "--tier", "x"]) == rc
    _, err = capsys.readouterr()
    assert f"error: {name} ({code.name}): slo.tier: unknown tier 'x'" in err

    assert run_cli(["--target", srv.target, "--prompt", "hi", "--json"]) == rc
    out, _ = capsys.readouterr()
    assert json.loads(out)["error"] == {
        "type": name, "code": code.name, "details": "slo.tier: unknown tier 'x'"}


def test_cli_rejected_decision_and_unavailable(
    srv: RunningServer, capsys: pytest.CaptureFixture
) -> None:
    srv.servicer.script = [m_started(pb.REJECTED), m_final(pb.REJECTED, False)]
    assert run_cli(["--target", srv.target, "--prompt", "hi"]) == 3
    assert "rejected" in capsys.readouterr().err
    assert run_cli(["--target", f"127.0.0.1:{free_port()}", "--prompt", "hi"]) == 1
    assert "error: Unavailable (UNAVAILABLE)" in capsys.readouterr().err


def test_cli_bad_arguments_exit_2(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        run_cli(["--max-tokens", "3"])  # --prompt is required
    assert info.value.code == 2
    assert run_cli(["--prompt", "hi", "--client-cert", "/nonexistent/c.pem",
                    "--client-key", "/nonexistent/k.pem"]) == 2


def test_cli_dispatcher_runs_generate(srv: RunningServer, capsys: pytest.CaptureFixture) -> None:
    from slos_serve import cli

    assert cli.main(["generate", "--target", srv.target, "--prompt", "hi", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["text"] == "Hello!"
