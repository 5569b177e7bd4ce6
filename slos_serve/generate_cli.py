"""`slos-serve generate`: send one request to a coordinator through the SDK and stream it.

Generated text goes to stdout as it arrives; the verdict (decision, TTFT, TPOT, SLO met)
goes to stderr afterwards, so `slos-serve generate ... > out.txt` captures only the text.
With `--json`, stdout gets one JSON object instead: the Completion, or on failure
`{"error": {...}}`.

Exit codes: 0 success; 2 invalid input (argparse errors and INVALID_ARGUMENT); 3 rejected
(RESOURCE_EXHAUSTED, or a Completion whose decision is "rejected"); 130 interrupted;
1 any other error. Scripts can branch on these without parsing text.

The SDK (gRPC channels) is imported where used, so that `slos-serve --help` (which imports
every command module) stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from slos_serve.config import Options, option
from slos_serve.errors import InvalidRequest, Rejected, SloServeError

if TYPE_CHECKING:
    from slos_serve.client import Completion, TlsConfig

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_INVALID = 2
EXIT_REJECTED = 3
EXIT_INTERRUPTED = 130


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerateArgs(Options):
    """The request and how it is sent; the flags' names are `GenerateOptions`' fields."""

    target: str = option("localhost:50051", "coordinator address (default: %(default)s)",
                         metavar="HOST:PORT")
    prompt: str = option(help="prompt text; '-' reads it from stdin", metavar="TEXT")
    max_tokens: int = option(64, "tokens to generate (default: %(default)s)", metavar="N")
    temperature: float | None = option(None, "sampling temperature; 0 = greedy (server "
                                             "default 1.0)")
    top_p: float | None = option(None, "nucleus sampling mass")
    seed: int | None = option(None, "sampling seed")
    stop: list[str] | None = option(None, "stop string(s); repeatable", action="extend",
                                    nargs="+", metavar="S")
    ignore_eos: bool = option(False, "keep generating past the end-of-sequence token")


@dataclass(frozen=True, slots=True, kw_only=True)
class SloArgs(Options):
    """The request's SLO and what to do when it cannot be met."""

    tier: str | None = option(None, "SLO tier name", metavar="NAME")
    ttft_ms: float | None = option(None, "time-to-first-token objective, ms", metavar="X")
    tpot_ms: float | None = option(None, "time-per-output-token objective, ms", metavar="Y")
    on_reject: str | None = option(None, "if the SLO cannot be met: serve best-effort or "
                                   "refuse", choices=("default", "best_effort", "reject"))


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputArgs(Options):
    request_id: str | None = option(None, "request id (default: server's)")
    timeout: float = option(300.0, "deadline in seconds (default: %(default)s)", metavar="S")
    json: bool = option(False, "print the Completion as JSON instead of streaming text")


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsArgs(Options):
    """TLS of the channel (plaintext unless one of these is given)."""

    tls: bool = option(False, "use TLS with the system's roots")
    root_certs: str | None = option(None, "CA certificates file", metavar="PEM")
    client_cert: str | None = option(None, "client certificate chain (mutual TLS)",
                                     metavar="PEM")
    client_key: str | None = option(None, "client private key (mutual TLS)", metavar="PEM")
    server_name: str | None = option(None, "name to verify the server certificate against")

    def config(self) -> TlsConfig | None:
        from slos_serve.client import TlsConfig

        if self.root_certs or self.client_cert or self.client_key or self.server_name:
            return TlsConfig.from_files(
                root_certificates=self.root_certs,
                certificate_chain=self.client_cert,
                private_key=self.client_key,
                server_name=self.server_name,
            )
        return TlsConfig() if self.tls else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register `generate`'s options (called by the `slos-serve` dispatcher)."""
    GenerateArgs.add_arguments(parser)
    SloArgs.add_arguments(parser.add_argument_group(
        "SLO", "a named tier, or explicit --ttft-ms/--tpot-ms (both: they must agree)"))
    OutputArgs.add_arguments(parser)
    TlsArgs.add_arguments(parser.add_argument_group(
        "TLS (plaintext unless one of these is given)"))


def _fmt_slo(value: float) -> str:
    return f"{value:g} ms" if value > 0 else "none"


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def print_summary(c: Completion, out: TextIO) -> None:
    """Human-readable verdict of a Completion (kept separate so the demo can reuse it)."""
    where = ", ".join(
        p for p in (
            f"tier {c.tier}" if c.tier else "",
            f"prefill {c.prefill_worker}" if c.prefill_worker else "",
            f"decode {c.decode_worker}" if c.decode_worker else "",
        ) if p
    )
    print(f"request {c.request_id or '?'}: {c.decision.value}"
          + (f" ({where})" if where else ""), file=out)
    print(f"finish: {c.finish_reason}; tokens: {c.prompt_tokens} prompt, "
          f"{c.completion_tokens} completion; e2e {c.e2e_ms:.1f} ms", file=out)
    print(f"TTFT {c.ttft_ms:.1f} ms (SLO {_fmt_slo(c.ttft_slo_ms)}): {_verdict(c.ttft_met)}",
          file=out)
    print(f"TPOT {c.tpot_ms:.1f} ms (SLO {_fmt_slo(c.tpot_slo_ms)}): {_verdict(c.tpot_met)}",
          file=out)
    for i, s in enumerate(c.stages):
        print(f"  stage {i}: {s.tokens} tokens, TPOT {s.tpot_ms:.1f} ms "
              f"(SLO {_fmt_slo(s.tpot_slo_ms)}): {_verdict(s.slo_met)}", file=out)
    print(f"SLO: {_verdict(c.slo_met)}", file=out)


def request_options(args: argparse.Namespace) -> dict[str, Any]:
    """The SDK's request options among the parsed arguments (the flags' dests are named
    after `GenerateOptions`' fields, so the list is not written out here again)."""
    from slos_serve.client import GenerateOptions

    names = [f.name for f in dataclasses.fields(GenerateOptions)]
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


def _exit_code(err: BaseException) -> int:
    if isinstance(err, InvalidRequest):
        return EXIT_INVALID
    if isinstance(err, Rejected):
        return EXIT_REJECTED
    return EXIT_ERROR


def run(args: argparse.Namespace) -> int:
    """Send the request; stream or print JSON; map failures to exit codes (module doc)."""
    from slos_serve.client import Chunk, Client, Completion, Decision

    out: TextIO = sys.stdout
    err_out: TextIO = sys.stderr
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    mid_line = False  # whether streamed text left the cursor mid-line

    def fail(code: int, kind: str, status: str, details: str) -> int:
        if args.json:
            print(json.dumps({"error": {"type": kind, "code": status, "details": details}}),
                  file=out)
        else:
            if mid_line:
                print(file=out, flush=True)
            print(f"error: {kind} ({status}): {details}", file=err_out)
        return code

    try:
        tls = TlsArgs.from_args(args).config()
        client = Client(args.target, tls=tls, timeout=args.timeout)
    except (OSError, ValueError, TypeError) as exc:
        return fail(EXIT_INVALID, type(exc).__name__, "LOCAL", str(exc))

    completion: Completion | None = None
    try:
        with client, client.stream(prompt, **request_options(args)) as stream:
            for event in stream:
                if isinstance(event, Chunk) and not args.json and event.text:
                    out.write(event.text)
                    out.flush()
                    mid_line = not event.text.endswith("\n")
                elif isinstance(event, Completion):
                    completion = event
    except SloServeError as exc:
        return fail(_exit_code(exc), type(exc).__name__, exc.code_name, exc.details)
    except KeyboardInterrupt:  # the with-block has cancelled the RPC already
        return fail(EXIT_INTERRUPTED, "Interrupted", "CANCELLED", "interrupted by the user")

    assert completion is not None  # the stream raises if it ends without one
    if args.json:
        print(json.dumps(completion.to_dict(), indent=2), file=out)
    else:
        if mid_line:
            print(file=out, flush=True)
        print_summary(completion, err_out)
    return EXIT_REJECTED if completion.decision is Decision.REJECTED else EXIT_OK
