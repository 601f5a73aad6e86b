"""The configuration file: every key parsed and validated, errors naming the file and the key."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest

from shardbill.config import Config, find_config
from shardbill.dialects.base import MergeKind
from shardbill.errors import ConfigurationError
from shardbill.resharding import JsonFileMapStore, SqlMapStore
from shardbill.rules import UsageEvent, comms
from shardbill.rules.comms import RULE_NAMES
from shardbill.tables.aggregates import Account, BigInt, Dimension, VarChar

FULL = """
slots = 256

[shards]
s0 = "mysql+pymysql://app@db0:3306/billing?password_env=SB_PW"
s1 = "sqlite:///data/s1.db"

[replicas]
s0 = ["mysql+pymysql://ro@db0r:3306/billing?password_env=SB_RO"]

[weights]
s1 = 3

[map_store]
kind = "json"
path = "maps/current.json"

[aggregates]
tables = "billing"
scale = 4
account_type = "varchar(40)"

[[aggregates.custom]]
name = "usage_by_channel"
keys = [
  { name = "acct", projection = "account" },
  { name = "channel", projection = "dimension:channel", default = "--", type = "varchar(16)" },
  { name = "month", projection = "month" },
]
measures = [
  { name = "amount", value = "amount" },
  { name = "largest", value = "amount", merge = "max", scale = 2 },
  { name = "events", value = "count" },
]

[rules]
names = ["comms.sms", "comms.voice"]

[writer]
max_workers = 3
batch_size = 500
retry_attempts = 4
ledger_retention_days = 60
max_rows_per_statement = 250
late_events = "adjust"
"""


def _load(text: str, tmp_path: Path, name: str = "shardbill.toml") -> Config:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return Config.load(path)


def test_a_full_file_gives_every_value(tmp_path: Path) -> None:
    """Every section of a complete file lands in the Config, relative paths next to the file."""
    config = _load(FULL, tmp_path)
    assert list(config.shards) == ["s0", "s1"]
    assert config.shards["s0"].host == "db0"
    assert config.shards["s0"].password_env == "SB_PW"
    assert config.shards["s1"].path == str(tmp_path / "data" / "s1.db")
    assert [u.host for u in config.replicas["s0"]] == ["db0r"]
    assert dict(config.weights) == {"s0": 1, "s1": 3}
    assert config.slots == 256
    assert config.map_store.kind == "json"
    assert config.map_store.path == tmp_path / "maps" / "current.json"
    assert config.account_type == VarChar(40)
    assert not config.account_as_int
    names = [t.name for t in config.tables]
    assert names == [
        "usage_daily",
        "usage_monthly",
        "usage_by_country",
        "account_balance",
        "usage_by_channel",
    ]
    daily = config.tables[0]
    assert daily.keys[0].type == VarChar(40)
    assert daily.measures[0].value.scale == 4
    custom = config.tables[-1]
    assert custom.keys[0].type == VarChar(40)  # an account key takes account_type
    assert custom.keys[1].projection == Dimension("channel", default="--")
    assert [m.merge for m in custom.measures] == [MergeKind.SUM, MergeKind.MAX, MergeKind.SUM]
    assert [m.value.scale for m in custom.measures] == [4, 2, 0]
    assert config.rules.names == ("comms.sms", "comms.voice")
    settings = config.writer.settings()
    assert settings.max_workers == 3
    assert settings.retry.max_attempts == 4
    assert settings.ledger_retention_days == 60
    assert settings.max_rows_per_statement == 250
    assert settings.late_events == "adjust"
    assert config.writer.batch_size == 500


def test_the_smallest_file_takes_the_defaults(tmp_path: Path) -> None:
    """Only [shards]: billing tables, BIGINT accounts, a JSON map next to the file, comms rules."""
    config = _load('[shards]\na = "sqlite:///a.db"\n', tmp_path)
    assert config.slots == 16384
    assert config.writer.settings().late_events == "refuse"
    assert config.account_as_int
    assert config.account_type == BigInt()
    assert [t.name for t in config.tables][:1] == ["usage_daily"]
    assert config.map_store.path == tmp_path / "shardmap.json"
    assert config.writer.batch_size == 2000
    initial = config.initial_map()
    assert dict(initial.shards) == {"a": 1}
    assert initial.epoch == 1


def test_the_initial_map_follows_the_weights(tmp_path: Path) -> None:
    """[weights] shape the first map; every listed shard is in it."""
    config = _load(FULL, tmp_path)
    initial = config.initial_map()
    assert dict(initial.shards) == {"s0": 1, "s1": 3}
    assert initial.slot_counts["s1"] == 192


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[shardz]\n", "shardz"),
        ("slots = 0\n[shards]\na = 'sqlite:///a.db'\n", "slots"),
        ("[shards]\n", "shards"),
        ("[shards]\na = 7\n", "shards.a"),
        ("[shards]\n'a b' = 'sqlite:///a.db'\n", "shards.a b"),
        ('[shards]\n"a\\n" = "sqlite:///a.db"\n', "shards.a\n"),
        ("[shards]\na = 'postgres://x/y'\n", "shards.a"),
        ("[shards]\na = 'sqlite:///a.db'\n[replicas]\nb = ['sqlite:///b.db']\n", "replicas.b"),
        ("[shards]\na = 'sqlite:///a.db'\n[weights]\na = 0\n", "weights.a"),
        ("[shards]\na = 'sqlite:///a.db'\n[map_store]\nkind = 'redis'\n", "map_store.kind"),
        ("[shards]\na = 'sqlite:///a.db'\n[map_store]\nkind = 'sql'\n", "map_store"),
        ("[shards]\na = 'sqlite:///a.db'\n[map_store]\nkind='sql'\nshard='z'\n", "map_store.shard"),
        ("[shards]\na = 'sqlite:///a.db'\n[map_store]\nkind='json'\nurl='x'\n", "map_store.url"),
        ("[shards]\na = 'sqlite:///a.db'\n[aggregates]\ntables = 'all'\n", "aggregates.tables"),
        ("[shards]\na = 'sqlite:///a.db'\n[aggregates]\nscale = 19\n", "aggregates.scale"),
        (
            "[shards]\na = 'sqlite:///a.db'\n[aggregates]\naccount_type = 'date'\n",
            "aggregates.account_type",
        ),
        (
            "[shards]\na = 'sqlite:///a.db'\n[aggregates]\naccount_type = 'text'\n",
            "aggregates.account_type",
        ),
        ("[shards]\na = 'sqlite:///a.db'\n[aggregates]\ntables = 'none'\n", "aggregates"),
        ("[shards]\na = 'sqlite:///a.db'\n[rules]\nnames = []\n", "rules.names"),
        ("[shards]\na = 'sqlite:///a.db'\n[rules]\nimport = 'no colon'\n", "rules.import"),
        (
            "[shards]\na = 'sqlite:///a.db'\n[rules]\nimport = 'a:b'\nnames = ['comms.sms']\n",
            "rules",
        ),
        ("[shards]\na = 'sqlite:///a.db'\n[writer]\nbatch_size = 0\n", "writer.batch_size"),
        ("[shards]\na = 'sqlite:///a.db'\n[writer]\nmax_workers = 'many'\n", "writer.max_workers"),
        ("[shards]\na = 'sqlite:///a.db'\n[writer]\nbatchsize = 10\n", "writer.batchsize"),
        ("[shards]\na = 'sqlite:///a.db'\n[writer]\nlate_events = 'book'\n", "writer.late_events"),
    ],
)
def test_an_error_names_the_file_and_the_key(tmp_path: Path, text: str, key: str) -> None:
    """Each wrong value is a ConfigurationError that starts with the file and the key."""
    with pytest.raises(ConfigurationError) as caught:
        _load(text, tmp_path, name="bad.toml")
    assert str(caught.value).startswith(f"{tmp_path / 'bad.toml'}: {key}:"), str(caught.value)


CUSTOM = """
[shards]
a = "sqlite:///a.db"
[aggregates]
tables = "none"
[[aggregates.custom]]
name = "t"
keys = [{{ name = "acct", projection = "account" }}, {key}]
measures = [{measure}]
"""


@pytest.mark.parametrize(
    ("key", "measure", "where"),
    [
        ("{ name = 'd', projection = 'day', type = 'bigint' }", "{ name = 'n', value = 'count' }",
         "aggregates.custom[0].keys[1].type"),
        ("{ name = 'd', projection = 'week' }", "{ name = 'n', value = 'count' }",
         "aggregates.custom[0].keys[1].projection"),
        ("{ name = 'd', projection = 'product', default = 'x' }",
         "{ name = 'n', value = 'count' }", "aggregates.custom[0].keys[1].projection"),
        ("{ name = 'd', projection = 'dimension:c', type = 'bigint', default = '--' }",
         "{ name = 'n', value = 'count' }", "aggregates.custom[0].keys[1].type"),
        ("{ name = 'sb_slot', projection = 'product' }", "{ name = 'n', value = 'count' }",
         "aggregates.custom[0].keys[1].name"),
        ("{ name = 'd', projection = 'product', colour = 1 }", "{ name = 'n', value = 'count' }",
         "aggregates.custom[0].keys[1].colour"),
        ("{ name = 'd', projection = 'product' }", "{ name = 'n', value = 'money' }",
         "aggregates.custom[0].measures[0].value"),
        ("{ name = 'd', projection = 'product' }", "{ name = 'n', value = 'count', scale = 2 }",
         "aggregates.custom[0].measures[0].scale"),
        ("{ name = 'd', projection = 'product' }",
         "{ name = 'n', value = 'amount', merge = 'avg' }",
         "aggregates.custom[0].measures[0].merge"),
        ("{ name = 'acct', projection = 'product' }", "{ name = 'n', value = 'count' }",
         "aggregates.custom[0]"),
        ("{ name = 'd', projection = 'product', existing = 5 }",
         "{ name = 'n', value = 'count' }", "aggregates.custom[0].keys[1].existing"),
        ("{ name = 'd', projection = 'day', existing = 'yesterday' }",
         "{ name = 'n', value = 'count' }", "aggregates.custom[0].keys[1].existing"),
    ],
)  # fmt: skip
def test_a_custom_table_error_names_its_key(
    tmp_path: Path, key: str, measure: str, where: str
) -> None:
    """Custom tables are checked column by column; the message points at the column."""
    with pytest.raises(ConfigurationError) as caught:
        _load(CUSTOM.format(key=key, measure=measure), tmp_path, name="c.toml")
    assert str(caught.value).startswith(f"{tmp_path / 'c.toml'}: {where}"), str(caught.value)


def test_a_key_column_states_the_value_existing_rows_get(tmp_path: Path) -> None:
    """``existing`` (for ``shardbill migrate``) is read with the column's type: text, a date."""
    key = "{ name = 'c', projection = 'dimension:c', default = '--', existing = 'unknown' }"
    config = _load(CUSTOM.format(key=key, measure="{ name = 'n', value = 'count' }"), tmp_path)
    (table,) = config.tables
    assert [k.existing for k in table.keys] == [None, "unknown"]
    key = "{ name = 'm', projection = 'month', existing = 2026-01-01 }"
    config = _load(CUSTOM.format(key=key, measure="{ name = 'n', value = 'count' }"), tmp_path)
    (table,) = config.tables
    assert table.keys[1].existing == dt.date(2026, 1, 1)


def test_a_custom_table_without_the_account_is_refused(tmp_path: Path) -> None:
    """Rows are sharded by account, so every table needs an account key column."""
    text = """
    [shards]
    a = "sqlite:///a.db"
    [[aggregates.custom]]
    name = "t"
    keys = [{ name = "p", projection = "product" }]
    measures = [{ name = "n", value = "count" }]
    """
    with pytest.raises(ConfigurationError, match=r"aggregates\.custom\[0\]\.keys: needs a key"):
        _load(text, tmp_path)


def test_a_custom_table_named_like_a_standard_one_is_refused(tmp_path: Path) -> None:
    """Two tables of one name cannot both be written."""
    text = """
    [shards]
    a = "sqlite:///a.db"
    [[aggregates.custom]]
    name = "usage_daily"
    keys = [{ name = "a", projection = "account" }]
    measures = [{ name = "n", value = "count" }]
    """
    with pytest.raises(ConfigurationError, match=r"custom\[0\]\.name: table 'usage_daily'"):
        _load(text, tmp_path)


def test_a_password_in_a_url_is_refused_and_never_shown(tmp_path: Path) -> None:
    """The file must not hold a password; the error says how to move it, without showing it."""
    text = '[shards]\na = "mysql+pymysql://app:hunter2@db:3306/x"\n'
    with pytest.raises(ConfigurationError) as caught:
        _load(text, tmp_path)
    message = str(caught.value)
    assert "shards.a" in message
    assert "password_env" in message
    assert "hunter2" not in message


def test_a_file_that_is_not_toml_names_the_file(tmp_path: Path) -> None:
    """A syntax error is reported with the file name."""
    with pytest.raises(ConfigurationError, match=r"x\.toml: not valid TOML"):
        _load("[shards\n", tmp_path, name="x.toml")


def test_a_missing_file_is_a_configuration_error(tmp_path: Path) -> None:
    """Loading a file that is not there says which and how to give one."""
    with pytest.raises(ConfigurationError, match="cannot read the configuration file"):
        Config.load(tmp_path / "nope.toml")


def test_find_config_prefers_the_option_then_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--config wins, then SHARDBILL_CONFIG, then ./shardbill.toml; a missing one is an error."""
    explicit, from_env = tmp_path / "a.toml", tmp_path / "b.toml"
    explicit.write_text("", encoding="utf-8")
    from_env.write_text("", encoding="utf-8")
    monkeypatch.setenv("SHARDBILL_CONFIG", str(from_env))
    assert find_config(str(explicit)) == explicit
    assert find_config(None) == from_env
    monkeypatch.delenv("SHARDBILL_CONFIG")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError, match=r"shardbill\.toml: no such configuration file"):
        find_config(None)
    (tmp_path / "shardbill.toml").write_text("", encoding="utf-8")
    assert find_config(None) == Path("shardbill.toml")


def _event() -> UsageEvent:
    import datetime as dt

    return UsageEvent(
        event_id="e-1",
        account=7,
        time=dt.datetime(2026, 1, 5, tzinfo=dt.UTC),
        product="sms",
        quantity=1,
        dimensions={"country": "GB", "characters": 200},
    )


def test_rules_default_to_the_comms_example(tmp_path: Path) -> None:
    """Without [rules] the engine is the comms example: same prices as comms.engine()."""
    config = _load('[shards]\na = "sqlite:///a.db"\n', tmp_path)
    engine = config.engine()
    assert [r.name for r in engine.rules] == list(RULE_NAMES)
    assert engine.price(_event()).charges == comms.engine().price(_event()).charges


def test_rules_by_entry_point_names_and_a_price_book(tmp_path: Path) -> None:
    """names = [...] builds the chain from entry points; price_book replaces the prices."""
    book = tmp_path / "prices.toml"
    original = comms.price_book()
    source = Path(comms.__file__).parent / "data" / "comms.toml"
    book.write_text(source.read_text(encoding="utf-8").replace("0.0463", "0.5"), encoding="utf-8")
    config = _load(
        '[shards]\na = "sqlite:///a.db"\n[rules]\nnames = ["comms.sms"]\n'
        'price_book = "prices.toml"\n',
        tmp_path,
    )
    engine = config.engine()
    assert [r.name for r in engine.rules] == ["comms.sms"]
    (charge,) = engine.price(_event()).charges
    assert charge.amount == Decimal("1.0")  # 2 segments at the changed 0.5
    assert engine.price_book != original


def test_rules_by_import_of_a_factory(tmp_path: Path) -> None:
    """import = 'module:attribute' calls a factory (or takes an engine) from any module."""
    config = _load(
        '[shards]\na = "sqlite:///a.db"\n[rules]\nimport = "shardbill.rules.comms:engine"\n',
        tmp_path,
    )
    assert config.engine().price(_event()).charges == comms.engine().price(_event()).charges


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ('names = ["no.such.rule"]', "no.such.rule"),
        ('import = "no_such_module_x:engine"', "cannot import"),
        ('import = "shardbill.rules.comms:RULE_NAMES"', "not a RulesEngine"),
        ('import = "json:loads"', "raised TypeError"),
        ('price_book = "missing.toml"', "missing.toml"),
    ],
)
def test_a_rules_error_names_the_file_and_rules(tmp_path: Path, rules: str, message: str) -> None:
    """Building the engine fails with the file name, the rules key and what went wrong."""
    config = _load(f'[shards]\na = "sqlite:///a.db"\n[rules]\n{rules}\n', tmp_path)
    with pytest.raises(ConfigurationError) as caught:
        config.engine()
    assert str(caught.value).startswith(f"{tmp_path / 'shardbill.toml'}: rules:")
    assert message in str(caught.value)


def test_open_gives_a_provider_and_a_json_map_store(tmp_path: Path) -> None:
    """open() connects the shards' provider and the map store the file names."""
    config = _load('[shards]\na = "sqlite:///a.db"\nb = "sqlite:///b.db"\n', tmp_path)
    with config.open() as opened:
        assert opened.provider.shards == ("a", "b")
        assert isinstance(opened.map_store, JsonFileMapStore)
        opened.map_store.publish(config.initial_map(), expected_epoch=None)
    assert (tmp_path / "shardmap.json").is_file()


def test_a_sql_map_store_on_a_shard_or_a_control_url(tmp_path: Path) -> None:
    """kind = 'sql' keeps the map in a table on a shard, or in a control database."""
    for section in ('shard = "a"', 'url = "sqlite:///control.db"\ntable = "maps"'):
        config = _load(
            f'[shards]\na = "sqlite:///a.db"\n[map_store]\nkind = "sql"\n{section}\n', tmp_path
        )
        with config.open() as opened:
            store = opened.map_store
            assert isinstance(store, SqlMapStore)
            store.ensure_schema()
            store.publish(config.initial_map(), expected_epoch=None)
            assert store.load() == config.initial_map()
    assert (tmp_path / "control.db").is_file()


def test_dimension_defaults_must_fit_the_column(tmp_path: Path) -> None:
    """An integer dimension column takes an integer default."""
    text = CUSTOM.format(
        key="{ name = 'c', projection = 'dimension:code', type = 'bigint', default = 0 }",
        measure="{ name = 'n', value = 'count' }",
    )
    table = _load(text, tmp_path).tables[0]
    assert table.keys[0].projection == Account()
    assert table.keys[1].projection == Dimension("code", default=0)
    assert table.keys[1].type == BigInt()


def test_the_command_line_exits_2_naming_the_key(tmp_path: Path) -> None:
    """A bad file makes every command exit 2 with the file and the key on stderr."""
    bad = tmp_path / "bad.toml"
    bad.write_text('[shards]\na = "sqlite:///a.db"\n[writer]\nbatch_size = -1\n', encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "shardbill", "map", "show", "--config", str(bad)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 2
    assert "bad.toml: writer.batch_size: must be an integer" in result.stderr
    assert result.stdout == ""
