"""Migration files: the plan's structure, statement splitting and classification (no services)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from migrations.errors import BadInput
from migrations.schema import Category, Phase, load_directory, parse_migration
from migrations.schema.source import checksum

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "migrations" / "20240315_add_patient_vitals.sql"
PLAN = Path("/work/shared/data-migration-plan.md")


def _parse(text: str, name: str = "20240101_test.sql") -> object:
    return parse_migration(Path(name), text)


def test_the_plans_example_ships_verbatim() -> None:
    if not PLAN.exists():
        pytest.skip("the plan document is not on this machine")
    block = re.search(
        r"### 4\.1 Migration Script Structure\n```sql\n(.*?)```", PLAN.read_text(), re.S
    )
    assert block is not None
    assert EXAMPLE.read_text() == block.group(1)


def test_the_plans_example_parses_into_its_sections() -> None:
    m = parse_migration(EXAMPLE)
    assert (m.version, m.name) == (20240315, "20240315_add_patient_vitals")
    assert m.description == "Add vital signs tracking capability"
    assert [s.line for s in m.preconditions] == [6]
    assert "exists_table('vital_signs')" in m.preconditions[0].sql
    assert [(s.line, s.category) for s in m.forward] == [(15, Category.ADDITIVE)]
    assert m.forward[0].sql.startswith("create table vital_signs (")
    assert m.rollback is not None
    assert [(s.sql, s.line, s.phase) for s in m.rollback] == [
        ("drop table if exists vital_signs", 27, Phase.ROLLBACK)
    ]
    assert m.transactional and m.category is Category.ADDITIVE


def test_no_rollback_section_and_no_metadata() -> None:
    m = parse_migration(Path("7_plain.sql"), "create table t (a int);\n")
    assert m.rollback is None and m.description == "" and m.version == 7
    assert m.preconditions == ()


def test_a_do_block_after_a_forward_statement_is_a_forward_step() -> None:
    m = parse_migration(
        Path("1_x.sql"),
        "set lock_timeout = '1s';\ndo $$ begin perform 1; end $$;\n"
        "create table t (a int);\ndo $$ begin perform 2; end $$;\n",
    )
    assert [s.line for s in m.preconditions] == [2]
    assert [s.line for s in m.forward] == [1, 3, 4]
    assert m.forward[2].category is Category.TRANSFORMATIVE


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("comment on migration '2_other' is 'x';\nselect 1;", "names '2_other'"),
        ("select 1;\n-- Rollback script\ndrop table t;\n", "only commented-out statements"),
        ("begin;\ncreate table t (a int);\ncommit;\n", "line 1: BEGIN/COMMIT"),
        ("select 1;\n\ncreate tabel t (a int);\n", "line 3"),
        ("select 1;\n-- Rollback script\n-- drop tabel t;\n", "line 3"),
    ],
)
def test_malformed_files_are_refused_with_file_and_line(text: str, message: str) -> None:
    with pytest.raises(BadInput, match=re.escape(message)):
        parse_migration(Path("1_x.sql"), text)


def test_file_names_need_a_leading_version() -> None:
    with pytest.raises(BadInput, match="VERSION_name.sql"):
        parse_migration(Path("add_things.sql"), "select 1")


@pytest.mark.parametrize(
    ("sql", "category", "alone"),
    [
        ("create table t (a int)", Category.ADDITIVE, False),
        ("alter table t add column b int", Category.ADDITIVE, False),
        ("create index concurrently i on t (a)", Category.ADDITIVE, True),
        ("create index i on t (a)", Category.ADDITIVE, False),
        ("alter table t alter column a type bigint", Category.TRANSFORMATIVE, False),
        ("update t set a = 1", Category.TRANSFORMATIVE, False),
        ("create or replace view v as select 1", Category.TRANSFORMATIVE, False),
        ("alter table t drop column a", Category.DESTRUCTIVE, False),
        ("alter table t rename column a to b", Category.DESTRUCTIVE, False),
        ("drop index concurrently i", Category.DESTRUCTIVE, True),
        ("drop table t", Category.DESTRUCTIVE, False),
        ("truncate t", Category.DESTRUCTIVE, False),
        ("reindex index concurrently i", Category.TRANSFORMATIVE, True),
        ("vacuum t", Category.TRANSFORMATIVE, True),
        ("analyze t", Category.TRANSFORMATIVE, False),
        ("set lock_timeout = '2s'", Category.SESSION, False),
    ],
)
def test_classification_and_transaction_needs(sql: str, category: Category, alone: bool) -> None:
    m = parse_migration(Path("1_x.sql"), sql + ";")
    (statement,) = m.forward
    assert statement.category is category
    assert statement.own_transaction is alone
    assert m.transactional is not alone


def test_the_strongest_statement_types_the_file() -> None:
    m = parse_migration(Path("1_x.sql"), "create table t (a int);\nalter table u drop column b;")
    assert m.category is Category.DESTRUCTIVE


def test_checksum_ignores_line_endings_but_not_edits() -> None:
    text = EXAMPLE.read_text()
    assert checksum(text) == checksum(text.replace("\n", "\r\n"))
    assert checksum(text) != checksum(text.replace("numeric", "bigint"))


def test_folder_order_is_numeric_and_versions_are_unique(tmp_path: Path) -> None:
    (tmp_path / "10_b.sql").write_text("select 1;")
    (tmp_path / "9_a.sql").write_text("select 1;")
    (tmp_path / "README.md").write_text("not a migration")
    assert [m.version for m in load_directory(tmp_path)] == [9, 10]
    (tmp_path / "009_c.sql").write_text("select 1;")
    with pytest.raises(BadInput, match="share version 9"):
        load_directory(tmp_path)
    with pytest.raises(BadInput, match="does not exist"):
        load_directory(tmp_path / "missing")


def test_an_expand_names_its_backfill(tmp_path: Path) -> None:
    spec = tmp_path / "b.py"
    m = parse_migration(
        Path("3_expand.sql"), f"-- ferry:backfill {spec}:b\nalter table t add column c int;\n"
    )
    assert m.backfill == f"{spec}:b"
    assert parse_migration(
        Path("3_x.sql"), "-- ferry:backfill app.fills:b\nselect 1;"
    ).backfill == ("app.fills:b")
    with pytest.raises(BadInput, match="one '-- ferry:backfill REF' line"):
        parse_migration(Path("3_x.sql"), "-- ferry:backfill a:b\n-- ferry:backfill a:c\nselect 1;")
