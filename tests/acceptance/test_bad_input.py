"""Bad input (exit 2) and failed pre-flight checks (exit 1): one line on stderr, nothing written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import ferry
from tests.helpers import fingerprint, make_numbers_table, spec_file

pytestmark = pytest.mark.usefixtures("ledger_ready")

CASES = {
    "unknown_table": 'Backfill(table="nope", key="id", writes=["score"], sql={"score": "1"})',
    "unknown_key": 'Backfill(table="victim", key="nokey", writes=["score"], sql={"score": "1"})',
    "missing_write": 'Backfill(table="victim", key="id", writes=["ghost"], sql={"ghost": "1"})',
    "missing_read": 'Backfill(table="victim", key="id", reads=["ghost"], writes=["score"], '
    'sql={"score": "1"})',
    "type_mismatch": 'Backfill(table="victim", key="id", writes=["score"], sql={"score": "now()"})',
    "bad_expression": 'Backfill(table="victim", key="id", writes=["score"], '
    'sql={"score": "no_such_fn(a)"})',
    "non_unique_key": 'Backfill(table="victim", key="a", writes=["score"], sql={"score": "1"})',
}

# Pre-migration validation on a sample of real rows: a check failed, exit 1, nothing written.
SAMPLE_CASES = {
    "sample_cannot_hold": 'Backfill(table="victim", key="id", writes=["score"], '
    'sql={"score": "a * 10000000"})',
    "sample_fail_rule": 'Backfill(table="victim", key="id", writes=["score"], sql={"score": "a"},'
    ' rules=[ValidationRule(field="score", type="range", condition="0..1000", action="fail")])',
    "sample_constraint": 'Backfill(table="victim", key="id", writes=["note"], '
    'sql={"note": "NULL"})',
}


@pytest.fixture
def victim(db: psycopg.Connection[Any]) -> str:
    make_numbers_table(db, "victim", 1_000)
    db.execute("UPDATE victim SET a = 2147483 WHERE id = 5")
    db.execute("ALTER TABLE victim ALTER note SET NOT NULL")
    return fingerprint(db, "victim")


def _state(db: psycopg.Connection[Any]) -> tuple[Any, ...]:
    runs = db.execute("SELECT count(*) FROM ferry.runs").fetchone()
    tables = db.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'ferry'").fetchone()
    return (runs, tables, fingerprint(db, "victim"))


@pytest.mark.parametrize("case", sorted(CASES) + sorted(SAMPLE_CASES))
def test_bad_spec_exits_and_changes_nothing(
    case: str, victim: str, db: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    path = spec_file(tmp_path, f"b = {CASES.get(case) or SAMPLE_CASES[case]}\n")
    before = _state(db)
    code = 2 if case in CASES else 1
    for verb in ("plan", "launch"):
        proc = ferry(verb, f"{path}:b", env=env)
        assert proc.returncode == code, (verb, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ferry: error:"), proc.stderr
        assert "2147483" not in proc.stderr
    assert _state(db) == before


@pytest.mark.parametrize(
    ("ref", "needle"),
    [
        ("no_such_module:thing", "cannot import"),
        ("tests.helpers:no_such_attr", "no attribute"),
        ("tests.helpers:fingerprint", "not a Backfill"),
        ("missing/file.py:b", "no such file"),
        ("not-a-reference", "must look like"),
    ],
)
def test_bad_reference_exits_2(
    ref: str, needle: str, victim: str, db: psycopg.Connection[Any], env: dict[str, str]
) -> None:
    before = _state(db)
    proc = ferry("launch", ref, env=env)
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
    assert _state(db) == before


@pytest.mark.parametrize(
    "table", ["victim; DROP TABLE victim", 'victim"', "a.b.c", "1abc", "victim--"]
)
def test_identifiers_are_refused(
    table: str, victim: str, db: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    path = spec_file(
        tmp_path,
        f"b = Backfill(table={table!r}, key='id', writes=['score'], sql={{'score': '1'}})\n",
    )
    before = _state(db)
    proc = ferry("launch", f"{path}:b", env=env)
    assert proc.returncode == 2 and ("identifier" in proc.stderr or "dots" in proc.stderr)
    assert _state(db) == before


def test_password_never_printed(env: dict[str, str]) -> None:
    bad = {**env, "FERRY_DATABASE_URL": "postgresql://postgres:s3cretPW@127.0.0.1:1/none"}
    proc = ferry("status", "1", env=bad)
    assert proc.returncode == 1
    assert "s3cretPW" not in proc.stderr + proc.stdout
    assert proc.stderr.startswith("ferry: error:")


def test_unknown_run_exits_2(env: dict[str, str]) -> None:
    proc = ferry("status", "999999", env=env)
    assert proc.returncode == 2 and "no run 999999" in proc.stderr


def test_plan_reports_capacity(
    victim: str, db: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    import json

    path = spec_file(
        tmp_path,
        'b = Backfill(table="victim", key="id", writes=["score"], '
        'sql={"score": "b"}, chunk_size=100)\n',
    )
    proc = ferry("plan", f"{path}:b", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["chunks"] == 10 and plan["rows"] == 1000
    assert plan["disk_needed_bytes"] > 0 and plan["estimated_seconds"] >= 0
    assert plan["disk_free_bytes"] > plan["disk_needed_bytes"] and plan["fits"] is True
    assert plan["sample_would_write"] > 0


@pytest.mark.parametrize(
    ("variable", "url"),
    [
        ("FERRY_DATABASE_URL", "postgresql://u:s3cretPW@127.0.0.1:notaport/db"),
        ("FERRY_DATABASE_URL", "postgresql://postgres:s3cretPW@[::1/test"),
        ("FERRY_REDIS_URL", "redis://:s3cretPW@127.0.0.1:notaport/0"),
        ("FERRY_REDIS_URL", "redis://:s3cretPW@[::1/0"),
        ("FERRY_REDIS_URL", "http://127.0.0.1:6379/0"),
    ],
)
def test_malformed_urls_exit_2_in_one_line(
    variable: str,
    url: str,
    victim: str,
    db: psycopg.Connection[Any],
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    path = spec_file(
        tmp_path,
        'b = Backfill(table="victim", key="id", writes=["score"], '
        'sql={"score": "b"}, chunk_size=100)\n',
    )
    before = _state(db)
    for args in (("status", "1"), ("launch", f"{path}:b")):
        proc = ferry(*args, env={**env, variable: url})
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"ferry: error: {variable}"), proc.stderr
        assert "s3cretPW" not in proc.stderr + proc.stdout
    assert _state(db) == before


def test_names_in_connection_and_catalog_errors_are_not_masked(
    victim: str, env: dict[str, str], database_url: str, tmp_path: Path
) -> None:
    """Which host, database or table is wrong is what the user must read: identifiers are not
    row values, and masking them left `database "***" does not exist`."""
    gone = database_url.rsplit("/", 1)[0] + "/ferry_no_such_db"
    proc = ferry("status", "1", env={**env, "FERRY_DATABASE_URL": gone})
    assert proc.returncode == 1
    assert 'database "ferry_no_such_db" does not exist' in proc.stderr, proc.stderr
    assert 'server at "127.0.0.1"' in proc.stderr, proc.stderr


VOLATILE = {
    "brin": ("where", "brin_summarize_new_values('victim_pkey') > 0"),
    "gin": ("where", "gin_clean_pending_list('victim_pkey') >= 0"),
    "cron": ("where", "cron.schedule('x', '* * * * *', 'DROP TABLE victim') > 0"),
    "user_fn": ("where", "public.leaky(a)"),
    "user_op": ("where", "a #+# 1 > 0"),
    "sql_nextval": ("sql", "nextval('victim_seq')::integer"),
    "sql_user_fn": ("sql", "public.leaky(a)::integer"),
    "rule_fn": ("rule", "public.leaky(score)"),
}


@pytest.fixture
def volatile(db: psycopg.Connection[Any]) -> None:
    db.execute("CREATE SCHEMA IF NOT EXISTS cron")
    db.execute(
        "CREATE OR REPLACE FUNCTION cron.schedule(text, text, text) RETURNS bigint "
        "LANGUAGE sql AS 'SELECT 1::bigint'"
    )
    db.execute(
        "CREATE OR REPLACE FUNCTION public.leaky(v integer) RETURNS boolean LANGUAGE plpgsql "
        "AS $$ BEGIN CREATE TABLE IF NOT EXISTS public.leaked AS SELECT v; RETURN true; END $$"
    )
    db.execute(
        "CREATE OR REPLACE FUNCTION public.plus3(a integer, b integer) RETURNS integer "
        "LANGUAGE sql AS 'SELECT a + b'"
    )
    db.execute("DROP OPERATOR IF EXISTS #+# (integer, integer)")
    db.execute("CREATE OPERATOR #+# (LEFTARG = integer, RIGHTARG = integer, FUNCTION = plus3)")
    db.execute("CREATE SEQUENCE IF NOT EXISTS victim_seq")


@pytest.mark.parametrize("case", sorted(VOLATILE))
def test_volatile_functions_need_to_be_named(
    case: str,
    victim: str,
    volatile: None,
    db: psycopg.Connection[Any],
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    """An allow-list by the catalog: only functions that are not volatile, the four
    built-ins a backfill needs, and what the Backfill names in allow_functions."""
    where, text = VOLATILE[case]
    head = 'Backfill(table="victim", key="id", writes=["score"], '
    spec = {
        "where": head + f'sql={{"score": "b"}}, where={text!r}ALLOW)',
        "sql": head + f'sql={{"score": {text!r}}}ALLOW)',
        "rule": head + 'sql={"score": "b"}, '
        f'rules=[ValidationRule(field="score", type="custom", condition={text!r})]ALLOW)',
    }[where]
    name = {"user_op": "#+#", "sql_nextval": "nextval", "cron": "cron.schedule"}.get(
        case, "public.leaky" if "leaky" in text else text.split("(")[0]
    )
    refused = spec_file(tmp_path, f"b = {spec.replace('ALLOW', '')}\n", "refused.py")
    before = _state(db)
    for verb in ("plan", "launch"):
        proc = ferry(verb, f"{refused}:b", env=env)
        assert proc.returncode == 2, (verb, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "which is volatile" in lines[0], proc.stderr
        assert "allow_functions" in lines[0]
    assert _state(db) == before
    assert db.execute("SELECT to_regclass('public.leaked')").fetchone() == (None,)
    allowed = spec_file(
        tmp_path, f"b = {spec.replace('ALLOW', f', allow_functions=[{name!r}]')}\n", "allowed.py"
    )
    proc = ferry("plan", f"{allowed}:b", env=env)
    assert "which is volatile" not in proc.stderr, proc.stderr


def test_stable_and_allowed_functions_pass(
    victim: str, volatile: None, env: dict[str, str], tmp_path: Path
) -> None:
    path = spec_file(
        tmp_path,
        'b = Backfill(table="victim", key="id", writes=["score"], '
        'sql={"score": "(a + 1 + (random() * 0)::integer + length(gen_random_uuid()::text) * 0)"},'
        " where=\"a >= 0 AND clock_timestamp() > now() - interval '1 day' AND "
        "lower('X') = 'x' AND a = ANY(ARRAY[a])\")\n",
    )
    proc = ferry("plan", f"{path}:b", env=env)
    assert proc.returncode == 0, proc.stderr
