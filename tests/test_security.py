"""Security checks: identifiers, least-privilege writers, secrets in output, verified TLS.

* SQL identifiers come only from configuration and are validated; injection
  attempts in every place a name enters SQL are refused before any SQL runs.
* A writer account with only SELECT, INSERT, UPDATE (and DELETE on the
  ledger, for pruning) runs the whole write path; asked for more, it gets a
  FatalDatabaseError naming the denial, not a crash.
* Passwords never appear in a repr, a log record or an error text, whatever
  fails (wrong password, unknown database, denied statement, refused
  connection, malformed URL).
* ``ssl_mode=VERIFY_IDENTITY`` refuses a server whose certificate is not
  signed by the configured CA or names another host, with both drivers.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from shardbill.dialects import MySQLDialect, SQLiteDialect, UpsertSpec, validate_identifier
from shardbill.errors import ConfigurationError, DatabaseError, FatalDatabaseError
from shardbill.providers import PooledProvider
from shardbill.providers.url import ConnectionURL
from shardbill.tables import SystemTables
from shardbill.tables.aggregates import (
    Account,
    AggregateTable,
    Amount,
    BigInt,
    KeyColumn,
    Measure,
)
from shardbill.tables.catalog import billing_tables
from shardbill.writer import AggregationWriter
from tests.faults.cluster import DRIVERS, ShardCluster
from tests.faults.invariants import Recorder, assert_invariants
from tests.faults.workload import priced_events
from tests.support.pki import make_pki, tls_server
from tests.support.proxy import FaultProxy
from tests.support.server_fixtures import ServerFactory

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")

INJECTIONS = [
    "usage`; DROP TABLE account_balance; --",
    "usage` (x INT); --",
    "usage'",
    'usage"',
    "a b",
    "a-b",
    "a.b",
    "usage;",
    "usage/*x*/",
    "",
    "1usage",
    "x" * 65,
    "usagé",
    "usage\x00",
    "\nusage",
    "usage\r\nDROP",
]


def _table(name: str) -> object:
    return AggregateTable(
        name=name,
        keys=(KeyColumn(name="account_id", type=BigInt(), projection=Account()),),
        measures=(Measure(name="amount", value=Amount(scale=6)),),
    )


def _key_column(name: str) -> object:
    return KeyColumn(name=name, type=BigInt(), projection=Account())


def _measure(name: str) -> object:
    return Measure(name=name, value=Amount(scale=6))


def _upsert_table(name: str) -> object:
    return UpsertSpec(table=name, columns=("k", "n"), key_columns=("k",))


def _upsert_column(name: str) -> object:
    return UpsertSpec(table="t", columns=("k", name), key_columns=("k",))


def _upsert_key(name: str) -> object:
    return UpsertSpec(table="t", columns=(name, "n"), key_columns=(name,))


# Every place a configured name reaches SQL, and the exact text it validates.
BUILDERS: dict[str, tuple[Callable[[str], object], Callable[[str], str]]] = {
    "AggregateTable.name": (_table, lambda n: n),
    "KeyColumn.name": (_key_column, lambda n: n),
    "Measure.name": (_measure, lambda n: n),
    "SystemTables.prefix": (lambda n: SystemTables(prefix=n), lambda n: f"{n}_ledger"),
    "UpsertSpec.table": (_upsert_table, lambda n: n),
    "UpsertSpec.columns": (_upsert_column, lambda n: n),
    "UpsertSpec.key_columns": (_upsert_key, lambda n: n),
    "MySQLDialect.quote": (MySQLDialect().quote, lambda n: n),
    "SQLiteDialect.quote": (SQLiteDialect().quote, lambda n: n),
    "validate_identifier": (validate_identifier, lambda n: n),
}


@pytest.mark.parametrize("builder", sorted(BUILDERS))
@pytest.mark.parametrize("name", INJECTIONS)
def test_identifiers_with_injection_attempts_are_refused(builder: str, name: str) -> None:
    """A name that is not a plain identifier is refused, naming the value, before any SQL."""
    build, validated = BUILDERS[builder]
    if IDENTIFIER.fullmatch(validated(name)):
        build(name)  # an empty prefix makes "_ledger": an identifier, nothing injected
        return
    with pytest.raises(ConfigurationError) as caught:
        build(name)
    assert isinstance(caught.value, ValueError)
    assert repr(validated(name)) in str(caught.value)


@pytest.mark.parametrize("builder", sorted(BUILDERS))
def test_plain_identifiers_are_accepted_and_quoted(builder: str) -> None:
    """The 64-character and 1-character limits of the pattern are accepted."""
    build, validated = BUILDERS[builder]
    longest = "A" * (64 - len(validated("")))
    for name in ("a", "_", "usage_daily", longest):
        build(name)
    assert MySQLDialect().quote("usage_daily") == "`usage_daily`"
    assert SQLiteDialect().quote("usage_daily") == '"usage_daily"'


@pytest.mark.property
@given(name=st.text(max_size=70))
def test_any_name_outside_the_identifier_pattern_is_refused(name: str) -> None:
    """Whatever the text, a name that does not fully match the pattern never reaches SQL."""
    assume(not IDENTIFIER.fullmatch(name))
    for builder in sorted(BUILDERS):
        if builder == "SystemTables.prefix":
            continue  # the prefix is checked as part of f"{prefix}_ledger"
        with pytest.raises(ConfigurationError):
            BUILDERS[builder][0](name)


@pytest.mark.parametrize("builder", sorted(set(BUILDERS) - {"SystemTables.prefix"}))
def test_a_name_with_a_trailing_newline_is_refused(builder: str) -> None:
    """'usage_daily\\n' is not an identifier and is refused like any other bad name."""
    with pytest.raises(ConfigurationError):
        BUILDERS[builder][0]("usage_daily\n")


# ---------------------------------------------------------------------------
# A least-privilege writer account

APP_USER = "sbapp"
APP_PASSWORD = "Zq8#s3cr?t@/%x"  # needs percent-encoding in a URL
YEAR_2100 = 4_102_444_800
WRITE_GRANTS = (
    "SELECT, INSERT, UPDATE ON `{db}`.*",
    "DELETE ON `{db}`.`shardbill_ledger`",
)


@pytest.fixture
def cluster(
    private_servers: ServerFactory, request: pytest.FixtureRequest
) -> Iterator[ShardCluster]:
    """Two shards on one private server, schema created by root, the app user created."""
    driver: str = request.param
    (server,) = private_servers(1)
    shards = ShardCluster([server], driver=driver, shards=2, proxied=False)
    try:
        shards.ensure_schema()
        shards.create_user(APP_USER, APP_PASSWORD, WRITE_GRANTS)
        yield shards
    finally:
        shards.close()


@pytest.mark.parametrize("cluster", DRIVERS, indirect=True)
def test_a_writer_with_only_dml_grants_runs_the_write_path(cluster: ShardCluster) -> None:
    """SELECT, INSERT, UPDATE (+ DELETE on the ledger) are enough to write, replay and prune."""
    events = priced_events(11, 120)
    recorder = Recorder(events, cluster.shard_map)
    writer = cluster.writer(user=APP_USER, password=APP_PASSWORD)
    first = recorder.write("app", writer, list(events))
    assert first.ok
    assert first.applied_events == frozenset(events)
    replay = recorder.write("app", writer, list(events))
    assert replay.duplicate_events == frozenset(events)
    verdict = assert_invariants(recorder, cluster, settled=True)
    pruned = writer.prune(now=YEAR_2100)  # every ledger row is past retention then
    assert sum(pruned.values()) == verdict.counts["ledger rows"] > 0
    for shard in cluster.shards:
        assert cluster.rows(shard, "SELECT COUNT(*) FROM shardbill_ledger") == [(0,)]


@pytest.mark.parametrize("cluster", DRIVERS, indirect=True)
def test_a_writer_asked_for_ddl_gets_a_clear_denial(cluster: ShardCluster) -> None:
    """ensure_schema (CREATE) as the DML-only account: FatalDatabaseError naming the denial."""
    writer = cluster.writer(user=APP_USER, password=APP_PASSWORD)
    with pytest.raises(FatalDatabaseError) as caught:
        writer.ensure_schema()
    error = caught.value
    assert error.errno == 1142  # ER_TABLEACCESS_DENIED_ERROR
    assert "denied" in str(error)
    assert "CREATE" in str(error)
    assert error.shard in cluster.shards


@pytest.mark.parametrize("cluster", DRIVERS, indirect=True)
def test_pruning_without_delete_is_a_clear_denial(cluster: ShardCluster) -> None:
    """An account without DELETE on the ledger gets FatalDatabaseError from prune, no crash."""
    cluster.create_user("sbnodelete", APP_PASSWORD, ("SELECT, INSERT, UPDATE ON `{db}`.*",))
    writer = cluster.writer(user="sbnodelete", password=APP_PASSWORD)
    assert writer.write([c for cs in priced_events(12, 5).values() for c in cs]).ok
    with pytest.raises(FatalDatabaseError) as caught:
        writer.prune(now=YEAR_2100)
    assert caught.value.errno == 1142
    assert "DELETE" in str(caught.value)


# ---------------------------------------------------------------------------
# Passwords in output

WRONG_PASSWORD = "Wr0ng#p@ss?word"


def _texts_of(exc: BaseException) -> list[str]:
    """Everything an exception can show: its traceback chain, str and repr of each link."""
    texts = ["".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        texts += [str(link), repr(link), *map(repr, link.args)]
        link = link.__cause__ or link.__context__
    return texts


def _leaks(texts: list[str], *secrets: str) -> list[str]:
    forms = {form for secret in secrets for form in (secret, quote(secret, safe=""))}
    return [text for text in texts if any(form in text for form in forms)]


@pytest.mark.parametrize("cluster", DRIVERS, indirect=True)
def test_passwords_never_appear_in_reprs_logs_or_errors(
    cluster: ShardCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Wrong password, unknown database, denied DDL, refused connection, bad URLs: no password."""
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    events = priced_events(13, 20)
    charges = [c for cs in events.values() for c in cs]

    def attempt(action: Callable[[], object]) -> None:
        try:
            outcome = action()
        except Exception as exc:  # every failure's text is scanned
            texts.extend(_texts_of(exc))
        else:
            texts.append(repr(outcome))

    good = cluster.urls(user=APP_USER, password=APP_PASSWORD)
    provider = PooledProvider.from_urls(good)
    texts += [repr(provider), *(str(provider.url(s)) + repr(provider.url(s)) for s in good)]
    writer = AggregationWriter(
        shard_map=cluster.shard_map, provider=provider, tables=billing_tables()
    )
    attempt(lambda: writer.write(charges))
    attempt(writer.ensure_schema)  # denied: CREATE
    with provider.connection("s0") as conn:
        texts += [repr(conn), repr(conn.url)]
    writer.close()
    provider.close()
    for urls in (
        cluster.urls(user=APP_USER, password=WRONG_PASSWORD),  # access denied
        {
            s: url.replace(cluster.database(s), "fx_missing")  # unknown database
            for s, url in good.items()
        },
    ):
        bad = PooledProvider.from_urls(urls)
        texts.append(repr(bad))
        bad_writer = AggregationWriter(
            shard_map=cluster.shard_map, provider=bad, tables=billing_tables()
        )
        attempt(partial(bad_writer.write, charges))
        bad_writer.close()
        bad.close()
    with FaultProxy(cluster.servers[0].host, cluster.servers[0].port) as proxy:
        proxy.refuse()
        refused = PooledProvider.from_urls(
            {
                s: url.replace(f":{cluster.servers[0].port}/", f":{proxy.port}/")
                for s, url in good.items()
            }
        )
        with pytest.raises(DatabaseError) as caught, refused.connection("s0"):
            pass
        texts += _texts_of(caught.value)
        refused.close()
    scheme = f"mysql+{cluster.driver}"
    secret = quote(APP_PASSWORD, safe="")
    for malformed in (
        f"{scheme}://{APP_USER}:{secret}@127.0.0.1:notaport/db",
        f"{scheme}://{APP_USER}:{secret}@127.0.0.1/db?no_such_option=1",
        f"{scheme}://{APP_USER}:{secret}@127.0.0.1/db?password_env=PW",
        f"{scheme}://{APP_USER}:{APP_PASSWORD}@127.0.0.1/db",  # unencoded: '#', '?', '@', '/'
        f"{scheme}://{APP_USER}:{secret}@bad host/db",
    ):
        attempt(partial(ConnectionURL.parse, malformed))
    formatter = logging.Formatter()
    texts += [formatter.format(record) for record in caplog.records]
    texts += [repr(record.args) for record in caplog.records]
    assert any("denied" in text for text in texts)  # the errors did happen
    assert any("fx_missing" in text for text in texts)  # 1044: no access to that database
    # The scan finds a password in either form (a positive control).
    assert _leaks([f"user:{quote(APP_PASSWORD, safe='')}@", f"pw={WRONG_PASSWORD}"], APP_PASSWORD)
    assert any(isinstance(r.args, tuple) for r in caplog.records)
    assert not _leaks(texts, APP_PASSWORD, WRONG_PASSWORD)


# ---------------------------------------------------------------------------
# Verified TLS


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two CAs; a server certificate for 127.0.0.1 and one for another host, both from ``ca``."""
    return make_pki(tmp_path_factory.mktemp("pki"))


def _tls_server(private_servers: ServerFactory, pki: Path, cert: str) -> str:
    """A private server presenting ``cert``; returns ``host:port``."""
    return tls_server(private_servers, pki, cert)


def _connects(driver: str, where: str, options: str) -> str:
    """The session's TLS cipher when the connection is made; raises the refusal otherwise."""
    provider = PooledProvider.from_urls({"s": f"mysql+{driver}://root@{where}/tls?{options}"})
    try:
        with provider.connection("s") as conn:
            cursor = conn.cursor()
            cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
            row = cursor.fetchone()
            cursor.close()
    finally:
        provider.close()
    assert row is not None
    return str(row[1])


@pytest.mark.parametrize("driver", DRIVERS)
def test_verify_identity_needs_the_right_ca(
    private_servers: ServerFactory, pki: Path, driver: str
) -> None:
    """VERIFY_IDENTITY connects with the signing CA and a matching host; without it, refused."""
    where = _tls_server(private_servers, pki, "local")
    assert _connects(driver, where, f"ssl_mode=VERIFY_IDENTITY&ssl_ca={pki / 'ca.pem'}")
    for options in (
        "ssl_mode=VERIFY_IDENTITY",
        f"ssl_mode=VERIFY_IDENTITY&ssl_ca={pki / 'otherca.pem'}",
    ):
        with pytest.raises(DatabaseError) as caught:
            _connects(driver, where, options)
        assert re.search(r"certificate|SSL|TLS", str(caught.value)), caught.value


@pytest.mark.parametrize("driver", DRIVERS)
def test_verify_identity_refuses_a_certificate_for_another_host(
    private_servers: ServerFactory, pki: Path, driver: str
) -> None:
    """A certificate from the right CA naming another host: encrypted yes, VERIFY_IDENTITY no."""
    where = _tls_server(private_servers, pki, "elsewhere")
    assert _connects(driver, where, "ssl_mode=REQUIRED")  # TLS itself works
    with pytest.raises(DatabaseError) as caught:
        _connects(driver, where, f"ssl_mode=VERIFY_IDENTITY&ssl_ca={pki / 'ca.pem'}")
    assert re.search(r"certificate|SSL|TLS|match", str(caught.value)), caught.value


@pytest.mark.parametrize(
    "driver",
    [
        "pymysql",
        "mysqldb",
    ],
)
def test_a_failed_certificate_check_is_fatal_not_retryable(
    private_servers: ServerFactory, pki: Path, driver: str
) -> None:
    """An untrusted server certificate is a FatalDatabaseError: retrying cannot fix it."""
    where = _tls_server(private_servers, pki, "local")
    with pytest.raises(FatalDatabaseError):
        _connects(driver, where, f"ssl_mode=VERIFY_IDENTITY&ssl_ca={pki / 'otherca.pem'}")
