"""`slos-serve scale --coordinator HOST:PORT --prefill +1 --decode -1`: workers added to or
removed from a running cluster, through the coordinator's membership RPCs (AddWorker,
RemoveWorker: a removal drains first, coordinator/membership.py).

With `--ray ADDRESS` (a cluster `up --ray` started): +N starts N worker actors, which
register themselves when they answer; -N drains the N newest workers of the role, then
stops their actors. Without Ray, `scale` starts no process (it would have to outlive
`scale`, and nothing would supervise it): -N drains and removes the N last workers of the
role (their processes keep running, drained: stop them yourself), `--add HOST:PORT --role
ROLE` registers a worker you started (`slos-serve decode-worker ...`), `--remove HOST:PORT`
drains and removes that one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from slos_serve import membership
from slos_serve.config import API_KEY_ENV

ROLES = ("prefill", "decode", "mixed")


def _delta(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a signed count, e.g. +1 or -2") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--coordinator", required=True, metavar="HOST:PORT",
                        help="the coordinator's client-facing gRPC address")
    for role in ROLES:
        parser.add_argument(f"--{role}", type=_delta, default=0, metavar="±N",
                            help=f"{role} workers to add (+N) or drain and remove (-N)")
    parser.add_argument("--ray", metavar="ADDRESS", default=None,
                        help="the cluster runs on Ray (`up --ray`): auto, or a Ray address; "
                        "+N starts worker actors, -N stops them after their drain")
    parser.add_argument("--add", metavar="HOST:PORT", help="register this running worker")
    parser.add_argument("--remove", metavar="HOST:PORT", help="drain and remove this worker")
    parser.add_argument("--role", choices=ROLES, help="the role of --add's worker")
    parser.add_argument("--drain-timeout", type=float, default=60.0, metavar="S",
                        help="how long a drain waits for the worker's requests (then they "
                        "fail over to another worker)")
    parser.add_argument("--api-key", default=None,
                        help=f"the coordinator's API key (default ${API_KEY_ENV})")
    parser.add_argument("--ca", metavar="PEM", default=None,
                        help="the CA to verify a client-TLS coordinator with (TLS_DIR/ca.pem)")


def run(args: argparse.Namespace) -> int:
    deltas = {role: getattr(args, role) for role in ROLES if getattr(args, role)}
    if not (deltas or args.add or args.remove):
        print("slos-serve scale: nothing to do (--prefill/--decode/--mixed ±N, --add, "
              "--remove)", file=sys.stderr)
        return 2
    if args.add and not args.role:
        print("slos-serve scale: --add needs --role", file=sys.stderr)
        return 2
    try:
        if args.ray:
            return _scale_ray(args, deltas)
        return _scale_rpc(args, deltas)
    except Exception as exc:  # noqa: BLE001 - a one-line error for a CLI
        print(f"slos-serve scale: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def _auth(args: argparse.Namespace) -> tuple[membership.Metadata, object]:
    key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV, "")
    credentials = None
    if args.ca:
        from slos_serve.client.channel import TlsConfig

        credentials = TlsConfig.from_files(root_certificates=args.ca).credentials()
    return membership.auth(key), credentials


def _scale_rpc(args: argparse.Namespace, deltas: dict[str, int]) -> int:
    up = [role for role, n in deltas.items() if n > 0]
    if up:
        print(f"slos-serve scale: +N ({', '.join(up)}) needs --ray: without Ray, start the "
              "worker yourself (`slos-serve ROLE-worker ...`) and register it with --add "
              "HOST:PORT --role ROLE", file=sys.stderr)
        return 2
    metadata, credentials = _auth(args)
    target = args.coordinator

    async def go() -> None:
        if args.add:
            answer = await membership.add_worker(target, args.add, args.role,
                                                 credentials=credentials, metadata=metadata)
            print(f"added {args.role} {args.add}" if answer.changed
                  else f"{args.add} is a member already")
        removals = [args.remove] if args.remove else []
        workers = await membership.members(target, credentials=credentials,
                                           metadata=metadata)
        for role, n in deltas.items():
            of_role = [w.address for w in workers if w.role == role and not w.draining]
            removals += of_role[::-1][:-n]
        for address in removals:
            answer = await membership.remove_worker(
                target, address, drain_timeout_s=args.drain_timeout,
                credentials=credentials, metadata=metadata)
            print(f"removed {address} (drained; {answer.cut} requests failed over at the "
                  "timeout); its process still runs: stop it" if answer.changed
                  else f"{address} is not a member")

    asyncio.run(go())
    return 0


def _scale_ray(args: argparse.Namespace, deltas: dict[str, int]) -> int:
    import ray

    from slos_serve import ray_cluster

    ray_cluster.connect(args.ray)
    try:
        cluster = ray_cluster.attach(args.coordinator)
        for role, n in sorted(deltas.items(), key=lambda d: -d[1]):  # additions first
            if n > 0:
                for address in ray_cluster.add_workers(cluster, role, n):
                    print(f"added {role} {address} (a Ray actor)")
            else:
                for address, cut in ray_cluster.remove_workers(cluster, role, -n,
                                                               args.drain_timeout):
                    print(f"removed {role} {address} (drained; {cut} requests failed over "
                          "at the timeout); its actor is stopped")
        if args.add or args.remove:
            return _scale_rpc(args, {})
    finally:
        ray.shutdown()
    return 0
