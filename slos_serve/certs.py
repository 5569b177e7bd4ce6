"""`slos-serve certs DIR`: the cluster's CA and certificates (files: slos_serve/tls.py).

Run once per cluster; the coordinator and workers take `--tls-dir DIR` (mutual TLS between
them), the coordinator `--client-tls-cert DIR/server.pem --client-tls-key DIR/server-key.pem`
(TLS for clients, who verify with DIR/ca.pem). A directory that already holds valid
certificates for the hosts named is left as it is.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR", help="directory for the CA and certificates")
    parser.add_argument("--host", dest="hosts", action="append", default=[], metavar="HOST",
                        help="a host name or IP address the certificates must name, besides "
                        "127.0.0.1 and localhost (repeatable)")
    parser.add_argument("--force", action="store_true",
                        help="replace the certificates in DIR, even valid ones")


def run(args: argparse.Namespace) -> int:
    from slos_serve.tls import FILES, CertError, make_certs

    try:
        made = make_certs(args.dir, args.hosts or (), force=args.force)
    except CertError as exc:
        print(f"slos-serve certs: {exc}", file=sys.stderr)
        return 1
    print(f"{'wrote' if made else 'kept (valid)'} {', '.join(FILES)} in {args.dir}")
    return 0
