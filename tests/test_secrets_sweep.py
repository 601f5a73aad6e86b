"""A marker secret in every position of a URL, a TOML file or an option never shows.

The sweep builds connection URLs, configuration files and command lines that
carry :data:`MARKER` where users put (or paste by mistake) a secret: the
password, every option value, malformed URLs (a password without ``@host``),
wrong TOML types holding a URL. It collects every text a failure or a value
can show (exception text, ``repr``, ``str``, the traceback chain, DEBUG log
records, CLI output in text and ``--json``, ``attrs.asdict``) and asserts the
marker is in none of them, percent-encoded or not.

Path-valued options (``ssl_ca``, ``ssl_cert``, ``ssl_key``, ``unix_socket``)
are left out on purpose: they name files, and naming the file is the fix.
A ``password_env`` value that is a valid variable name is shown too (it is
a name); the marker here is never a valid name.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import attrs
import pytest

from shardbill.cli import main
from shardbill.config import Config
from shardbill.providers import ConnectionURL, PooledProvider

# '!' and '-' keep it out of every valid option value (not a number, a mode, a name).
MARKER = "Mk!9-SeCrEt-Zq"
FORMS = (MARKER, quote(MARKER, safe=""), quote(MARKER))
PATH_OPTIONS = frozenset({"ssl_ca", "ssl_cert", "ssl_key", "unix_socket"})
SCHEMES = ("mysql+pymysql", "mysql+mysqldb")


def _texts_of(exc: BaseException) -> list[str]:
    """Everything an exception shows: the formatted chain, and str/repr/args of each link."""
    texts = ["".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        texts += [str(link), repr(link), *map(repr, link.args)]
        link = link.__cause__ or link.__context__
    return texts


def _leaks(texts: list[str]) -> list[str]:
    return [text for text in texts if any(form in text for form in FORMS)]


def _url_texts() -> Iterator[str]:
    """URLs with the marker as password, as each option's value, and in malformed shapes."""
    for scheme in SCHEMES:
        for option in ConnectionURL.MYSQL_OPTIONS:
            if option not in PATH_OPTIONS:
                yield f"{scheme}://app@db/billing?{option}={quote(MARKER, safe='')}"
                yield f"{scheme}://app@db/billing?{option}={MARKER}"
        for password in (MARKER, quote(MARKER, safe="")):
            yield f"{scheme}://app:{password}/billing"  # no @host: the password looks like a port
            yield f"{scheme}://app:{password}"
            yield f"{scheme}://app:{password}@"
            yield f"{scheme}://app:{password}@db:notaport/billing"
            yield f"{scheme}://app:{password}@bad host/billing"
            yield f"{scheme}://app:{password}@db/a/b"
            yield f"{scheme}://app:{password}@db/billing?no_such_option=1"
            yield f"{scheme}://app:{password}@db/billing?password_env=PW"
            yield f"{scheme}://app:{password}@db/billing?pool_size=1&pool_size=2"
            yield f"{scheme}://app:{password}@db/billing?ssl_mode=REQUIRED&ssl_ca=/ca.pem"
            yield f"{scheme}://app:{password}@db/billing?x#y"
            yield f"{scheme}://app:{password}@db/billing?a=b@c"
            yield f"{scheme}://app:{password}@db/billing?pool_size=0"
            yield f"{scheme.upper()}X://app:{password}@db/billing"
        yield f"{scheme}://app@db/billing?{MARKER}"  # a bare secret as the query
        yield f"{scheme}://app@db/billing?{MARKER}=1"  # a secret as an option name
    yield f"sqlite://app:{MARKER}@/x.db"
    yield f"sqlite:///x.db?pool_size={MARKER}"
    yield f"sqlite:///x.db?synchronous={MARKER}"
    yield f"postgres://app:{MARKER}@db/billing"
    yield f"app:{MARKER}@db/billing"


def _collect(action: Callable[[], object], texts: list[str]) -> None:
    try:
        outcome = action()
    except Exception as exc:  # every failure's text is scanned
        texts.extend(_texts_of(exc))
    else:
        texts += [repr(outcome), str(outcome)]
        if attrs.has(type(outcome)):
            texts.append(repr(attrs.asdict(outcome)))


def test_the_sweep_finds_a_planted_marker() -> None:
    """The scan itself works: the marker in plain or percent-encoded form is found."""
    assert _leaks([f"user:{quote(MARKER, safe='')}@", f"pw={MARKER}"]) == [
        f"user:{quote(MARKER, safe='')}@",
        f"pw={MARKER}",
    ]
    assert not _leaks(["user:***@db"])


def test_no_url_parse_shows_the_marker(caplog: pytest.LogCaptureFixture) -> None:
    """Parsing every marked URL: no error text, repr, str, asdict or log record shows it."""
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    urls = list(_url_texts())
    assert len(urls) > 60
    for text in urls:
        _collect(lambda text=text: ConnectionURL.parse(text), texts)  # type: ignore[misc]
    texts += [logging.Formatter().format(record) for record in caplog.records]
    assert not _leaks(texts)


def test_a_valid_url_never_shows_its_password(caplog: pytest.LogCaptureFixture) -> None:
    """A usable URL with the marker as password: repr, str, asdict, provider, failed connect."""
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    for scheme in SCHEMES:
        url = ConnectionURL.parse(f"{scheme}://app:{quote(MARKER, safe='')}@127.0.0.1:9/b")
        assert url.resolve_password() == MARKER
        texts += [repr(url), str(url), repr(attrs.asdict(url)), str(attrs.asdict(url))]
        texts += [repr(attrs.astuple(url)), repr(url.password), str(url.password)]
        _collect(lambda url=url: attrs.evolve(url, pool_size=0), texts)  # type: ignore[misc]
        real = PooledProvider({"s": url})
        texts.append(repr(real))

        def connect(real: PooledProvider = real) -> None:
            with real.connection("s"):
                pass

        _collect(connect, texts)  # port 9: refused
        real.close()
    texts += [logging.Formatter().format(record) for record in caplog.records]
    texts += [repr(record.args) for record in caplog.records]
    assert not _leaks(texts)


def _toml_files() -> Iterator[str]:
    """Configuration files with the marked URL in wrong types and wrong places."""
    url = f"mysql+pymysql://app:{quote(MARKER, safe='')}@db/billing"
    bad = f"mysql+pymysql://app:{MARKER}/billing"
    yield f'[shards]\ns0 = ["{url}"]\n'
    yield f'[shards]\ns0 = {{ url = "{url}" }}\n'
    yield f'[shards]\ns0 = "{url}"\n'  # a password in the file: refused
    yield f'[shards]\ns0 = "{bad}"\n'
    yield f'[shards]\ns0 = "sqlite:///s0.db"\n[replicas]\ns0 = "{url}"\n'
    yield f'[shards]\ns0 = "sqlite:///s0.db"\n[replicas]\ns0 = [["{url}"]]\n'
    yield f'[shards]\ns0 = "sqlite:///s0.db"\n[replicas]\ns0 = ["{bad}"]\n'
    yield f'[shards]\ns0 = "sqlite:///s0.db"\n[weights]\ns0 = "{url}"\n'
    yield f'[shards]\ns0 = "sqlite:///s0.db"\n[map_store]\nkind = "sql"\nurl = ["{url}"]\n'
    yield f'[shards]\ns0 = "sqlite:///s0.db"\n[map_store]\nkind = "sql"\nurl = "{url}"\n'
    yield f'[shards]\ns0 = "sqlite:///s0.db"\n[map_store]\nkind = "{url}"\n'
    yield f'[shards]\ns0 = "sqlite:///s0.db"\n[writer]\nbatch_size = "{url}"\n'
    yield f'[shards]\ns0 = "sqlite:///s0.db"\nslots = ["{url}"]\n'
    yield f'[shards]\n"{url}" = "sqlite:///s0.db"\n'
    yield f'[shards]\ns0 = "sqlite:///s0.db"\n[rules]\nimport = "{url}"\n'
    yield f'[shards]\ns0 = "sqlite:///s0.db"\n[rules]\nnames = ["{url}"]\n'
    yield f'[shards]\ns0 = "sqlite:///s0.db"\n"{url}" = 1\n'
    yield f'[shards]\ns0 = "{url}\n'  # not TOML: an unterminated string


def test_no_configuration_error_shows_the_marker(tmp_path: Path) -> None:
    """Every marked configuration file is refused, and no error text shows the marker."""
    texts: list[str] = []
    refused = 0
    for index, text in enumerate(_toml_files()):
        file = tmp_path / f"c{index}.toml"
        file.write_text(text)
        try:
            Config.load(file)
        except Exception as exc:  # every failure's text is scanned
            refused += 1
            texts.extend(_texts_of(exc))
    assert refused == len(list(_toml_files()))
    assert not _leaks(texts)


def test_no_command_line_output_shows_the_marker(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """demo --mysql and init/ingest --config with marked input: stdout/stderr (text, --json)."""
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.DEBUG)
    runs: list[list[str]] = []
    for url in _url_texts():
        runs.append(["demo", "--mysql", url, "--events", "10"])
    for index, text in enumerate(_toml_files()):
        file = tmp_path / f"c{index}.toml"
        file.write_text(text)
        runs.append(["init", "--config", str(file)])
        runs.append(["map", "show", "--config", str(file)])
    events = tmp_path / "events.jsonl"
    events.write_text("{}\n")
    runs.append(["ingest", str(events), "--config", str(tmp_path / "c0.toml")])
    texts: list[str] = []
    codes = []
    for argv in runs:
        for json_flag in ([], ["--json"]):
            codes.append(main([*argv, *json_flag]))
            out, err = capsys.readouterr()
            texts += [out, err]
    texts += [logging.Formatter().format(record) for record in caplog.records]
    assert all(code != 0 for code in codes)
    assert not _leaks(texts)
