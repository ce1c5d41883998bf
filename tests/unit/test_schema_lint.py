"""The safety linter: each dangerous pattern is flagged, its safe rewrite passes (no services)."""

from __future__ import annotations

from pathlib import Path

import pytest

from migrations.schema import Finding, lint, parse_migration

TIMEOUT = "set lock_timeout = '2s';\n"


def _findings(text: str) -> list[Finding]:
    return lint(parse_migration(Path("20240101_case.sql"), text))


def _rules(text: str, level: str | None = None) -> set[str]:
    return {f.rule for f in _findings(text) if level is None or f.level == level}


# (rule, level, dangerous statement, its safe rewrite)
CASES = [
    (
        "index-not-concurrent",
        "error",
        "create index patients_dob on patients (dob);",
        "create index concurrently patients_dob on patients (dob);",
    ),
    (
        "column-type-rewrite",
        "error",
        "alter table patients alter column weight type numeric(6,2);",
        "alter table patients add column weight_kg numeric(6,2);",
    ),
    (
        "set-not-null",
        "error",
        "alter table patients alter column dob set not null;",
        "alter table patients add constraint dob_nn check (dob is not null) not valid;\n"
        "alter table patients validate constraint dob_nn;\n"
        "alter table patients alter column dob set not null;",
    ),
    (
        "constraint-not-valid",
        "error",
        "alter table visits add constraint visits_patient foreign key (patient_id) "
        "references patients (id);",
        "alter table visits add constraint visits_patient foreign key (patient_id) "
        "references patients (id) not valid;\n"
        "alter table visits validate constraint visits_patient;",
    ),
    (
        "constraint-not-valid",
        "error",
        "alter table patients add constraint weight_positive check (weight > 0);",
        "alter table patients add constraint weight_positive check (weight > 0) not valid;",
    ),
    (
        "volatile-default",
        "error",
        "alter table patients add column token uuid default gen_random_uuid();",
        "alter table patients add column token uuid;\n"
        "alter table patients alter column token set default gen_random_uuid();",
    ),
    (
        "volatile-default",
        "error",
        "alter table patients add column seq bigserial;",
        "alter table patients add column seq bigint;",
    ),
    (
        "drop-column",
        "warning",
        "alter table patients drop column weight_lb;",
        "alter table patients add column weight_kg numeric;",
    ),
    (
        "rename",
        "error",
        "alter table patients rename column dob to birth_date;",
        "alter table patients add column birth_date date;",
    ),
    (
        "unique-without-index",
        "error",
        "alter table patients add constraint patients_mrn unique (mrn);",
        "create unique index concurrently patients_mrn on patients (mrn);\n"
        "alter table patients add constraint patients_mrn unique using index patients_mrn;",
    ),
]


@pytest.mark.parametrize(("rule", "level", "bad", "safe"), CASES)
def test_each_case_is_flagged_and_its_rewrite_passes(
    rule: str, level: str, bad: str, safe: str
) -> None:
    found = [f for f in _findings(TIMEOUT + bad) if f.rule == rule]
    assert found, f"{rule} not flagged"
    assert found[0].level == level
    assert found[0].line == 2 and found[0].file == "20240101_case.sql"
    assert found[0].safe and found[0].statement
    assert rule not in _rules(TIMEOUT + safe)
    assert not _rules(TIMEOUT + safe, "error")


def test_missing_lock_timeout_is_an_error_before_an_access_exclusive_lock() -> None:
    bad = "alter table patients add column note text;"
    (finding,) = _findings(bad)
    assert (finding.rule, finding.level, finding.line) == ("missing-lock-timeout", "error", 1)
    assert "lock_timeout" in finding.safe
    assert _findings(TIMEOUT + bad) == []
    # SET after the statement does not protect it
    assert _rules(bad + "\n" + TIMEOUT) == {"missing-lock-timeout"}


def test_a_foreign_key_in_a_new_table_only_warns_about_the_lock_timeout() -> None:
    text = "create table visits (id int primary key, patient_id int references patients (id));"
    assert [(f.rule, f.level) for f in _findings(text)] == [("missing-lock-timeout", "warning")]
    assert _findings(TIMEOUT + text) == []


def test_work_on_a_table_created_in_the_same_file_is_never_flagged() -> None:
    text = (
        "create table visits (id int, patient_id int, note text);\n"
        "create index visits_patient on visits (patient_id);\n"
        "alter table visits alter column note type varchar(20), alter column id set not null,"
        " add constraint v_fk foreign key (patient_id) references visits (id),"
        " add column token uuid default gen_random_uuid(), drop column note;\n"
        "alter table visits rename column patient_id to person_id;\n"
    )
    assert _findings(text) == []


def test_stable_and_unknown_defaults() -> None:
    assert _findings(TIMEOUT + "alter table p add column at timestamptz default now();") == []
    (finding,) = _findings(TIMEOUT + "alter table p add column x int default my_fn();")
    assert (finding.rule, finding.level) == ("volatile-default", "warning")


def test_type_change_to_unbounded_text_is_only_a_warning() -> None:
    (finding,) = _findings(TIMEOUT + "alter table p alter column name type text;")
    assert (finding.rule, finding.level) == ("column-type-rewrite", "warning")


def test_a_not_valid_check_alone_does_not_allow_set_not_null() -> None:
    text = (
        TIMEOUT + "alter table p add constraint c check (dob is not null) not valid;\n"
        "alter table p alter column dob set not null;"
    )
    assert [f.rule for f in _findings(text)] == ["set-not-null"]


def test_drop_index_without_concurrently_and_drop_table_warn() -> None:
    assert _rules(TIMEOUT + "drop index i;") == {"drop-index-not-concurrent"}
    assert _rules(TIMEOUT + "drop index concurrently i;") == set()
    assert _rules(TIMEOUT + "drop table t;") == {"drop-table"}


def test_the_plans_example_has_only_a_lock_timeout_warning() -> None:
    root = Path(__file__).resolve().parents[2] / "examples" / "migrations"
    example = lint(parse_migration(root / "20240315_add_patient_vitals.sql"))
    assert [(f.rule, f.level, f.line) for f in example] == [("missing-lock-timeout", "warning", 15)]
    assert lint(parse_migration(root / "20240320_index_vital_signs.sql")) == []
