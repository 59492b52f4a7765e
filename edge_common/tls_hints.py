"""Why a TLS connection to the broker failed, in words that say what to change.

A certificate that does not name the host connected to fails with "Hostname mismatch", which
sends people checking the CA file. The names the certificate does list come from a second
handshake that verifies the chain but not the name; it only runs after such a failure.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

PROBE_TIMEOUT_S = 5.0
PLAIN_TO_TLS_HINT = " (is it a TLS listener? then use mqtts://)"
CA_SETTING = "mqtt.ca_file"  # the setting that names the CA, in device.toml and registry.toml
# OpenSSL's verify codes for a certificate that is valid but not for this host or IP address.
_NAME_MISMATCH = frozenset({62, 64})  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
MAX_NAMES = 8


def is_name_mismatch(error: BaseException) -> bool:
    """Whether `error` is a certificate that is trusted but made out to other names."""
    return isinstance(error, ssl.SSLCertVerificationError) and error.verify_code in _NAME_MISMATCH


def certificate_names(host: str, port: int, context: ssl.SSLContext) -> list[str] | None:
    """The DNS names and IP addresses the server's (trusted) certificate lists, or None.

    Blocking: call it from a worker thread. `context` is changed (no hostname check): pass a
    fresh one.
    """
    context.check_hostname = False
    try:
        with (
            socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            certificate: dict[str, Any] = tls.getpeercert() or {}
    except (OSError, ValueError):
        return None
    if not certificate:
        return None
    alt_names = certificate.get("subjectAltName", ())
    names = [str(value) for kind, value in alt_names if kind in {"DNS", "IP Address"}]
    if not names:  # no subjectAltName: old certificates name the host in the common name only
        names = [
            str(value)
            for rdn in certificate.get("subject", ())
            for key, value in rdn
            if key == "commonName"
        ]
    return names[:MAX_NAMES] or None


def mismatch_text(host: str, names: list[str] | None) -> str:
    """`the broker's certificate is for X, not Y: connect with a name it lists, or ...`."""
    listed = ", ".join(names) if names else "other names"
    return (
        f"the broker's certificate is for {listed}, not {host}: connect with a name the "
        f"certificate lists, or regenerate it with `model-registry broker-config --tls "
        f"--tls-host {host}`"
    )


def unreachable_text(where: str, host: str, error: BaseException, names: list[str] | None) -> str:
    """Why connecting to the broker at `where` failed before MQTT began (TCP or TLS)."""
    if is_name_mismatch(error):
        return f"TLS to the broker at {where}: {mismatch_text(host, names)}"
    if isinstance(error, ssl.SSLCertVerificationError):
        return (
            f"the TLS certificate of the broker at {where} is not trusted: "
            f"{error.verify_message} (is {CA_SETTING} the CA that signed it?)"
        )
    if isinstance(error, ssl.SSLError):
        return f"the TLS handshake with the broker at {where} failed: {error}"
    detail = error.strerror if isinstance(error, OSError) and error.strerror else error
    return f"cannot reach the broker at {where}: {detail}"
