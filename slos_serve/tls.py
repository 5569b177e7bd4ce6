"""TLS material of a cluster: one CA, the nodes' mutual-TLS pair, the client-facing server pair.

One module makes the certificates (`slos-serve certs`, `up`) and loads them at every edge,
so that the coordinator <-> worker channels and the client-facing service cannot disagree
on file names or on what a peer must present:

  ca.pem, ca-key.pem        the cluster's CA (the key only signs; no process reads it)
  node.pem, node-key.pem    every coordinator and worker: server and client certificate,
                            workers require it from their peers (mutual TLS)
  server.pem, server-key.pem  the client-facing gRPC service and HTTPS front; clients
                            verify it with ca.pem

Keys are written 0600 and never logged. Certificates name 127.0.0.1, localhost and the
hosts given (a client of the coordinator checks the address dialled against them); the node
pair also names NODE_NAME, which is what the cluster's own channels check.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from slos_serve.grpc_util import NODE_NAME, NODE_OPTIONS  # noqa: F401 (the pair's name)

log = logging.getLogger(__name__)

CA_CERT, CA_KEY = "ca.pem", "ca-key.pem"
NODE_CERT, NODE_KEY = "node.pem", "node-key.pem"
SERVER_CERT, SERVER_KEY = "server.pem", "server-key.pem"
FILES = (CA_CERT, CA_KEY, NODE_CERT, NODE_KEY, SERVER_CERT, SERVER_KEY)
DEFAULT_HOSTS = ("127.0.0.1", "localhost")

CA_DAYS, LEAF_DAYS = 3650, 825
PLAINTEXT_WARNING = ("internal channels are PLAINTEXT (no --tls-dir): for trusted networks "
                     "only; `slos-serve certs DIR` makes certificates")


class CertError(ValueError):
    """A TLS directory that cannot be used as it is (the message says why and what to do)."""


# ------------------------------------------------------------------ loading --


@dataclass(frozen=True, slots=True)
class NodeTls:
    """A coordinator's or worker's mutual-TLS material (PEM bytes; the key never printed)."""

    ca: bytes
    cert: bytes
    key: bytes

    @classmethod
    def load(cls, directory: str | Path) -> NodeTls:
        d = Path(directory)
        try:
            return cls((d / CA_CERT).read_bytes(), (d / NODE_CERT).read_bytes(),
                       (d / NODE_KEY).read_bytes())
        except OSError as exc:
            raise CertError(f"--tls-dir {d}: {exc.strerror}: {exc.filename} (make the "
                            f"certificates with `slos-serve certs {d}`)") from exc

    def server_credentials(self) -> grpc.ServerCredentials:
        """A worker's listening side: a peer without a certificate from the CA is refused."""
        return grpc.ssl_server_credentials([(self.key, self.cert)], root_certificates=self.ca,
                                           require_client_auth=True)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """The dialling side: verifies the peer against the CA, presents the node pair."""
        return grpc.ssl_channel_credentials(self.ca, self.key, self.cert)

    def __repr__(self) -> str:
        return "NodeTls(***)"


def node_tls(tls_dir: str | None, who: str) -> NodeTls | None:
    """The node material of `--tls-dir`; None (plaintext, with a warning line) without it."""
    if not tls_dir:
        log.warning("%s: %s", who, PLAINTEXT_WARNING)
        return None
    node = NodeTls.load(tls_dir)
    log.info("%s: mutual TLS on internal channels (CA %s)", who, Path(tls_dir) / CA_CERT)
    return node


@dataclass(frozen=True, slots=True)
class ServerTls:
    """The client-facing certificate and key (gRPC server TLS and the HTTPS front)."""

    cert_path: str
    key_path: str

    def grpc_credentials(self) -> grpc.ServerCredentials:
        pair = (Path(self.key_path).read_bytes(), Path(self.cert_path).read_bytes())
        return grpc.ssl_server_credentials([pair])

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_path, self.key_path)
        return ctx


def server_tls(cert: str | None, key: str | None) -> ServerTls | None:
    """`--client-tls-cert/--client-tls-key`: both or neither (CertError naming the flag)."""
    if not cert and not key:
        return None
    if not (cert and key):
        missing = "--client-tls-key" if cert else "--client-tls-cert"
        raise CertError(f"{missing} is required with the other --client-tls-* flag")
    for flag, path in (("--client-tls-cert", cert), ("--client-tls-key", key)):
        if not Path(path).is_file():
            raise CertError(f"{flag} {path}: no such file")
    return ServerTls(cert, key)


# ----------------------------------------------------------------- making --


def make_certs(directory: str | Path, hosts: Sequence[str] = (), force: bool = False) -> bool:
    """Makes the CA and the certificates in `directory`, or reuses valid ones there.

    Returns True when it wrote them. Valid: every file present, signed by the CA, not
    expiring within a day, naming every host. Anything else there is an error (never
    overwritten) unless `force`.
    """
    from slos_serve import tls_make

    d = Path(directory)
    names = tls_make.host_names([*DEFAULT_HOSTS, *hosts])
    present = [f for f in FILES if (d / f).exists()]
    if present and not force:
        problem = tls_make.problem(d, names) if len(present) == len(FILES) else (
            f"incomplete: {', '.join(f for f in FILES if f not in present)} missing")
        if not problem:
            return False
        raise CertError(f"{d}: existing certificates are not usable ({problem}); "
                        "remove them or pass --force to replace them")
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    tls_make.write_all(d, names)
    return True
