"""Test certificates made with the ``openssl`` command line, and servers that present them.

``make_pki(directory)`` writes two CAs (``ca`` and ``otherca``) and two server
certificates signed by ``ca``: ``local`` (names 127.0.0.1, the test servers'
address) and ``elsewhere`` (names another host). Every file is ``<name>.pem``
with its key in ``<name>.key``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.server_fixtures import ServerFactory

__all__ = ["make_pki", "tls_server"]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _certificate(directory: Path, name: str, ca: str, san: str) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
             f"{name}.csr", "-subj", f"/CN={name}", cwd=directory)  # fmt: skip
    (directory / f"{name}.ext").write_text(
        f"subjectAltName={san}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    )
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
             cwd=directory)  # fmt: skip


def make_pki(directory: Path) -> Path:
    """Write the CAs and certificates into ``directory`` and return it."""
    for ca in ("ca", "otherca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key",
                 "-out", f"{ca}.pem", "-days", "2", "-subj", f"/CN=shardbill test {ca}",
                 cwd=directory)  # fmt: skip
    _certificate(directory, "local", "ca", "IP:127.0.0.1")
    _certificate(directory, "elsewhere", "ca", "DNS:db.example.invalid")
    return directory


def tls_server(private_servers: ServerFactory, pki: Path, cert: str | None) -> str:
    """A private server presenting ``cert`` (no TLS at all when None); returns ``host:port``.

    The server has an empty database ``tls``.
    """
    extra: tuple[str, ...] = ()
    if cert is not None:
        extra = (
            f"--ssl-cert={pki / cert}.pem",
            f"--ssl-key={pki / cert}.key",
            f"--ssl-ca={pki / 'ca'}.pem",
        )
    (server,) = private_servers(1, extra_args=extra)
    server.execute("CREATE DATABASE tls")
    return f"{server.host}:{server.port}"
