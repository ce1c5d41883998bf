"""Expand, backfill, verify, contract as one versioned workflow, and undone in one command.

Real PostgreSQL, the real ``ferry`` CLI and real Celery workers: ``ferry schema up``
launches a Python backfill step, follows and verifies its run before completing the
version; ``ferry schema down --to 0`` rolls the runs back (pre-images) before undoing
each expand, leaving the catalog and the table data exactly as they started.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import psycopg
import pytest

from migrations.errors import BadInput
from migrations.schema import Category, SchemaRunner, load_directory
from tests.conftest import ROOT, WorkerPool, ferry
from tests.helpers import fingerprint, launch, spec_file, wait_run

EXAMPLES = ROOT / "examples" / "migrations"
TIMEOUT = "set lock_timeout = '5s';\n"


@pytest.fixture
def conn(db: psycopg.Connection[Any], ledger_ready: None) -> psycopg.Connection[Any]:
    """The session database with an empty schema_versions (each test has its own versions)."""
    db.execute("DELETE FROM ferry.schema_versions")
    return db


def catalog(database_url: str) -> str:
    """The user's schema as pg_dump prints it (per-run \\restrict keys and the ledger left out)."""
    out = subprocess.run(
        [
            "pg_dump",
            "--schema-only",
            "--no-owner",
            "--no-privileges",
            "--exclude-schema=ferry",
            database_url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return "\n".join(
        line for line in out.splitlines() if not line.startswith(("\\restrict", "\\unrestrict"))
    )


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def statuses(conn: psycopg.Connection[Any]) -> dict[int, str]:
    rows = conn.execute("SELECT version, status FROM ferry.schema_versions").fetchall()
    return {r[0]: r[1] for r in rows}


def version_row(conn: psycopg.Connection[Any], version: int) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT status, run_id, error FROM ferry.schema_versions WHERE version = %s", (version,)
    ).fetchone()
    assert row is not None
    return tuple(row)


def runs_of(conn: psycopg.Connection[Any], backfill: str) -> list[tuple[int, str]]:
    rows = conn.execute(
        "SELECT id, status FROM ferry.runs WHERE backfill = %s ORDER BY id", (backfill,)
    ).fetchall()
    return [(int(r[0]), str(r[1])) for r in rows]


def weight_change(folder: Path, table: str, rules: str = "", contract: str | None = None) -> str:
    """Expand (SQL, examples style) + Python backfill step + contract (SQL); returns the ref."""
    write(
        folder,
        "1_expand_weight_kg.sql",
        f"""\
        comment on migration '1_expand_weight_kg' is 'Expand: weight in kilograms';
        {TIMEOUT}
        -- Validation pre-conditions
        do $$
        begin
          if exists_column('{table}', 'weight_kg') then
            raise exception 'Column weight_kg already exists';
          end if;
        end $$;

        -- Forward migration
        alter table {table} add column weight_kg numeric;

        -- Rollback script
        -- alter table {table} drop column weight_kg;
        """,
    )
    step = write(
        folder,
        "2_backfill_weight_kg.py",
        f"""\
        from migrations import Backfill, ValidationRule

        description = "Backfill: pounds to kilograms"

        backfill = Backfill(
            table="{table}",
            key="id",
            reads=["weight_lb"],
            writes=["weight_kg"],
            sql={{"weight_kg": "round(weight_lb * 0.45359237, 2)"}},
            rules=[{rules}],
            chunk_size=500,
        )
        """,
    )
    write(
        folder,
        "3_contract_weight_kg.sql",
        contract
        or f"""\
        {TIMEOUT}
        alter table {table} add constraint {table}_kg_nn check (weight_kg is not null) not valid;
        alter table {table} validate constraint {table}_kg_nn;
        -- Rollback script
        -- alter table {table} drop constraint {table}_kg_nn;
        """,
    )
    return f"{step.resolve()}:backfill"


def make_table(
    conn: psycopg.Connection[Any], table: str, rows: int, where_negative: int = 0
) -> None:
    """``rows`` patients; every ``where_negative``-th one has an impossible (negative) weight."""
    conn.execute(f"DROP TABLE IF EXISTS {table}")
    conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, weight_lb numeric NOT NULL)")
    sign = f"CASE WHEN g %% {where_negative} = 0 THEN -1 ELSE 1 END" if where_negative else "1"
    conn.execute(
        f"INSERT INTO {table} SELECT g, {sign} * (100 + g %% 150) FROM generate_series(1, %s) g",
        (rows,),
    )


def test_up_launches_and_verifies_a_python_step_and_down_undoes_the_whole_change(
    conn: psycopg.Connection[Any],
    env: dict[str, str],
    tmp_path: Path,
    database_url: str,
    workers: WorkerPool,
) -> None:
    make_table(conn, "sb_patients", 3000)
    folder = tmp_path / "versions"
    ref = weight_change(folder, "sb_patients")
    schema = ("schema", "--dir", str(folder))
    before = catalog(database_url)
    before_rows = fingerprint(conn, "sb_patients")

    up = ferry(*schema, "up", env=env)
    assert up.returncode == 0, up.stderr
    [(run_id, run_status)] = runs_of(conn, ref)
    assert run_status == "completed"
    assert re.findall(r"(?:applied|completed) (\d+)", up.stdout) == ["1", "2", "3"]
    assert f"completed 2 2_backfill_weight_kg (backfill run {run_id} verified)" in up.stdout
    assert statuses(conn) == {1: "completed", 2: "completed", 3: "completed"}
    assert version_row(conn, 2) == ("completed", run_id, None)
    verified = conn.execute(
        "SELECT ok FROM ferry.verifications WHERE run_id = %s ORDER BY id DESC LIMIT 1", (run_id,)
    ).fetchone()
    assert verified == (True,)
    wrong = conn.execute(
        "SELECT count(*) FROM sb_patients"
        " WHERE weight_kg IS DISTINCT FROM round(weight_lb * 0.45359237, 2)"
    ).fetchone()
    assert wrong == (0,)
    listed = json.loads(ferry(*schema, "status", "--json", env=env).stdout)
    assert [(r["category"], r["run_id"]) for r in listed][1] == ("transformative", run_id)
    assert ferry(*schema, "up", env=env).stdout.strip() == "nothing to apply"

    down = ferry(*schema, "down", "--to", "0", env=env)
    assert down.returncode == 0, down.stderr
    assert re.findall(r"rolled back (\d+)", down.stdout) == ["3", "2", "1"]
    assert f"rolled back 2 2_backfill_weight_kg (backfill run {run_id} rolled back)" in down.stdout
    assert runs_of(conn, ref) == [(run_id, "rolled_back")]
    assert statuses(conn) == {1: "rolled_back", 2: "rolled_back", 3: "rolled_back"}
    assert catalog(database_url) == before
    assert fingerprint(conn, "sb_patients") == before_rows

    actions = [
        r[0]
        for r in conn.execute(
            "SELECT action FROM ferry.audit_log WHERE action IN"
            " ('schema_up', 'schema_down', 'launch', 'verify', 'rollback') ORDER BY id DESC"
            " LIMIT 6"
        ).fetchall()
    ][::-1]
    assert actions == ["launch", "verify", "schema_up", "schema_up", "rollback", "schema_down"]


def test_the_contract_is_refused_while_the_backfill_step_is_unverified(
    conn: psycopg.Connection[Any],
    own_env: dict[str, str],
    tmp_path: Path,
    pool: WorkerPool,
) -> None:
    make_table(conn, "sb_waiting", 2000)
    folder = tmp_path / "versions"
    ref = weight_change(folder, "sb_waiting")
    schema = ("schema", "--dir", str(folder))

    # no worker reads this test's queue yet: the run cannot progress
    launched = ferry(*schema, "up", "--no-wait-backfill", env=own_env)
    assert launched.returncode == 0, launched.stderr
    [(run_id, _)] = runs_of(conn, ref)
    assert f"2 2_backfill_weight_kg is in_progress: backfill run {run_id} is running" in (
        launched.stdout
    )
    assert statuses(conn) == {1: "completed", 2: "in_progress"}

    refused = ferry(*schema, "up", "--no-wait-backfill", env=own_env)
    assert refused.returncode == 1
    assert f"version 2 (2_backfill_weight_kg) backfill run {run_id} is running" in refused.stderr
    assert "the contract" in refused.stderr
    assert statuses(conn) == {1: "completed", 2: "in_progress"}
    filled = conn.execute("SELECT count(*) FROM sb_waiting WHERE weight_kg IS NOT NULL")
    assert filled.fetchone() == (0,)

    pool.start("w1")
    up = ferry(*schema, "up", env=own_env)  # follows the same run, verifies it, contracts
    assert up.returncode == 0, up.stderr
    assert runs_of(conn, ref) == [(run_id, "completed")]
    assert f"completed 2 2_backfill_weight_kg (backfill run {run_id} verified)" in up.stdout
    assert statuses(conn) == {1: "completed", 2: "completed", 3: "completed"}


def test_quarantined_rows_complete_the_step_only_with_accept_quarantine(
    conn: psycopg.Connection[Any],
    env: dict[str, str],
    tmp_path: Path,
    database_url: str,
    workers: WorkerPool,
) -> None:
    make_table(conn, "sb_quarantine", 1500, where_negative=100)
    folder = tmp_path / "versions"
    rule = (
        'ValidationRule(field="weight_kg", type="range", condition="0..500",'
        ' error_message="implausible weight", action="skip")'
    )
    contract = (
        "comment on column sb_quarantine.weight_kg is 'kilograms';\n"
        "-- Rollback script\n-- comment on column sb_quarantine.weight_kg is null;\n"
    )
    ref = weight_change(folder, "sb_quarantine", rules=rule, contract=contract)
    schema = ("schema", "--dir", str(folder))
    before = catalog(database_url)
    before_rows = fingerprint(conn, "sb_quarantine")
    quarantined = 1500 // 100

    up = ferry(*schema, "up", env=env)
    assert up.returncode == 1, up.stdout + up.stderr
    [(run_id, run_status)] = runs_of(conn, ref)
    assert run_status == "completed_with_errors"
    message = (
        f"backfill run {run_id} ended completed_with_errors with {quarantined} row(s) quarantined"
    )
    assert message in up.stdout
    status, recorded_run, error = version_row(conn, 2)
    assert (status, recorded_run) == ("in_progress", run_id) and message in error
    assert 3 not in statuses(conn)
    # its latest verify passed: only the user's word is missing
    last = conn.execute(
        "SELECT ok FROM ferry.verifications WHERE run_id = %s ORDER BY id DESC LIMIT 1", (run_id,)
    ).fetchone()
    assert last == (True,)

    again = ferry(*schema, "up", env=env)
    assert again.returncode == 1 and message in again.stderr
    assert "--accept-quarantine" in again.stderr
    assert 3 not in statuses(conn) and len(runs_of(conn, ref)) == 1

    accepted = ferry(*schema, "up", "--accept-quarantine", env=env)
    assert accepted.returncode == 0, accepted.stderr
    assert f"completed 2 2_backfill_weight_kg (backfill run {run_id} verified)" in accepted.stdout
    assert statuses(conn) == {1: "completed", 2: "completed", 3: "completed"}
    assert version_row(conn, 2) == ("completed", run_id, None)

    down = ferry(*schema, "down", "--to", "0", env=env)
    assert down.returncode == 0, down.stderr
    assert catalog(database_url) == before
    assert fingerprint(conn, "sb_quarantine") == before_rows


def test_down_rolls_back_a_sql_expands_backfill_unless_told_not_to(
    conn: psycopg.Connection[Any],
    env: dict[str, str],
    tmp_path: Path,
    database_url: str,
    workers: WorkerPool,
) -> None:
    make_table(conn, "sb_marker", 2000)
    spec = spec_file(
        tmp_path,
        """
        to_kg = Backfill(table="sb_marker", key="id", reads=["weight_lb"], writes=["weight_kg"],
                         sql={"weight_kg": "round(weight_lb * 0.45359237, 2)"}, chunk_size=400)
        """,
    )
    ref = f"{spec}:to_kg"
    folder = tmp_path / "versions"
    write(
        folder,
        "1_expand_weight_kg.sql",
        f"-- ferry:backfill {ref}\n{TIMEOUT}alter table sb_marker add column weight_kg numeric;\n"
        "-- Rollback script\n-- alter table sb_marker drop column weight_kg;\n",
    )
    write(
        folder,
        "2_contract_weight_kg.sql",
        f"{TIMEOUT}alter table sb_marker alter column weight_kg set statistics 500;\n"
        "-- Rollback script\n-- alter table sb_marker alter column weight_kg set statistics -1;\n",
    )
    schema = ("schema", "--dir", str(folder))
    before = catalog(database_url)
    before_rows = fingerprint(conn, "sb_marker")

    assert ferry(*schema, "up", env=env).returncode == 0
    run_id = launch(env, ref)
    assert wait_run(conn, run_id) == "completed"
    assert ferry("verify", str(run_id), env=env).returncode == 0
    assert ferry(*schema, "up", env=env).returncode == 0
    assert statuses(conn) == {1: "completed", 2: "completed"}

    kept = ferry(*schema, "down", "--to", "0", "--no-rollback-backfills", env=env)
    assert kept.returncode == 1
    assert f"ferry rollback {run_id} --wait" in kept.stderr
    assert statuses(conn) == {1: "completed", 2: "rolled_back"}
    assert runs_of(conn, ref) == [(run_id, "completed")]

    down = ferry(*schema, "down", "--to", "0", env=env)
    assert down.returncode == 0, down.stderr
    assert f"rolled back 1 1_expand_weight_kg (backfill run {run_id} rolled back)" in down.stdout
    assert runs_of(conn, ref) == [(run_id, "rolled_back")]
    assert catalog(database_url) == before
    assert fingerprint(conn, "sb_marker") == before_rows


def test_the_vital_signs_example_runs_expand_backfill_contract_and_back(
    conn: psycopg.Connection[Any],
    env: dict[str, str],
    tmp_path: Path,
    database_url: str,
    workers: WorkerPool,
) -> None:
    folder = tmp_path / "versions"
    folder.mkdir()
    for path in [*EXAMPLES.glob("*.sql"), *(EXAMPLES / "vital_signs_si").glob("2*")]:
        shutil.copy(path, folder / path.name)
    conn.execute("CREATE TABLE IF NOT EXISTS public.patients (id uuid PRIMARY KEY)")
    before = catalog(database_url)
    schema = ("schema", "--dir", str(folder))

    expand = ferry(*schema, "up", "--to", "20240321", env=env)
    assert expand.returncode == 0, expand.stderr
    assert re.findall(r"applied (\d+)", expand.stdout) == ["20240315", "20240320", "20240321"]
    conn.execute(
        "WITH p AS (INSERT INTO patients SELECT gen_random_uuid() FROM generate_series(1, 50)"
        "           RETURNING id)"
        " INSERT INTO vital_signs (patient_id, type, value, unit)"
        " SELECT p.id, t.type, t.value, t.unit FROM p CROSS JOIN (VALUES"
        "   ('weight', 154.0, 'lb'), ('temperature', 98.6, 'F'), ('height', 70.0, 'in'),"
        "   ('heart_rate', 72, 'bpm')) AS t(type, value, unit)"
    )
    try:
        up = ferry(*schema, "up", env=env)
        assert up.returncode == 0, up.stderr
        assert re.findall(r"(?:applied|completed) (\d+)", up.stdout) == ["20240322", "20240323"]
        converted = conn.execute(
            "SELECT unit_si, min(value_si), max(value_si), count(*) FROM vital_signs"
            " GROUP BY unit_si ORDER BY unit_si"
        ).fetchall()
        assert [tuple(map(str, r)) for r in converted] == [
            ("C", "37.0", "37.0", "50"),
            ("bpm", "72", "72", "50"),
            ("cm", "177.8", "177.8", "50"),
            ("kg", "69.85", "69.85", "50"),
        ]

        down = ferry(*schema, "down", "--to", "0", env=env)
        assert down.returncode == 0, down.stderr
        assert re.findall(r"rolled back (\d+)", down.stdout) == [
            "20240323",
            "20240322",
            "20240321",
            "20240320",
            "20240315",
        ]
        assert catalog(database_url) == before
    finally:
        conn.execute("DROP TABLE IF EXISTS vital_signs")
        conn.execute("DELETE FROM patients")


def test_a_python_step_is_read_without_running_it(tmp_path: Path) -> None:
    folder = tmp_path / "versions"
    write(
        folder,
        "1_expand.sql",
        "alter table t add column c int;\n-- Rollback script\n-- select 1;\n",
    )
    write(
        folder,
        "2_fill.py",
        """\
        raise SystemExit("executed")  # parsing must never run the step's code
        description = "Backfill:   the new column"
        backfill = Backfill(table="t", key="id", writes=["c"], sql={"c": "1"})
        """,
    )
    write(folder, "__init__.py", "")
    write(folder, "helpers.py", "x = 1\n")
    expand, step = load_directory(folder)
    assert (expand.kind, step.kind) == ("sql", "backfill")
    assert (step.version, step.name, step.description) == (2, "2_fill", "Backfill: the new column")
    assert step.backfill == f"{(folder / '2_fill.py').resolve()}:backfill"
    assert step.category is Category.TRANSFORMATIVE and step.rollback == ()
    write(folder, "3_nothing.py", "thing = 1\n")
    with pytest.raises(BadInput, match="3_nothing.py: .*`backfill = Backfill"):
        load_directory(folder)
    write(folder, "3_nothing.py", "backfill = make()\ndescription = f'{x}'\n")
    with pytest.raises(BadInput, match="`description` must be a string literal"):
        load_directory(folder)
    write(folder, "3_nothing.py", "backfill = (\n")
    with pytest.raises(BadInput, match="3_nothing.py: line"):
        load_directory(folder)


def test_a_python_step_needs_the_coordinator(
    conn: psycopg.Connection[Any], database_url: str, tmp_path: Path
) -> None:
    folder = tmp_path / "versions"
    weight_change(folder, "sb_library")
    with psycopg.connect(database_url, autocommit=True) as own:
        runner = SchemaRunner(own, load_directory(folder), actor="pytest")
        with pytest.raises(BadInput, match="2_backfill_weight_kg.py is a backfill step"):
            runner.up()
    assert statuses(conn) == {}  # refused before anything changed
