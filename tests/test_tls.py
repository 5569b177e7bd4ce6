"""Security: `slos-serve certs`, mutual TLS between coordinator and workers (a peer without a
certificate from the cluster's CA is refused), server TLS + API key on the client-facing
gRPC service and HTTPS front, and no secret in any process log. Clusters run the
SIMULATED engine.
"""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

import grpc
import httpx
import openai
import pytest

from proto import slos_serve_pb2 as pb
from proto import slos_serve_pb2_grpc as pb_grpc
from slos_serve import tls
from slos_serve.cli import main as cli_main
from slos_serve.client import Client, TlsConfig
from slos_serve.errors import SloServeError, Unavailable
from slos_serve.up import ClusterSpec, LocalCluster

pytestmark = pytest.mark.timeout(180)

KEY = "tls-test-key-93be1f"
KEYS = (tls.CA_KEY, tls.NODE_KEY, tls.SERVER_KEY)


# ------------------------------------------------------------------ certs --


def test_internal_channels_check_the_node_name_not_the_address(tmp_path: Path) -> None:
    """A worker reached at an address its certificate does not name (a pod's IP, a Ray
    node that joined later) is accepted on the node name every node pair carries; a
    certificate that is not the node pair is still refused."""
    import asyncio

    from grpc_health.v1.health_pb2 import HealthCheckResponse

    from slos_serve import tls_make
    from slos_serve.grpc_util import check_health, create_server

    d = tmp_path / "no-hosts"
    d.mkdir()
    tls_make.write_all(d, [])  # the node pair names NODE_NAME only, not 127.0.0.1
    node = tls.NodeTls.load(d)

    async def run() -> tuple[bool, bool]:
        server, health = create_server([])
        port = server.add_secure_port("127.0.0.1:0", node.server_credentials())
        await server.start()
        await health.set("", HealthCheckResponse.SERVING)
        try:
            target, creds = f"127.0.0.1:{port}", node.channel_credentials()
            by_address = await check_health(target, credentials=creds)
            by_name = await check_health(target, credentials=creds, options=tls.NODE_OPTIONS)
            return by_address, by_name
        finally:
            await server.stop(None)

    assert asyncio.run(run()) == (False, True)
    assert tls_make.problem(d, []) == ""  # the reuse check asks for the node name too


def test_certs_command_writes_private_keys_0600_and_reuses_valid_ones(tmp_path: Path,
                                                                      capsys) -> None:
    d = tmp_path / "certs"
    assert cli_main(["certs", str(d), "--host", "node1.internal", "--host", "10.1.2.3"]) == 0
    assert sorted(p.name for p in d.iterdir()) == sorted(tls.FILES)
    for name in KEYS:
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600, name
    before = {f: (d / f).read_bytes() for f in tls.FILES}
    out = capsys.readouterr().out
    assert "PRIVATE KEY" not in out and "wrote" in out

    assert tls.make_certs(d, ["node1.internal"]) is False  # valid: kept as they are
    assert {f: (d / f).read_bytes() for f in tls.FILES} == before
    with pytest.raises(tls.CertError, match="does not name other.internal.*--force"):
        tls.make_certs(d, ["other.internal"])  # never overwritten silently
    assert cli_main(["certs", str(d), "--host", "other.internal"]) == 1
    assert cli_main(["certs", str(d), "--host", "other.internal", "--force"]) == 0
    assert (d / tls.CA_KEY).read_bytes() != before[tls.CA_KEY]
    assert tls.make_certs(d, ["other.internal"]) is False

    (d / tls.NODE_KEY).unlink()
    with pytest.raises(tls.CertError, match="node-key.pem missing"):
        tls.make_certs(d)
    assert cli_main(["certs", str(d), "--force"]) == 0
    (d / tls.NODE_CERT).write_bytes(b"junk")
    with pytest.raises(tls.CertError, match="unreadable"):
        tls.make_certs(d)


def test_certs_of_another_ca_are_not_reused(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    tls.make_certs(a)
    tls.make_certs(b)
    (a / tls.NODE_CERT).write_bytes((b / tls.NODE_CERT).read_bytes())
    (a / tls.NODE_KEY).write_bytes((b / tls.NODE_KEY).read_bytes())
    with pytest.raises(tls.CertError, match="node.pem is not signed by ca.pem"):
        tls.make_certs(a)


def test_up_flags_reach_every_process(tmp_path: Path, model_dir: str) -> None:
    """Mutual TLS by default (the same --tls-dir for workers, vLLM or sim, and the
    coordinator); --insecure: none; --client-tls: the coordinator's server pair."""
    spec = ClusterSpec(model=model_dir, engine="vllm", log_dir=str(tmp_path / "logs"))
    c = LocalCluster(spec)
    c._make_certs()
    worker = c._worker_argv("prefill", 1, None, 2, None)
    coord = c._coordinator_argv(3, 4, 5, None, {"prefill": ["a:1"], "decode": ["b:2"]})
    assert worker[worker.index("--tls-dir") + 1] == str(tmp_path / "logs" / "tls")
    assert coord[coord.index("--tls-dir") + 1] == str(tmp_path / "logs" / "tls")
    assert "--client-tls-cert" not in coord and c.client_credentials() is None

    c = LocalCluster(ClusterSpec(model=model_dir, engine="sim", insecure=True))
    c._make_certs()
    assert c.tls_dir is None and c.internal_credentials() is None
    assert "--tls-dir" not in c._worker_argv("decode", 1, None, 2, None)

    c = LocalCluster(ClusterSpec(model=model_dir, engine="sim", client_tls=True,
                                 tls_dir=str(tmp_path / "given")))
    c._make_certs()
    coord = c._coordinator_argv(3, 4, 5, None, {"mixed": ["a:1"]})
    assert coord[coord.index("--client-tls-key") + 1] == str(tmp_path / "given" / tls.SERVER_KEY)
    assert (tmp_path / "given" / tls.CA_CERT).exists()


# ---------------------------------------------------------------- cluster --


@pytest.fixture(scope="module")
def cluster(model_dir: str, tmp_path_factory):
    logs = tmp_path_factory.mktemp("tls-logs")
    c = LocalCluster(ClusterSpec(model=model_dir, engine="sim", prefill=1, decode=1,
                                 api_key=KEY, client_tls=True, log_dir=str(logs)))
    c.start(timeout_s=120, progress=False)
    yield c
    c.stop()


def _worker(cluster: LocalCluster) -> str:
    return next(p.address for p in cluster.procs if p.name == "decode-0")


def _get_info(target: str, credentials: grpc.ChannelCredentials | None) -> pb.WorkerInfo:
    channel = (grpc.secure_channel(target, credentials) if credentials
               else grpc.insecure_channel(target))
    with channel:
        return pb_grpc.WorkerStub(channel).GetInfo(pb.WorkerInfoRequest(), timeout=5)


def test_a_worker_refuses_peers_without_a_certificate_of_the_ca(cluster, tmp_path) -> None:
    d = cluster.tls_dir
    ca = (d / tls.CA_CERT).read_bytes()
    other = tmp_path / "other-ca"
    tls.make_certs(other)
    refused = {
        "plaintext": None,
        "TLS, no client certificate": grpc.ssl_channel_credentials(ca),
        "a client certificate of another CA": grpc.ssl_channel_credentials(
            ca, (other / tls.NODE_KEY).read_bytes(), (other / tls.NODE_CERT).read_bytes()),
        "the client-facing certificate (serverAuth only)": grpc.ssl_channel_credentials(
            ca, (d / tls.SERVER_KEY).read_bytes(), (d / tls.SERVER_CERT).read_bytes()),
    }
    for what, creds in refused.items():
        with pytest.raises(grpc.RpcError) as exc:
            _get_info(_worker(cluster), creds)
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE, what
    assert _get_info(_worker(cluster), cluster.internal_credentials()).role == "decode"
    with Client(cluster.target, tls=cluster.client_tls(), api_key=KEY, timeout=10) as c:
        info = c.cluster_info()  # the coordinator's own view: it reaches both workers
    assert len(info.workers) == 2 and all(w.healthy for w in info.workers)


def test_client_service_tls_and_api_key(cluster) -> None:
    with Client(cluster.target, tls=cluster.client_tls(), api_key=KEY, timeout=10) as c:
        assert c.generate("hello", max_tokens=3).completion_tokens == 3
    with Client(cluster.target, tls=cluster.client_tls(), api_key="", timeout=10) as c:
        with pytest.raises(SloServeError) as exc:
            c.generate("hello", max_tokens=2)
    assert exc.value.code == grpc.StatusCode.UNAUTHENTICATED
    with Client(cluster.target, api_key=KEY, timeout=10) as c:  # plaintext to a TLS port
        with pytest.raises(Unavailable):
            c.generate("hello", max_tokens=1)
    wrong_ca = TlsConfig(root_certificates=(cluster.tls_dir / tls.NODE_CERT).read_bytes())
    with Client(cluster.target, tls=wrong_ca, api_key=KEY, timeout=10) as c:
        with pytest.raises(Unavailable):
            c.generate("hello", max_tokens=1)


def test_https_front_with_the_ca_and_the_key(cluster) -> None:
    assert cluster.http_url.startswith("https://")
    ca = str(cluster.tls_dir / tls.CA_CERT)
    auth = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(verify=ssl.create_default_context(cafile=ca), timeout=30) as http:
        r = http.post(cluster.http_url + "/v1/completions", headers=auth,
                      json={"model": cluster.spec.model, "prompt": "hi", "max_tokens": 2})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 2
        r = http.get(cluster.http_url + "/v1/models")
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        sdk = openai.OpenAI(base_url=cluster.http_url + "/v1", api_key=KEY, max_retries=0,
                            http_client=http)
        assert [m.id for m in sdk.models.list()] == [cluster.spec.model]
    with pytest.raises(httpx.ConnectError):  # the system's roots do not know the cluster CA
        httpx.get(cluster.http_url + "/health", timeout=10)
    with pytest.raises(httpx.HTTPError):  # plain HTTP to the HTTPS port
        httpx.get(cluster.http_url.replace("https", "http", 1) + "/health", timeout=10)


def test_the_generate_command_verifies_with_the_ca(cluster, capsys, monkeypatch) -> None:
    monkeypatch.setenv("SLOS_SERVE_API_KEY", KEY)
    rc = cli_main(["generate", "--target", cluster.target, "--root-certs",
                   str(cluster.tls_dir / tls.CA_CERT), "--max-tokens", "2", "--prompt", "hi"])
    assert rc == 0, capsys.readouterr().err


def test_no_secret_in_any_log(cluster) -> None:
    """After the tests above (module order): keys, their PEM bodies and the API key
    appear in no process log."""
    logs = "".join(p.read_text(errors="replace") for p in Path(cluster.log_dir).glob("*.log"))
    assert "ready" in logs
    assert KEY not in logs and "PRIVATE KEY" not in logs
    for name in KEYS:
        body = (cluster.tls_dir / name).read_text().splitlines()[1:-1]
        assert body and not any(line in logs for line in body), name


def test_client_tls_flags_come_in_pairs(tmp_path: Path) -> None:
    tls.make_certs(tmp_path)
    cert, key = str(tmp_path / tls.SERVER_CERT), str(tmp_path / tls.SERVER_KEY)
    assert tls.server_tls(None, None) is None
    with pytest.raises(tls.CertError, match="--client-tls-key is required"):
        tls.server_tls(cert, None)
    with pytest.raises(tls.CertError, match="--client-tls-cert .*no such file"):
        tls.server_tls(str(tmp_path / "nope.pem"), key)
    assert tls.server_tls(cert, key).ssl_context() is not None
    with pytest.raises(tls.CertError, match="--tls-dir .*slos-serve certs"):
        tls.NodeTls.load(tmp_path / "missing")
