"""Connection URLs: the forms, the options, and a password that never shows."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardbill.errors import ConfigurationError, InvalidURLError
from shardbill.providers import ConnectionURL, PooledProvider, Secret, SSLMode
from shardbill.providers import mysqldb as mysqldb_provider
from shardbill.providers import pymysql as pymysql_provider

PASSWORD = "Pw-7f3Kq9-unique"


def test_mysql_url_parts_are_parsed() -> None:
    """Scheme, user, password, host, port, database and options land in their fields."""
    url = ConnectionURL.parse(
        f"mysql+pymysql://app:{PASSWORD}@db-1.internal:3307/billing"
        "?connect_timeout=2.5&read_timeout=30&pool_size=4&ping_after=0"
    )
    assert url.driver == "pymysql"
    assert url.family == "mysql"
    assert (url.user, url.host, url.port, url.database) == ("app", "db-1.internal", 3307, "billing")
    assert url.resolve_password() == PASSWORD
    assert (url.connect_timeout, url.read_timeout, url.write_timeout) == (2.5, 30.0, None)
    assert (url.pool_size, url.ping_after) == (4, 0.0)


def test_defaults_are_the_safe_ones() -> None:
    """Without options: utf8mb4, strict mode, port 3306, PREFERRED TLS, bounded pool."""
    url = ConnectionURL.parse("mysql+mysqldb://app@db/billing")
    assert url.driver == "mysqldb"
    assert url.charset == "utf8mb4"
    assert url.strict_mode is True
    assert url.port == 3306
    assert url.effective_ssl_mode is SSLMode.PREFERRED
    assert url.pool_size >= 1
    assert url.resolve_password() == ""


def test_percent_encoded_parts_are_decoded() -> None:
    """Special characters in user, password and database are percent-decoded."""
    url = ConnectionURL.parse("mysql+pymysql://a%40b:p%3Fw%2Fx%40y@host/my%2Ddb")
    assert url.user == "a@b"
    assert url.resolve_password() == "p?w/x@y"
    assert url.database == "my-db"


def test_ipv6_host_in_brackets() -> None:
    """A bracketed IPv6 address with a port parses, and str() brackets it again."""
    url = ConnectionURL.parse("mysql+pymysql://app@[::1]:3310/db")
    assert (url.host, url.port) == ("::1", 3310)
    assert "[::1]:3310" in str(url)


def test_sqlite_relative_path_is_resolved_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three slashes mean a relative path, made absolute when the URL is parsed."""
    monkeypatch.chdir(tmp_path)
    url = ConnectionURL.parse("sqlite:///shards/s0.db")
    assert url.path == str(tmp_path / "shards" / "s0.db")
    monkeypatch.chdir(tmp_path.parent)
    assert url.path == str(tmp_path / "shards" / "s0.db")


def test_sqlite_absolute_path_uses_four_slashes(tmp_path: Path) -> None:
    """Four slashes mean an absolute path, kept as it is; sqlite options parse."""
    target = tmp_path / "abs.db"
    url = ConnectionURL.parse(f"sqlite:///{target}?busy_timeout=1.5&synchronous=normal")
    assert url.path == str(target)
    assert (url.busy_timeout, url.synchronous) == (1.5, "normal")
    assert ConnectionURL.parse(str(url)) == url


@pytest.mark.parametrize(
    "text",
    ["sqlite:///:memory:", "sqlite://", "sqlite:///", "sqlite://host/file.db"],
)
def test_sqlite_urls_without_a_file_are_refused(text: str) -> None:
    """In-memory and host-style sqlite URLs are refused with the forms to use."""
    with pytest.raises(InvalidURLError, match="sqlite"):
        ConnectionURL.parse(text)


def test_unknown_option_names_it_and_lists_the_valid_ones() -> None:
    """An unknown option is an InvalidURLError naming it and listing the valid options."""
    with pytest.raises(InvalidURLError) as info:
        ConnectionURL.parse("mysql+pymysql://app@db/billing?ssl_verify_identity=true")
    message = str(info.value)
    assert "'ssl_verify_identity'" in message
    for option in ConnectionURL.MYSQL_OPTIONS:
        assert option in message


def test_mysql_options_are_refused_on_sqlite_urls() -> None:
    """A MySQL-only option on a sqlite URL is unknown there, with sqlite's options listed."""
    with pytest.raises(InvalidURLError, match="busy_timeout"):
        ConnectionURL.parse("sqlite:///x.db?connect_timeout=3")


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("charset=latin1", "charset"),
        ("charset=utf8", "charset"),
        ("pool_size=0", "pool_size"),
        ("pool_size=two", "pool_size"),
        ("connect_timeout=-1", "connect_timeout"),
        ("read_timeout=nan", "read_timeout"),
        ("ping_after=-5", "ping_after"),
        ("ssl_mode=SOMETIMES", "ssl_mode"),
        ("strict_mode=maybe", "strict_mode"),
        ("password_env=1BAD", "password_env"),
    ],
)
def test_invalid_option_values_name_the_option(query: str, field: str) -> None:
    """A bad option value raises InvalidURLError naming the option."""
    with pytest.raises(InvalidURLError, match=repr(field)):
        ConnectionURL.parse(f"mysql+pymysql://app@db/billing?{query}")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("mysql://app@db/billing", r"mysql\+pymysql"),
        ("postgres://app@db/billing", "unsupported scheme"),
        ("db/billing", "unsupported scheme"),
        ("mysql+pymysql://app@db:port/billing", "non-numeric port"),
        ("mysql+pymysql://app@db:70000/billing", "'port'"),
        ("mysql+pymysql://app@db/a/b", "database name with '/'"),
        ("mysql+pymysql://app@/billing", "needs a host"),
        ("mysql+pymysql://app@db/billing?pool_size=1&pool_size=2", "twice"),
        ("mysql+pymysql://app@db/billing?ssl_mode=DISABLED&ssl_ca=/ca.pem", "DISABLED"),
        ("mysql+pymysql://app@db/billing?ssl_cert=/c.pem", "ssl_key"),
    ],
)
def test_malformed_urls_are_refused_with_a_reason(text: str, needle: str) -> None:
    """Each malformed URL is an InvalidURLError (a ConfigurationError) that says what is wrong."""
    with pytest.raises(InvalidURLError, match=needle) as info:
        ConnectionURL.parse(text)
    assert isinstance(info.value, ConfigurationError)
    assert isinstance(info.value, ValueError)


def test_ssl_mode_defaults_follow_the_tls_files() -> None:
    """ssl_ca alone means VERIFY_IDENTITY; a client certificate alone means REQUIRED."""
    with_ca = ConnectionURL.parse("mysql+pymysql://app@db/b?ssl_ca=/etc/ca.pem")
    assert with_ca.effective_ssl_mode is SSLMode.VERIFY_IDENTITY
    with_cert = ConnectionURL.parse("mysql+pymysql://app@db/b?ssl_cert=/c.pem&ssl_key=/k.pem")
    assert with_cert.effective_ssl_mode is SSLMode.REQUIRED
    verified = ConnectionURL.parse("mysql+pymysql://app@db/b?ssl_mode=verify_identity")
    assert verified.effective_ssl_mode is SSLMode.VERIFY_IDENTITY


def test_tls_options_reach_pymysql_as_a_verifying_context() -> None:
    """VERIFY_IDENTITY gives PyMySQL an SSLContext that checks the certificate and host name."""
    import ssl

    url = ConnectionURL.parse("mysql+pymysql://app@db/b?ssl_mode=VERIFY_IDENTITY")
    kwargs = pymysql_provider.connect_kwargs(url)
    context = kwargs["ssl"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert kwargs["local_infile"] is False
    assert kwargs["autocommit"] is False
    assert kwargs["charset"] == "utf8mb4"


def test_tls_options_reach_mysqlclient() -> None:
    """mysqlclient gets ssl_mode, the TLS files, multi_statements and local_infile off."""
    url = ConnectionURL.parse(
        "mysql+mysqldb://app@db/b?ssl_mode=VERIFY_IDENTITY&ssl_ca=/ca.pem"
        "&ssl_cert=/c.pem&ssl_key=/k.pem&read_timeout=0.2"
    )
    kwargs = mysqldb_provider.connect_kwargs(url)
    assert kwargs["ssl_mode"] == "VERIFY_IDENTITY"
    assert kwargs["ssl"] == {"ca": "/ca.pem", "cert": "/c.pem", "key": "/k.pem"}
    assert kwargs["multi_statements"] is False
    assert kwargs["local_infile"] is False
    assert kwargs["read_timeout"] == 1  # whole seconds, rounded up


def test_password_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """password_env reads the password from the named variable at connect time."""
    url = ConnectionURL.parse("mysql+pymysql://app@db/billing?password_env=SB_TEST_PW")
    monkeypatch.setenv("SB_TEST_PW", PASSWORD)
    assert url.resolve_password() == PASSWORD
    monkeypatch.setenv("SB_TEST_PW", "rotated")
    assert url.resolve_password() == "rotated"
    assert "rotated" not in repr(url)


def test_missing_password_variable_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unset password_env variable is an InvalidURLError naming the variable."""
    monkeypatch.delenv("SB_TEST_PW_MISSING", raising=False)
    url = ConnectionURL.parse("mysql+pymysql://app@db/billing?password_env=SB_TEST_PW_MISSING")
    with pytest.raises(InvalidURLError, match="SB_TEST_PW_MISSING"):
        url.resolve_password()


def test_password_and_password_env_together_are_refused() -> None:
    """A URL cannot hold a password and password_env at once."""
    with pytest.raises(InvalidURLError, match="password_env") as info:
        ConnectionURL.parse(f"mysql+pymysql://app:{PASSWORD}@db/b?password_env=X")
    assert PASSWORD not in str(info.value)


def test_repr_and_str_hide_the_password() -> None:
    """repr(), str(), attrs' repr of the fields and the Secret never show the password."""
    url = ConnectionURL.parse(f"mysql+pymysql://app:{PASSWORD}@db/billing?pool_size=3")
    assert PASSWORD not in repr(url)
    assert PASSWORD not in str(url)
    assert "app:***@" in str(url)
    assert PASSWORD not in repr(url.password)
    assert PASSWORD not in str(url.password)
    assert PASSWORD not in repr(attrs.asdict(url, recurse=False))
    assert PASSWORD not in f"{url}"


@pytest.mark.parametrize(
    "template",
    [
        "mysql+pymysql://app:{pw}@db:notaport/billing",
        "mysql+pymysql://app:{pw}@db/billing?nonsense=1",
        "mysql+pymysql://app:{pw}@db/billing?charset=latin1",
        "mysql+pymysql://app:{pw}@db/billing?password_env=OTHER",
        "mysql+pymysql://app:{pw}@/billing",
        "mysql://app:{pw}@db/billing",
        "mysql+pymysql://app:{pw}@bad host/billing",
        "mysql+pymysql://app:{pw}?x@db/billing",
        "mysql+pymysql://app:{pw}@db/billing?pool_size=1&pool_size=1",
    ],
)
def test_error_messages_never_contain_the_password(template: str) -> None:
    """Every URL error shows the URL with ``***`` where the password was."""
    with pytest.raises(InvalidURLError) as info:
        ConnectionURL.parse(template.format(pw=PASSWORD))
    assert PASSWORD not in str(info.value)
    assert "Pw-7f3Kq9" not in str(info.value)


@given(password=st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=40))
def test_any_password_stays_hidden(password: str) -> None:
    """Whatever the password (percent-encoded), it never shows in repr or str."""
    from urllib.parse import quote

    secret = "S3cr3t-" + password
    url = ConnectionURL.parse(f"mysql+pymysql://app:{quote(secret, safe='')}@db/billing")
    assert url.resolve_password() == secret
    assert secret not in repr(url)
    assert secret not in str(url)


def test_unencoded_special_characters_in_the_password_never_leak() -> None:
    """A raw ? in a password fails without showing any of it; raw #, / and @ parse whole."""
    with pytest.raises(InvalidURLError) as info:
        ConnectionURL.parse("mysql+pymysql://app:ab?cd-Pw-7f3Kq9@db/billing")
    assert "Pw-7f3Kq9" not in str(info.value)
    assert "app:ab" not in str(info.value)
    assert "app:***@db" in str(info.value)
    for raw in ("ab#cd-Pw-7f3Kq9", "ab/cd-Pw-7f3Kq9", "ab@cd-Pw-7f3Kq9"):
        url = ConnectionURL.parse(f"mysql+pymysql://app:{raw}@db/billing")
        assert url.resolve_password() == raw
        assert raw not in repr(url)


def test_secret_equality_and_repr() -> None:
    """Secrets compare by value but render as ``***``."""
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")
    assert repr(Secret("a")) == "Secret('***')"


def test_provider_repr_and_logs_hide_the_password(caplog: pytest.LogCaptureFixture) -> None:
    """A provider's repr, its URLs and its debug logs never show the password."""
    caplog.set_level(logging.DEBUG, logger="shardbill")
    provider = PooledProvider.from_urls(
        {"s0": f"mysql+pymysql://app:{PASSWORD}@127.0.0.1:1/billing?connect_timeout=1"}
    )
    try:
        assert PASSWORD not in repr(provider)
        assert PASSWORD not in str(provider.url("s0"))
    finally:
        provider.close()
    for record in caplog.records:
        assert PASSWORD not in record.getMessage()


def test_invalid_url_in_from_urls_names_the_shard() -> None:
    """from_urls prefixes URL errors with the shard name."""
    with pytest.raises(InvalidURLError, match="shard 'east-3'") as info:
        PooledProvider.from_urls({"east-3": f"mysql+pymysql://app:{PASSWORD}@db/b?bogus=1"})
    assert PASSWORD not in str(info.value)


def test_str_round_trips_options() -> None:
    """str() of a URL without a password parses back to an equal URL."""
    url = ConnectionURL.parse(
        "mysql+mysqldb://app@db:3307/billing?ssl_mode=VERIFY_IDENTITY&ssl_ca=/etc/ca.pem"
        "&strict_mode=false&pool_timeout=2&password_env=DB_PW"
    )
    assert ConnectionURL.parse(str(url)) == url


def test_constructor_validates_like_parse() -> None:
    """Building a ConnectionURL directly runs the same validators."""
    with pytest.raises(InvalidURLError, match="absolute"):
        ConnectionURL(driver="sqlite", path="relative.db")
    with pytest.raises(InvalidURLError, match="'port'"):
        ConnectionURL(driver="pymysql", host="db", port=0)
    url = ConnectionURL(driver="sqlite", path=os.path.abspath("x.db"))
    assert url.family == "sqlite"


@pytest.mark.parametrize(
    "query",
    [
        "pool_size=%D9%A4",  # Arabic-Indic digit four
        "pool_size=1_0",
        "pool_size=+5",
        "pool_size=%205",
        "pool_size=5%20",
        "connect_timeout=1e3",
        "connect_timeout=inf",
        "connect_timeout=1_0.5",
        "ping_after=-0",
    ],
)
def test_numeric_options_take_plain_ascii_digits_only(query: str) -> None:
    """Numbers in a URL are ASCII digits (and one '.'): no '_', sign, padding or other digits."""
    name = query.partition("=")[0]
    with pytest.raises(InvalidURLError, match=repr(name)):
        ConnectionURL.parse(f"mysql+pymysql://app@db/billing?{query}")


def test_asdict_keeps_the_password_hidden() -> None:
    """attrs.asdict and astuple of a URL hold the Secret itself, which shows ***."""
    url = ConnectionURL.parse(f"mysql+pymysql://app:{PASSWORD}@db/billing")
    as_dict = attrs.asdict(url)
    assert as_dict["password"] == Secret(PASSWORD)
    assert PASSWORD not in repr(as_dict)
    assert PASSWORD not in repr(attrs.astuple(url))


def test_a_password_without_at_host_is_not_shown_as_a_port() -> None:
    """mysql+pymysql://app:PW/billing reads PW as a port: refused, PW not shown, fix given."""
    with pytest.raises(InvalidURLError) as caught:
        ConnectionURL.parse(f"mysql+pymysql://app:{PASSWORD}/billing")
    message = str(caught.value)
    assert PASSWORD not in message
    assert "app:***" in message
    assert "@HOST" in message
    with pytest.raises(InvalidURLError) as caught:
        ConnectionURL.parse("mysql+pymysql://app:Pw-part1/part2/billing")  # '/' in it
    assert "part1" not in str(caught.value)
    assert "part2" not in str(caught.value)
    assert "@HOST" in str(caught.value)


@pytest.mark.parametrize("driver", ["pymysql", "mysqldb"])
def test_every_mysql_connection_has_bounded_read_and_write_timeouts(driver: str) -> None:
    """Finding 2: a URL without timeouts still bounds reads and writes on both drivers
    (60 s, longer than InnoDB's 50 s lock wait), and a replica URL without read_timeout
    waits at most 10 s for an answer, so a frozen replica cannot hang a read."""
    module = pymysql_provider if driver == "pymysql" else mysqldb_provider
    url = ConnectionURL.parse(f"mysql+{driver}://app@db/billing")
    kwargs = module.connect_kwargs(url)
    assert (kwargs["connect_timeout"], kwargs["read_timeout"], kwargs["write_timeout"]) == (
        10,
        60,
        60,
    )
    provider = PooledProvider.from_urls(
        {"s0": url},
        replicas={
            "s0": [
                f"mysql+{driver}://ro@db-r1/billing",
                f"mysql+{driver}://ro@db-r2/billing?read_timeout=3",
            ]
        },
    )
    replicas = provider.replica_urls("s0")
    assert [module.connect_kwargs(u)["read_timeout"] for u in replicas] == [10, 3]
    assert provider.url("s0").read_timeout is None  # the primary keeps the 60 s default
