"""`slos-serve generate`: send one request to a coordinator through the SDK and stream it.

Generated text goes to stdout as it arrives; the verdict (decision, TTFT, TPOT, SLO met)
goes to stderr afterwards, so `slos-serve generate ... > out.txt` captures only the text.
With `--json`, stdout gets one JSON object instead: the Completion, or on failure
`{"error": {...}}`.

Exit codes: 0 success; 2 invalid input (argparse errors and INVALID_ARGUMENT); 3 rejected
(RESOURCE_EXHAUSTED, or a Completion whose decision is "rejected"); 130 interrupted;
1 any other error. Scripts can branch on these without parsing text.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:  # the SDK (grpc) loads in run(), keeping `slos-serve --help` fast
    from slos_serve.client import Completion, TlsConfig

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_INVALID = 2
EXIT_REJECTED = 3
EXIT_INTERRUPTED = 130


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register `generate`'s options (called by the `slos-serve` dispatcher)."""
    parser.add_argument("--target", default="localhost:50051", metavar="HOST:PORT",
                        help="coordinator address (default: %(default)s)")
    parser.add_argument("--prompt", required=True, metavar="TEXT",
                        help="prompt text; '-' reads it from stdin")
    parser.add_argument("--max-tokens", type=int, default=64, metavar="N",
                        help="tokens to generate (default: %(default)s)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="sampling temperature; 0 = greedy (server default 1.0)")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed")
    parser.add_argument("--stop", action="extend", nargs="+", default=None, metavar="S",
                        help="stop string(s); repeatable")
    parser.add_argument("--ignore-eos", action="store_true",
                        help="keep generating past the end-of-sequence token")
    slo = parser.add_argument_group(
        "SLO", "a named tier, or explicit --ttft-ms/--tpot-ms (both: they must agree)")
    slo.add_argument("--tier", default=None, metavar="NAME", help="SLO tier name")
    slo.add_argument("--ttft-ms", type=float, default=None, metavar="X",
                     help="time-to-first-token objective, ms")
    slo.add_argument("--tpot-ms", type=float, default=None, metavar="Y",
                     help="time-per-output-token objective, ms")
    slo.add_argument("--on-reject", choices=["default", "best_effort", "reject"],
                     default=None, help="if the SLO cannot be met: serve best-effort or refuse")
    parser.add_argument("--request-id", default=None, help="request id (default: server's)")
    parser.add_argument("--timeout", type=float, default=300.0, metavar="S",
                        help="deadline in seconds (default: %(default)s)")
    parser.add_argument("--json", action="store_true",
                        help="print the Completion as JSON instead of streaming text")
    tls = parser.add_argument_group("TLS (plaintext unless one of these is given)")
    tls.add_argument("--tls", action="store_true", help="use TLS with the system's roots")
    tls.add_argument("--root-certs", default=None, metavar="PEM", help="CA certificates file")
    tls.add_argument("--client-cert", default=None, metavar="PEM",
                     help="client certificate chain (mutual TLS)")
    tls.add_argument("--client-key", default=None, metavar="PEM",
                     help="client private key (mutual TLS)")
    tls.add_argument("--server-name", default=None,
                     help="name to verify the server certificate against")


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


def _tls_from_args(args: argparse.Namespace) -> TlsConfig | None:
    from slos_serve.client import TlsConfig

    if args.root_certs or args.client_cert or args.client_key or args.server_name:
        return TlsConfig.from_files(
            root_certificates=args.root_certs,
            certificate_chain=args.client_cert,
            private_key=args.client_key,
            server_name=args.server_name,
        )
    return TlsConfig() if args.tls else None


def request_options(args: argparse.Namespace) -> dict[str, Any]:
    """The SDK's request options among the parsed arguments (the flags' dests are named
    after `GenerateOptions`' fields, so the list is not written out here again)."""
    from slos_serve.client import GenerateOptions

    names = [f.name for f in dataclasses.fields(GenerateOptions)]
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


def _exit_code(err: BaseException) -> int:
    from slos_serve.errors import InvalidRequest, Rejected

    if isinstance(err, InvalidRequest):
        return EXIT_INVALID
    if isinstance(err, Rejected):
        return EXIT_REJECTED
    return EXIT_ERROR


def run(args: argparse.Namespace) -> int:
    """Send the request; stream or print JSON; map failures to exit codes (module doc)."""
    from slos_serve.client import Chunk, Client, Completion, Decision
    from slos_serve.errors import SloServeError

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
        tls = _tls_from_args(args)
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
