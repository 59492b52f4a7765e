"""Throw-away X.509 PKI for tests: a CA plus server and client certificates.

The CA and the server certificates are the product's (`model_registry.mqtt.tls`, what
`broker-config` writes); only client certificates, which the product never issues, are made here.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from model_registry.mqtt import tls

# Short validity keeps stray test keys useless; the back-dating absorbs clock skew
# between the test process and the broker's TLS library.
_VALIDITY = dt.timedelta(days=2)
_BACKDATE = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class CertificateAuthority:
    """A self-signed CA that can issue leaf certificates."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    def write(self, directory: Path, stem: str = "ca") -> Path:
        """Write the CA certificate as `<stem>.crt` and return its path."""
        return write_cert(self.cert, directory / f"{stem}.crt")


@dataclass(frozen=True)
class IssuedCertificate:
    """A leaf certificate with its private key and issuing CA."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    ca: CertificateAuthority

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """Write `<stem>.crt` and `<stem>.key`; return (cert_path, key_path)."""
        cert_path = write_cert(self.cert, directory / f"{stem}.crt")
        key_path = write_key(self.key, directory / f"{stem}.key")
        return cert_path, key_path


def make_ca(common_name: str = "edge-model-runtime test CA") -> CertificateAuthority:
    """Create a self-signed CA allowed to sign leaf certificates only, as broker-config does."""
    pair = tls.make_ca(common_name)
    return CertificateAuthority(key=pair.key, cert=pair.cert)


def issue_server_cert(
    ca: CertificateAuthority, hosts: Sequence[str] = ("localhost", "127.0.0.1")
) -> IssuedCertificate:
    """Issue the product's TLS server certificate whose SAN lists `hosts` (names or addresses)."""
    pair = tls.issue_server_cert(tls.KeyPair(ca.key, ca.cert), hosts)
    return IssuedCertificate(key=pair.key, cert=pair.cert, ca=ca)


def issue_client_cert(ca: CertificateAuthority, common_name: str) -> IssuedCertificate:
    """Issue a TLS client certificate with `common_name` as its subject CN."""
    return _issue_leaf(ca, common_name, ExtendedKeyUsageOID.CLIENT_AUTH)


def write_cert(cert: x509.Certificate, path: Path) -> Path:
    """Write `cert` as PEM to `path` and return the path."""
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    """Write `key` as unencrypted PKCS#8 PEM, readable only by the owner, and return the path."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Create with 0600 from the start so the key is never briefly world-readable.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    return path


def _issue_leaf(
    ca: CertificateAuthority,
    common_name: str,
    usage: x509.ObjectIdentifier,
) -> IssuedCertificate:
    """Issue an end-entity certificate for one extended key usage."""
    key = _new_key()
    builder = (
        _base_builder(
            subject=_name(common_name), issuer=ca.cert.subject, public_key=key.public_key()
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_agreement=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        # Python >= 3.13 verifies with VERIFY_X509_STRICT, which rejects leaves without an AKI.
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    return IssuedCertificate(key=key, cert=builder.sign(ca.key, hashes.SHA256()), ca=ca)


def _base_builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    """Return a builder with names, key, serial and validity window filled in."""
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
    )


def _new_key() -> ec.EllipticCurvePrivateKey:
    """Generate a P-256 key (much faster than RSA and supported by mosquitto/OpenSSL)."""
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    """Build a subject/issuer name holding only a common name."""
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
