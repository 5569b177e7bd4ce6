"""Issuing and checking the cluster's certificates with `cryptography` (see slos_serve/tls.py
for the files and what each is for). Apart from tls.py so that a worker, which only loads
PEM files, never imports `cryptography`.

ECDSA P-256 keys, SHA-256 signatures. The node certificate is both server and client
(extended key usage serverAuth + clientAuth) for mutual TLS; the client-facing one is
serverAuth only, so it cannot pass as a node to a worker.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from slos_serve import tls

SanName = ipaddress.IPv4Address | ipaddress.IPv6Address | str
_DAY = datetime.timedelta(days=1)


def host_names(hosts: Sequence[str]) -> list[SanName]:
    """The SAN entries of `hosts`: IP addresses as such, anything else a DNS name; in order,
    without repeats or blanks."""
    out: list[SanName] = []
    for host in hosts:
        host = host.strip().strip("[]")
        if not host:
            continue
        try:
            name: SanName = ipaddress.ip_address(host)
        except ValueError:
            name = host.lower()
        if name not in out:
            out.append(name)
    return out


def node_names(names: Sequence[SanName]) -> list[SanName]:
    """The node pair's SAN entries: `names` and NODE_NAME (tls.py)."""
    return [*names, *([] if tls.NODE_NAME in names else [tls.NODE_NAME])]


def _general_names(names: Sequence[SanName]) -> list[x509.GeneralName]:
    return [x509.DNSName(n) if isinstance(n, str) else x509.IPAddress(n) for n in names]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "slos-serve"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key, now = _key(), _now()
    name = _name("slos-serve cluster CA")
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY).not_valid_after(now + tls.CA_DAYS * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def _leaf(ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, common: str,
          names: Sequence[SanName], usages: list[x509.ObjectIdentifier],
          ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key, now = _key(), _now()
    cert = (x509.CertificateBuilder().subject_name(_name(common)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY).not_valid_after(now + tls.LEAF_DAYS * _DAY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(_general_names(names)), critical=False)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def write_all(directory: Path, names: Sequence[SanName]) -> None:
    """A new CA and both leaf pairs in `directory` (keys 0600; certificates 0644)."""
    ca_key, ca = _ca()
    server, client = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH
    node_key, node = _leaf(ca_key, ca, "slos-serve node", node_names(names), [server, client])
    srv_key, srv = _leaf(ca_key, ca, "slos-serve", names, [server])
    pem = serialization.Encoding.PEM
    for name, key in ((tls.CA_KEY, ca_key), (tls.NODE_KEY, node_key), (tls.SERVER_KEY, srv_key)):
        _write(directory / name, _pem_key(key), 0o600)
    for name, cert in ((tls.CA_CERT, ca), (tls.NODE_CERT, node), (tls.SERVER_CERT, srv)):
        _write(directory / name, cert.public_bytes(pem), 0o644)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Writes `data` with `mode` from the file's creation (a key is never briefly 0644)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def problem(directory: Path, names: Sequence[SanName]) -> str:
    """Why the certificates in `directory` cannot serve `names` ("" = they can)."""
    try:
        ca = x509.load_pem_x509_certificate((directory / tls.CA_CERT).read_bytes())
        pairs = [(c, _load_key(directory / k)) for c, k in (
            (tls.NODE_CERT, tls.NODE_KEY), (tls.SERVER_CERT, tls.SERVER_KEY))]
        certs = {c: x509.load_pem_x509_certificate((directory / c).read_bytes())
                 for c, _ in pairs}
    except (OSError, ValueError, TypeError) as exc:
        return f"unreadable: {exc}"
    soon = _now() + _DAY
    if ca.not_valid_after_utc < soon:
        return f"{tls.CA_CERT} expires {ca.not_valid_after_utc:%Y-%m-%d}"
    for (name, key) in pairs:
        cert = certs[name]
        try:
            cert.verify_directly_issued_by(ca)
        except (InvalidSignature, ValueError, TypeError) as exc:
            return f"{name} is not signed by {tls.CA_CERT} ({type(exc).__name__})"
        if cert.public_key() != key.public_key():
            return f"{name} does not match its key"
        if cert.not_valid_after_utc < soon:
            return f"{name} expires {cert.not_valid_after_utc:%Y-%m-%d}"
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        have = [*sans.get_values_for_type(x509.DNSName),
                *sans.get_values_for_type(x509.IPAddress)]
        wanted = node_names(names) if name == tls.NODE_CERT else names
        missing = [str(n) for n in wanted if n not in have]
        if missing:
            return f"{name} does not name {', '.join(missing)}"
    return ""


def _load_key(path: Path):
    return serialization.load_pem_private_key(path.read_bytes(), password=None)
