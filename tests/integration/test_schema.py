"""Versioned schema migrations against the real PostgreSQL: ledger, locks, transactions, CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from migrations.errors import BadInput, CheckFailed
from migrations.schema import SchemaRunner, load_directory
from migrations.schema.runner import SCHEMA_LOCK
from tests.conftest import ROOT, ferry
from tests.helpers import fingerprint, launch, spec_file, wait_run

EXAMPLES = ROOT / "examples" / "migrations"
TIMEOUT = "set lock_timeout = '5s';\n"


@pytest.fixture
def conn(db: psycopg.Connection[Any], ledger_ready: None) -> psycopg.Connection[Any]:
    """The session database with an empty schema_versions (each test has its own versions)."""
    db.execute("DELETE FROM ferry.schema_versions")
    return db


@pytest.fixture
def runner_conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url, autocommit=True) as own:
        yield own


def catalog(database_url: str) -> str:
    """The user's schema as pg_dump prints it (its per-run \\restrict keys removed).

    Ferry's own ledger is left out: a backfill adds its pre-image table there by design.
    """
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
    path.write_text(text)
    return path


def versions(conn: psycopg.Connection[Any]) -> dict[int, tuple[Any, ...]]:
    rows = conn.execute(
        "SELECT version, status, non_transactional, error FROM ferry.schema_versions"
    ).fetchall()
    return {r[0]: tuple(r[1:]) for r in rows}


def runner(conn: psycopg.Connection[Any], folder: Path, **kw: Any) -> SchemaRunner:
    return SchemaRunner(conn, load_directory(folder), actor="pytest", **kw)


def exists(conn: psycopg.Connection[Any], name: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
    return bool(row and row[0])


def test_the_example_runs_up_and_down_leaving_the_catalog_identical(
    conn: psycopg.Connection[Any], env: dict[str, str], database_url: str
) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS public.patients (id uuid PRIMARY KEY)")
    before = catalog(database_url)
    up = ferry("schema", "--dir", str(EXAMPLES), "up", env=env)
    assert up.returncode == 0, up.stderr
    assert re.findall(r"applied (\d+)", up.stdout) == ["20240315", "20240320"]
    assert exists(conn, "public.vital_signs") and exists(conn, "vital_signs_patient_measured")
    assert versions(conn) == {
        20240315: ("completed", False, None),
        20240320: ("completed", True, None),
    }
    row = conn.execute(
        "SELECT applied_by, rollback_point, description FROM ferry.schema_versions"
        " WHERE version = 20240320"
    ).fetchone()
    assert row is not None and row[:2] == ("pytest", "20240315") and "vital signs" in row[2]
    # the helpers the pre-conditions call live in Ferry's schema only
    helpers = conn.execute(
        "SELECT count(*) FROM pg_proc WHERE proname = 'exists_table'"
        " AND pronamespace <> 'ferry_helpers'::regnamespace"
    ).fetchone()
    assert helpers == (0,)
    assert catalog(database_url) != before

    down = ferry("schema", "--dir", str(EXAMPLES), "down", "--to", "0", env=env)
    assert down.returncode == 0, down.stderr
    assert re.findall(r"rolled back (\d+)", down.stdout) == ["20240320", "20240315"]
    assert catalog(database_url) == before
    assert {v: s[0] for v, s in versions(conn).items()} == {
        20240315: "rolled_back",
        20240320: "rolled_back",
    }
    status = ferry("schema", "--dir", str(EXAMPLES), "status", "--json", env=env)
    assert [r["status"] for r in json.loads(status.stdout)] == ["rolled_back", "rolled_back"]
    audit = conn.execute(
        "SELECT action, actor FROM ferry.audit_log WHERE action LIKE 'schema_%' ORDER BY id"
    ).fetchall()
    assert audit[-2:] == [("schema_up", "pytest"), ("schema_down", "pytest")]


def test_a_precondition_failure_applies_nothing(
    conn: psycopg.Connection[Any],
    runner_conn: psycopg.Connection[Any],
    tmp_path: Path,
    database_url: str,
) -> None:
    conn.execute("CREATE TABLE guard_existing (a int)")
    write(
        tmp_path,
        "1_guarded.sql",
        "comment on migration '1_guarded' is 'guarded';\n"
        "do $$ begin\n  if exists_table('guard_existing') then\n"
        "    raise exception 'Table guard_existing already exists';\n  end if;\nend $$;\n"
        "create table guard_new (a int);\n",
    )
    before = catalog(database_url)
    with pytest.raises(CheckFailed, match=r"line 2: pre-condition failed: .*already exists"):
        runner(runner_conn, tmp_path).up()
    assert not exists(conn, "guard_new")
    assert catalog(database_url) == before
    status, non_transactional, error = versions(conn)[1]
    assert (status, non_transactional) == ("failed", False) and "already exists" in error
    # the pre-condition holds once the obstacle is gone: a failed transactional version retries
    conn.execute("DROP TABLE guard_existing")
    assert [s.version for s in runner(runner_conn, tmp_path).up()] == [1]
    assert exists(conn, "guard_new")


def test_a_failing_statement_rolls_back_the_whole_file(
    conn: psycopg.Connection[Any], runner_conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    write(tmp_path, "1_half.sql", "create table half_a (a int);\ncreate table half_b (a nosuch);\n")
    with pytest.raises(CheckFailed, match=r"1_half.sql: line 2: statement failed: type"):
        runner(runner_conn, tmp_path).up()
    assert not exists(conn, "half_a")
    assert versions(conn)[1][0] == "failed"
    assert runner_conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_an_edited_applied_file_is_refused_until_repair(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    path = write(
        tmp_path,
        "1_sum.sql",
        "create table sum_t (a int);\n-- Rollback script\n-- drop table sum_t;\n",
    )
    assert ferry("schema", "--dir", str(tmp_path), "up", env=env).returncode == 0
    path.write_text(path.read_text().replace("(a int)", "(a bigint)"))
    for verb in ("up", "down"):
        refused = ferry("schema", "--dir", str(tmp_path), verb, env=env)
        assert refused.returncode == 2
        assert "1_sum.sql changed after it was applied" in refused.stderr
        assert "ferry schema repair" in refused.stderr
    status = json.loads(ferry("schema", "--dir", str(tmp_path), "status", "--json", env=env).stdout)
    assert "checksum changed" in status[0]["notes"][0]
    repaired = ferry("schema", "--dir", str(tmp_path), "repair", env=env)
    assert repaired.returncode == 0 and "checksums accepted: 1;" in repaired.stdout
    again = ferry("schema", "--dir", str(tmp_path), "up", env=env)
    assert again.returncode == 0 and "nothing to apply" in again.stdout
    actions = [
        r[0]
        for r in conn.execute(
            "SELECT action FROM ferry.audit_log WHERE action LIKE 'schema_%' ORDER BY id"
        ).fetchall()
    ]
    assert actions[-4:] == ["schema_up", "schema_down", "schema_repair", "schema_up"]


def _schema_up(env: dict[str, str], folder: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "coordinator", "schema", "--dir", str(folder), "up", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_migrators_race_and_one_waits(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    write(tmp_path, "1_slow.sql", "select pg_sleep(3);\ncreate table race_t (a int);\n")
    procs = [_schema_up(env, tmp_path), _schema_up(env, tmp_path)]
    results: list[tuple[int, str, str]] = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        results.append((proc.returncode, out, err))
    assert [r[0] for r in results] == [0, 0], results
    outputs = sorted(r[1] for r in results)
    assert outputs[0].startswith("applied 1 1_slow") and outputs[1] == "nothing to apply\n"
    waited = [r for r in results if "nothing to apply" in r[1]][0]
    assert "waiting for another schema migrator" in waited[2]
    assert versions(conn)[1][0] == "completed"


def test_a_held_lock_makes_no_wait_exit_and_wait_block(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path, database_url: str
) -> None:
    write(tmp_path, "1_locked.sql", "create table locked_t (a int);\n")
    with psycopg.connect(database_url, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK,))
        quick = ferry("schema", "--dir", str(tmp_path), "up", "--no-wait", env=env)
        assert quick.returncode == 1
        assert "another ferry schema migrator is running here" in quick.stderr
        bounded = ferry("schema", "--dir", str(tmp_path), "--wait-seconds", "1", "up", env=env)
        assert bounded.returncode == 1 and "held the lock for 1s" in bounded.stderr
        waiting = _schema_up(env, tmp_path)
        time.sleep(2)
        assert waiting.poll() is None and not exists(conn, "locked_t")
        other.execute("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK,))
        out, err = waiting.communicate(timeout=60)
        assert waiting.returncode == 0, err
        assert out.startswith("applied 1") and "waiting for another" in err
    assert exists(conn, "locked_t")


def test_concurrently_statements_run_alone_outside_a_transaction(
    conn: psycopg.Connection[Any], runner_conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    write(
        tmp_path,
        "1_conc.sql",
        TIMEOUT + "create table conc_t (a int);\n"
        "insert into conc_t select g from generate_series(1, 1000) g;\n"
        "create index concurrently conc_t_a on conc_t (a);\n"
        "-- Rollback script\n-- drop index concurrently conc_t_a;\n-- drop table conc_t;\n",
    )
    # PostgreSQL refuses CREATE INDEX CONCURRENTLY in a transaction block: success proves it.
    assert [s.version for s in runner(runner_conn, tmp_path).up()] == [1]
    assert versions(conn)[1] == ("completed", True, None)
    valid = conn.execute(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'conc_t_a'::regclass"
    ).fetchone()
    assert valid == (True,)
    assert runner_conn.execute("SHOW lock_timeout").fetchone() == ("0",)  # session restored
    assert [s.status for s in runner(runner_conn, tmp_path).down()] == ["rolled_back"]
    assert not exists(conn, "conc_t")


def test_a_failed_non_transactional_migration_needs_repair(
    conn: psycopg.Connection[Any], runner_conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    conn.execute("CREATE TABLE dup_t (a int); INSERT INTO dup_t VALUES (1), (1)")
    write(tmp_path, "1_dup.sql", "create unique index concurrently dup_t_a on dup_t (a);\n")
    with pytest.raises(CheckFailed, match="could not create unique index"):
        runner(runner_conn, tmp_path).up()
    assert versions(conn)[1][:2] == ("failed", True)
    invalid = conn.execute(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'dup_t_a'::regclass"
    ).fetchone()
    assert invalid == (False,)  # what a failed CONCURRENTLY leaves behind
    with pytest.raises(CheckFailed, match="part of it may be applied"):
        runner(runner_conn, tmp_path).up()
    conn.execute(
        "DROP INDEX dup_t_a; DELETE FROM dup_t WHERE ctid <> (SELECT min(ctid) FROM dup_t)"
    )
    assert runner(runner_conn, tmp_path).repair() == {"realigned": [], "forgotten": [1]}
    assert [s.version for s in runner(runner_conn, tmp_path).up()] == [1]


def test_destructive_steps_need_allow_destructive(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    conn.execute("CREATE TABLE destr_t (a int, b int)")
    write(tmp_path, "1_drop.sql", TIMEOUT + "alter table destr_t drop column b;\n")
    refused = ferry("schema", "--dir", str(tmp_path), "up", env=env)
    assert refused.returncode == 2
    assert "1_drop.sql: line 2: destructive step" in refused.stderr
    assert "--allow-destructive" in refused.stderr
    assert versions(conn) == {}
    assert conn.execute(
        "SELECT count(*) FROM information_schema.columns WHERE table_name = 'destr_t'"
    ).fetchone() == (2,)
    ok = ferry("schema", "--dir", str(tmp_path), "up", "--allow-destructive", env=env)
    assert ok.returncode == 0, ok.stderr
    assert conn.execute(
        "SELECT count(*) FROM information_schema.columns WHERE table_name = 'destr_t'"
    ).fetchone() == (1,)


def test_down_refuses_a_file_without_rollback_section(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    write(tmp_path, "1_forever.sql", "create table forever_t (a int);\n")
    assert ferry("schema", "--dir", str(tmp_path), "up", env=env).returncode == 0
    down = ferry("schema", "--dir", str(tmp_path), "down", env=env)
    assert down.returncode == 2
    assert "1_forever.sql has no '-- Rollback script' section" in down.stderr
    assert versions(conn)[1][0] == "completed" and exists(conn, "forever_t")


def test_up_to_and_down_to_walk_versions_in_order(
    conn: psycopg.Connection[Any], runner_conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    for v in (1, 2, 3):
        write(
            tmp_path,
            f"{v}_step.sql",
            f"create table step_{v} (a int);\n-- Rollback script\n-- drop table step_{v};\n",
        )
    assert [s.version for s in runner(runner_conn, tmp_path).up(to=2)] == [1, 2]
    assert not exists(conn, "step_3")
    assert [s.version for s in runner(runner_conn, tmp_path).down()] == [2]
    assert [s.version for s in runner(runner_conn, tmp_path).up()] == [2, 3]
    assert [s.version for s in runner(runner_conn, tmp_path).down(to=1)] == [3, 2]
    assert exists(conn, "step_1") and not exists(conn, "step_2")
    with pytest.raises(BadInput, match="no migration file has version 7"):
        runner(runner_conn, tmp_path).up(to=7)
    assert [s.version for s in runner(runner_conn, tmp_path).up()] == [2, 3]
    write(tmp_path, "0_late.sql", "create table step_0 (a int);\n")
    with pytest.raises(BadInput, match="older than the applied version 3"):
        runner(runner_conn, tmp_path).up()
    assert not exists(conn, "step_0")


def test_plan_and_lint_commands(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    bad = write(tmp_path, "1_bad.sql", "create index bad_i on patients (id);\n")
    lint = ferry("schema", "lint", str(bad), env=env)
    assert lint.returncode == 1
    assert "1_bad.sql:1: error: index-not-concurrent" in lint.stdout and "safe: " in lint.stdout
    findings = json.loads(ferry("schema", "lint", str(bad), "--json", env=env).stdout)
    assert {f["rule"] for f in findings} == {"index-not-concurrent", "missing-lock-timeout"}
    clean = ferry("schema", "--dir", str(EXAMPLES), "lint", env=env)
    assert clean.returncode == 0 and "0 error(s)" in clean.stdout
    plan = json.loads(ferry("schema", "--dir", str(tmp_path), "plan", "--json", env=env).stdout)
    assert [(p["version"], p["category"], p["transactional"]) for p in plan] == [
        (1, "additive", True)
    ]
    assert plan[0]["findings"][0]["rule"] == "index-not-concurrent"
    assert versions(conn) == {}  # plan writes nothing


def test_expand_backfill_verify_contract_then_full_rollback(
    conn: psycopg.Connection[Any],
    env: dict[str, str],
    tmp_path: Path,
    database_url: str,
    workers: Any,
) -> None:
    conn.execute(
        "CREATE TABLE ec_patients (id int PRIMARY KEY, weight_lb numeric NOT NULL);"
        "INSERT INTO ec_patients SELECT g, 100 + g % 150 FROM generate_series(1, 3000) g"
    )
    spec = spec_file(
        tmp_path,
        """
        to_kg = Backfill(table="ec_patients", key="id", reads=["weight_lb"], writes=["weight_kg"],
                         sql={"weight_kg": "round(weight_lb * 0.45359237, 2)"}, chunk_size=500)
        """,
    )
    ref = f"{spec}:to_kg"
    folder = tmp_path / "versions"
    write(
        folder,
        "1_expand_weight_kg.sql",
        f"comment on migration '1_expand_weight_kg' is 'weight in kg, filled by a backfill';\n"
        f"-- ferry:backfill {ref}\n"
        + TIMEOUT
        + "alter table ec_patients add column weight_kg numeric;\n"
        "-- Rollback script\n-- alter table ec_patients drop column weight_kg;\n",
    )
    write(
        folder,
        "2_contract_weight_kg.sql",
        TIMEOUT + "alter table ec_patients add constraint kg_nn check (weight_kg is not null)"
        " not valid;\nalter table ec_patients validate constraint kg_nn;\n"
        "-- Rollback script\n-- alter table ec_patients drop constraint kg_nn;\n",
    )
    before = catalog(database_url)
    before_rows = fingerprint(conn, "ec_patients")
    schema = ("schema", "--dir", str(folder))

    expand = ferry(*schema, "up", env=env)
    assert expand.returncode == 0, expand.stderr
    assert "applied 1 " in expand.stdout and "waits for its backfill" in expand.stdout
    assert versions(conn) == {1: ("in_progress", False, None)}
    refused = ferry(*schema, "up", env=env)
    assert refused.returncode == 1 and "waits for its backfill" in refused.stderr
    assert versions(conn) == {1: ("in_progress", False, None)}

    run_id = launch(env, ref)
    assert wait_run(conn, run_id) == "completed"
    still = ferry(*schema, "up", env=env)  # completed but not verified yet
    assert still.returncode == 1 and 2 not in versions(conn)
    assert ferry("verify", str(run_id), env=env).returncode == 0

    contract = ferry(*schema, "up", env=env)
    assert contract.returncode == 0, contract.stderr
    assert f"completed 1 1_expand_weight_kg (backfill run {run_id} verified)" in contract.stdout
    assert "applied 2 " in contract.stdout
    assert {v: s[0] for v, s in versions(conn).items()} == {1: "completed", 2: "completed"}
    assert conn.execute(
        "SELECT run_id FROM ferry.schema_versions WHERE version = 1"
    ).fetchone() == (run_id,)

    # rolling back the whole change: contract, then the backfill's pre-images, then the expand
    partial = ferry(*schema, "down", "--to", "0", "--no-rollback-backfills", env=env)
    assert partial.returncode == 1
    assert f"ferry rollback {run_id} --wait" in partial.stderr
    assert "rolled back 2 2_contract_weight_kg; version 1 " in partial.stderr
    assert {v: s[0] for v, s in versions(conn).items()} == {1: "completed", 2: "rolled_back"}
    assert ferry("rollback", str(run_id), "--wait", env=env).returncode == 0
    assert wait_run(conn, run_id) == "rolled_back"
    down = ferry(*schema, "down", "--to", "0", env=env)
    assert down.returncode == 0, down.stderr
    assert catalog(database_url) == before
    assert fingerprint(conn, "ec_patients") == before_rows
