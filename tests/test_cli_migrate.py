"""``shardbill migrate``: a configuration's new table and measure reach the live shards."""

from __future__ import annotations

from pathlib import Path

from tests.test_cli import _config, _events_file, one_json, run

CUSTOM = """
[aggregates]
tables = "billing"

[[aggregates.custom]]
name = "usage_by_product"
keys = [
  { name = "account_id", projection = "account" },
  { name = "product", projection = "product" },
]
measures = [{ name = "events", value = "count" }MORE]
"""


def test_migrate_adds_a_table_then_a_measure_and_ingest_follows(tmp_path: Path) -> None:
    """Dry run plans and changes nothing; migrate applies per shard; a re-run has nothing to do."""
    config = _config(tmp_path / "deploy")
    text = config.read_text(encoding="utf-8")
    assert run("init", "--config", str(config), cwd=tmp_path).returncode == 0
    _events_file(tmp_path / "day.jsonl")
    ingest = ("ingest", str(tmp_path / "day.jsonl"), "--config", str(config))
    assert run(*ingest, cwd=tmp_path).returncode == 1  # the file has bad lines

    config.write_text(text + CUSTOM.replace("MORE", ""), encoding="utf-8")
    refused = run(*ingest, cwd=tmp_path)
    assert refused.returncode == 2  # the writer refuses shards without the new table
    planned = one_json(run("migrate", "--dry-run", "--config", str(config), "--json", cwd=tmp_path))
    assert [s["text"] for s in planned["steps"]] == [  # type: ignore[attr-defined]
        f"s{i}: create table usage_by_product" for i in range(3)
    ]
    again = one_json(run("migrate", "--dry-run", "--config", str(config), "--json", cwd=tmp_path))
    assert again["steps"] == planned["steps"]  # the dry run changed nothing
    done = run("migrate", "--config", str(config), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "s0: create table usage_by_product" in done.stdout
    assert "all 3 shards match the configuration" in done.stdout

    config.write_text(
        text + CUSTOM.replace("MORE", ', { name = "quantity", value = "quantity" }'),
        encoding="utf-8",
    )
    measure = run("migrate", "--config", str(config), "--json", cwd=tmp_path)
    assert measure.returncode == 0, measure.stderr
    assert [s["column"] for s in one_json(measure)["steps"]] == ["quantity"] * 3  # type: ignore[attr-defined]
    nothing = run("migrate", "--config", str(config), cwd=tmp_path)
    assert "nothing to migrate" in nothing.stdout
    after = run(*ingest, cwd=tmp_path)
    assert after.returncode == 1, after.stderr  # runs again: the same bad lines, no error
    audited = run("audit", str(tmp_path / "day.jsonl"), "--config", str(config), cwd=tmp_path)
    assert "usage_by_product" in audited.stdout  # the new table is empty: its rows are missing


def test_migrate_adds_a_key_column_only_with_a_rule_for_existing_rows(tmp_path: Path) -> None:
    """A key column without `existing` exits 2 naming the fix; with it, the key grows per shard."""
    config = _config(tmp_path / "deploy")
    text = config.read_text(encoding="utf-8")
    config.write_text(text + CUSTOM.replace("MORE", ""), encoding="utf-8")
    assert run("init", "--config", str(config), cwd=tmp_path).returncode == 0
    _events_file(tmp_path / "day.jsonl")
    ingest = ("ingest", str(tmp_path / "day.jsonl"), "--config", str(config))
    assert run(*ingest, cwd=tmp_path).returncode == 1  # the file has bad lines; the rest lands

    channel = '  { name = "channel", projection = "dimension:channel", default = "--"EXISTING },\n]'
    keyed = CUSTOM.replace("MORE", "").replace(
        '  { name = "product", projection = "product" },\n]',
        '  { name = "product", projection = "product" },\n' + channel,
    )
    config.write_text(text + keyed.replace("EXISTING", ""), encoding="utf-8")
    refused = run("migrate", "--config", str(config), cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr
    assert "table 'usage_by_product' lacks key column 'channel'" in refused.stderr
    assert "existing=" in refused.stderr

    config.write_text(text + keyed.replace("EXISTING", ', existing = "(before)"'), encoding="utf-8")
    done = run("migrate", "--config", str(config), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    steps = one_json(done)["steps"]
    assert [(s["kind"], s["column"], s["existing"]) for s in steps] == [  # type: ignore[attr-defined]
        ("key", "channel", "(before)")
    ] * 3
    assert "nothing to migrate" in run("migrate", "--config", str(config), cwd=tmp_path).stdout
    after = run(*ingest, cwd=tmp_path)
    assert after.returncode == 1, after.stderr  # the writer accepts the migrated shards
