"""A private CA and a server certificate for the broker's TLS listener, made with `cryptography`.

Devices are provisioned with the CA certificate and verify the broker against it, so the CA
needs no public trust. P-256 keys: fast on small devices and supported by every OpenSSL that
mosquitto and Python link against.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from model_registry.errors import InvalidInputError

CA_VALIDITY = dt.timedelta(days=3650)  # replacing the CA means re-provisioning every device
SERVER_VALIDITY = dt.timedelta(days=825)  # the longest leaf lifetime common TLS clients accept
SERVER_COMMON_NAME = "edge-model-runtime MQTT broker"  # clients check the SAN, not the CN
_BACKDATE = dt.timedelta(minutes=5)  # absorbs clock skew between the registry host and devices


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    def cert_pem(self) -> bytes:
        """The certificate as PEM."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM (mosquitto cannot prompt for a passphrase)."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def load_ca(cert_pem: bytes, key_pem: bytes) -> KeyPair:
    """Load an existing CA written by `KeyPair.cert_pem`/`key_pem`."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except ValueError as e:
        raise InvalidInputError(f"the existing CA cannot be loaded: {e}") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InvalidInputError("the existing CA key is not an EC key")
    return KeyPair(key, cert)


def make_ca(common_name: str, *, now: dt.datetime | None = None) -> KeyPair:
    """Create a self-signed CA that may sign leaf certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name)
    builder = (
        _builder(name, name, key.public_key(), CA_VALIDITY, now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return KeyPair(key, builder.sign(key, hashes.SHA256()))


def issue_server_cert(
    ca: KeyPair, hosts: Sequence[str], *, now: dt.datetime | None = None
) -> KeyPair:
    """Issue a TLS server certificate for `hosts` (DNS names or IP addresses, in the SAN)."""
    if not hosts:
        raise InvalidInputError("a TLS server certificate needs at least one host name or address")
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName([_general_name(host) for host in hosts])
    builder = (
        _builder(_name(SERVER_COMMON_NAME), ca.cert.subject, key.public_key(), SERVER_VALIDITY, now)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(san, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        # Python >= 3.13 verifies with VERIFY_X509_STRICT, which requires an AKI on leaves.
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    return KeyPair(key, builder.sign(ca.key, hashes.SHA256()))


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    validity: dt.timedelta,
    now: dt.datetime | None,
) -> x509.CertificateBuilder:
    start = (now or dt.datetime.now(dt.UTC)) - _BACKDATE
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + validity)
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    # A CA signs certificates; an ECDHE server signs the handshake.
    return x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _general_name(host: str) -> x509.GeneralName:
    """An IPAddress SAN entry if `host` parses as an IP address, else a DNSName."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        if not host or any(char.isspace() or char in "/:" for char in host):
            raise InvalidInputError(f"{host!r} is neither a host name nor an IP address") from None
        return x509.DNSName(host)
