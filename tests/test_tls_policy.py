"""One TLS policy on both MySQL drivers (docs/howto/connection-providers.md, "TLS").

* A CA given means the server's identity is verified (certificate and host
  name) unless the URL says ``ssl_mode=VERIFY_CA`` explicitly.
* Options that contradict each other (a CA with a mode that never verifies)
  are refused when the URL is parsed, with the fix.
* ``PREFERRED`` encrypts when the server offers TLS, on both drivers.
* A missing TLS file is an InvalidURLError naming the option and the path.
* Against private servers with generated certificates (right name, wrong
  name, wrong CA, no TLS), every mode does what the table says, with both
  drivers.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

import pytest

from shardbill.errors import DatabaseError, FatalDatabaseError, InvalidURLError
from shardbill.providers import ConnectionURL, PooledProvider, SSLMode
from shardbill.providers import mysqldb as mysqldb_provider
from shardbill.providers import pymysql as pymysql_provider
from tests.faults.cluster import DRIVERS
from tests.support.pki import make_pki, tls_server
from tests.support.server_fixtures import ServerFactory

BASE = "mysql+pymysql://app@db.internal/billing"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test CAs and server certificates (tests/support/pki.py)."""
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_a_ca_alone_means_verified_identity(pki: Path) -> None:
    """``ssl_ca`` without ``ssl_mode`` verifies the certificate and the host name."""
    url = ConnectionURL.parse(f"{BASE}?ssl_ca={pki / 'ca.pem'}")
    assert url.effective_ssl_mode is SSLMode.VERIFY_IDENTITY
    context = pymysql_provider.connect_kwargs(url)["ssl"]
    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname is True
    assert context.verify_mode is ssl.CERT_REQUIRED
    mysqldb_url = ConnectionURL.parse("mysql+mysqldb://app@db.internal/b?ssl_ca=/etc/ca.pem")
    assert mysqldb_provider.connect_kwargs(mysqldb_url)["ssl_mode"] == "VERIFY_IDENTITY"


def test_verify_ca_stays_available_when_asked_for_explicitly(pki: Path) -> None:
    """``ssl_mode=VERIFY_CA`` is the explicit way to skip the host-name check (on PyMySQL)."""
    url = ConnectionURL.parse(f"{BASE}?ssl_mode=VERIFY_CA&ssl_ca={pki / 'ca.pem'}")
    assert url.effective_ssl_mode is SSLMode.VERIFY_CA
    context = pymysql_provider.connect_kwargs(url)["ssl"]
    assert context.check_hostname is False
    assert context.verify_mode is ssl.CERT_REQUIRED


@pytest.mark.parametrize("mode", ["DISABLED", "PREFERRED", "REQUIRED", "required"])
def test_a_ca_with_a_mode_that_never_verifies_is_refused(mode: str) -> None:
    """``ssl_ca`` with DISABLED, PREFERRED or REQUIRED is refused at parse time, with the fix."""
    with pytest.raises(InvalidURLError) as caught:
        ConnectionURL.parse(f"{BASE}?ssl_mode={mode}&ssl_ca=/etc/ca.pem")
    message = str(caught.value)
    assert f"ssl_mode={mode.upper()}" in message
    assert "ssl_ca" in message
    assert "VERIFY_IDENTITY" in message


@pytest.mark.parametrize("mode", ["DISABLED", "PREFERRED"])
def test_a_client_certificate_with_a_mode_without_tls_is_refused(mode: str) -> None:
    """A client certificate needs TLS: with DISABLED or PREFERRED it is refused at parse time."""
    with pytest.raises(InvalidURLError, match="ssl_cert"):
        ConnectionURL.parse(f"{BASE}?ssl_mode={mode}&ssl_cert=/c.pem&ssl_key=/k.pem")


def test_a_client_certificate_with_required_is_accepted() -> None:
    """REQUIRED with a client certificate (and no CA) is a consistent choice and parses."""
    url = ConnectionURL.parse(f"{BASE}?ssl_mode=REQUIRED&ssl_cert=/c.pem&ssl_key=/k.pem")
    assert url.effective_ssl_mode is SSLMode.REQUIRED


def test_the_constructor_refuses_the_same_contradictions() -> None:
    """Building a ConnectionURL in code applies the same TLS checks as parsing one."""
    with pytest.raises(InvalidURLError, match="ssl_ca"):
        ConnectionURL(driver="pymysql", host="db", ssl_mode=SSLMode.REQUIRED, ssl_ca="/ca.pem")


def test_preferred_asks_mysqlclient_for_tls() -> None:
    """PREFERRED gives mysqlclient TLS options, so it encrypts when the server offers TLS."""
    url = ConnectionURL.parse("mysql+mysqldb://app@db/billing")
    kwargs = mysqldb_provider.connect_kwargs(url)
    assert kwargs["ssl_mode"] == "PREFERRED"
    assert kwargs.get("ssl"), kwargs.keys()


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, Path]:
    """Three readable PEM-named files (content does not matter before the file check)."""
    files = {name: tmp_path / f"{name}.pem" for name in ("ssl_ca", "ssl_cert", "ssl_key")}
    for path in files.values():
        path.write_text("not checked\n")
    return files


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("option", ["ssl_ca", "ssl_cert", "ssl_key"])
def test_a_missing_tls_file_is_named(driver: str, option: str, tls_files: dict[str, Path]) -> None:
    """A TLS file that does not exist: InvalidURLError naming the option and the path."""
    missing = tls_files[option].with_name("gone.pem")
    files = {**tls_files, option: missing}
    query = "&".join(f"{name}={path}" for name, path in files.items())
    # Port 9 (discard) on localhost: the file check must come before any connect.
    provider = PooledProvider.from_urls({"s": f"mysql+{driver}://app@127.0.0.1:9/b?{query}"})
    try:
        with pytest.raises(InvalidURLError) as caught, provider.connection("s"):
            pass
    finally:
        provider.close()
    assert option in str(caught.value)
    assert str(missing) in str(caught.value)


def test_an_unreadable_tls_file_on_pymysql_is_named(tls_files: dict[str, Path]) -> None:
    """A CA file that is not PEM: PyMySQL's error names the option and the path."""
    query = f"ssl_ca={tls_files['ssl_ca']}"
    provider = PooledProvider.from_urls({"s": f"mysql+pymysql://app@127.0.0.1:9/b?{query}"})
    try:
        with pytest.raises(InvalidURLError) as caught, provider.connection("s"):
            pass
    finally:
        provider.close()
    assert "ssl_ca" in str(caught.value)
    assert str(tls_files["ssl_ca"]) in str(caught.value)


# ---------------------------------------------------------------------------
# The table, checked against private servers

PLAIN = "plain"
TLS = "encrypted"
REFUSED = "refused"

# (options, outcome per server) where servers are: right name, wrong name, no TLS.
# "{ca}" is the signing CA, "{other}" a CA that did not sign the server's certificate.
MATRIX: list[tuple[str, tuple[str, str, str]]] = [
    ("ssl_mode=DISABLED", (PLAIN, PLAIN, PLAIN)),
    ("", (TLS, TLS, PLAIN)),  # PREFERRED, the default
    ("ssl_mode=PREFERRED", (TLS, TLS, PLAIN)),
    ("ssl_mode=REQUIRED", (TLS, TLS, REFUSED)),
    ("ssl_ca={ca}", (TLS, REFUSED, REFUSED)),  # VERIFY_IDENTITY by default
    ("ssl_ca={other}", (REFUSED, REFUSED, REFUSED)),
    ("ssl_mode=VERIFY_IDENTITY&ssl_ca={ca}", (TLS, REFUSED, REFUSED)),
    ("ssl_mode=VERIFY_IDENTITY&ssl_ca={other}", (REFUSED, REFUSED, REFUSED)),
    ("ssl_mode=VERIFY_IDENTITY", (REFUSED, REFUSED, REFUSED)),  # system store: not our CA
    ("ssl_mode=VERIFY_CA&ssl_ca={ca}", (TLS, "name", REFUSED)),
    ("ssl_mode=VERIFY_CA&ssl_ca={other}", (REFUSED, REFUSED, REFUSED)),
]
# VERIFY_CA against a certificate for another name: PyMySQL does not check the
# name (MySQL's meaning of VERIFY_CA); mysqlclient built on MariaDB Connector/C
# always checks it. Documented in the TLS table.
VERIFY_CA_WRONG_NAME = {"pymysql": TLS, "mysqldb": REFUSED}
SERVERS = {"right name": "local", "wrong name": "elsewhere", "no TLS": None}


def _outcome(driver: str, where: str, options: str) -> str:
    provider = PooledProvider.from_urls({"s": f"mysql+{driver}://root@{where}/tls?{options}"})
    try:
        with provider.connection("s") as conn:
            cursor = conn.cursor()
            cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
            row = cursor.fetchone()
            cursor.close()
    except FatalDatabaseError:
        return REFUSED
    except DatabaseError as exc:  # anything else is a test failure, shown whole
        return f"unexpected {type(exc).__name__}: {exc}"
    finally:
        provider.close()
    assert row is not None
    return TLS if row[1] else PLAIN


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("server", sorted(SERVERS))
def test_every_mode_does_what_the_table_says(
    private_servers: ServerFactory, pki: Path, driver: str, server: str
) -> None:
    """Each row of the TLS table, against a server with the right name, a wrong name, no TLS."""
    where = tls_server(private_servers, pki, SERVERS[server])
    column = list(SERVERS).index(server)
    fill: Callable[[str], str] = lambda text: text.format(  # noqa: E731
        ca=pki / "ca.pem", other=pki / "otherca.pem"
    )
    got = {options: _outcome(driver, where, fill(options)) for options, _ in MATRIX}
    want = {
        options: VERIFY_CA_WRONG_NAME[driver] if row[column] == "name" else row[column]
        for options, row in MATRIX
    }
    assert got == want
