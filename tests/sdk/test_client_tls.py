"""TLS: credentials and channel options built from `TlsConfig`, and a real handshake."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest

from sdk.scripted_server import start_server
from slos_serve.client import ChannelOptions, Client, TlsConfig
from slos_serve.errors import Unavailable

pytestmark = pytest.mark.timeout(30)


# ------------------------------------------------------------------------- TLS --


def test_tls_options_build_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_bytes(b"-----BEGIN X-----\n" + name.encode() + b"\n")
    tls = TlsConfig.from_files(tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem",
                               server_name="coord.internal")
    assert tls.root_certificates and tls.root_certificates.endswith(b"ca.pem\n")
    assert isinstance(tls.credentials(), grpc.ChannelCredentials)
    assert isinstance(TlsConfig().credentials(), grpc.ChannelCredentials)
    with pytest.raises(ValueError, match="both"):
        TlsConfig(certificate_chain=b"c")

    opts = dict(ChannelOptions(keepalive_time_ms=30_000, keepalive_timeout_ms=5_000,
                               extra=[("grpc.primary_user_agent", "t")]).to_grpc(tls))
    assert opts["grpc.ssl_target_name_override"] == "coord.internal"
    assert opts["grpc.keepalive_time_ms"] == 30_000 and opts["grpc.keepalive_timeout_ms"] == 5_000
    assert opts["grpc.max_receive_message_length"] == 64 * 1024 * 1024
    assert opts["grpc.primary_user_agent"] == "t"
    assert "grpc.keepalive_time_ms" not in dict(ChannelOptions().to_grpc())

    made: list[tuple[str, Any]] = []
    real_secure = grpc.secure_channel

    def spy(target: str, creds: grpc.ChannelCredentials, options: Any = None) -> Any:
        made.append((target, creds))
        return real_secure(target, creds, options=options)

    monkeypatch.setattr(grpc, "secure_channel", spy)
    Client("example.invalid:443", tls=tls).close()
    Client("example.invalid:443", tls=True).close()
    Client("example.invalid:443").close()  # plaintext: no secure channel
    assert [t for t, _ in made] == ["example.invalid:443"] * 2


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI for a cert")
def test_tls_round_trip(tmp_path: Path) -> None:
    """A real TLS handshake against a self-signed certificate, checked by name override."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=slos-test.local",
         "-addext", "subjectAltName=DNS:slos-test.local",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=20,
    )
    ts = start_server(grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())]))
    try:
        tls = TlsConfig.from_files(root_certificates=cert, server_name="slos-test.local")
        with Client(ts.target, tls=tls, timeout=10) as c:
            assert c.generate("hi", max_tokens=3).text == "Hello!"
        with Client(ts.target, timeout=10) as c:  # plaintext against a TLS port fails
            with pytest.raises(Unavailable):
                c.generate("hi", max_tokens=1)
    finally:
        ts.server.stop(0)
