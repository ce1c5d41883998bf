"""Validation rules on both paths, quarantine you can work with, verify, drift and catch-up."""

from __future__ import annotations

import csv
import json
import os
import shlex
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.conftest import ferry
from tests.helpers import chunk_counts, fingerprint, launch, spec_file, wait_run

pytestmark = pytest.mark.usefixtures("workers")

RULES = """
rules = [
    ValidationRule(field="code", type="format", condition="[A-Z]{3}-[0-9]+",
                   error_message="bad code"),
    ValidationRule(field="weight", type="range", condition="1..300", error_message="weight"),
    ValidationRule(field="born", type="range", condition="1900-01-01..today",
                   error_message="birth date"),
    ValidationRule(field="ward", type="reference", condition="wards.id", error_message="no ward"),
    ValidationRule(field="weight", type="custom", condition="weight <> 13",
                   error_message="unlucky"),
    ValidationRule(field="code", type="format", condition="[A-Z]{3}-[0-9]{1,3}",
                   severity="warning", error_message="long code"),
    ValidationRule(field="weight", type="range", condition="..250", action="transform",
                   fix="250", error_message="capped"),
]
"""

SQL_SPEC = (
    RULES
    + """
b = Backfill(table="pat", key="id", reads=["raw_code", "raw_weight", "raw_born", "raw_ward"],
             writes=["code", "weight", "born", "ward"],
             sql={"code": "upper(raw_code)", "weight": "raw_weight::numeric",
                  "born": "raw_born::date", "ward": "raw_ward"},
             rules=rules, chunk_size=100)
"""
)

PANDAS_SPEC = (
    RULES
    + """
def fn(df):
    return pd.DataFrame({"id": df["id"], "code": df["raw_code"].str.upper(),
                         "weight": pd.to_numeric(df["raw_weight"]), "born": df["raw_born"],
                         "ward": df["raw_ward"]})

rules.append(ValidationRule(field="code", type="custom", check=lambda d: d["code"] != "ZZZ-9",
                            error_message="python says no"))
b = Backfill(table="pat", key="id", reads=["raw_code", "raw_weight", "raw_born", "raw_ward"],
             writes=["code", "weight", "born", "ward"], transform=fn, rules=rules, chunk_size=100)
"""
)


def _patients(db: psycopg.Connection[Any]) -> None:
    db.execute("DROP TABLE IF EXISTS pat; DROP TABLE IF EXISTS wards")
    db.execute("CREATE TABLE wards (id integer PRIMARY KEY)")
    db.execute("INSERT INTO wards SELECT generate_series(1, 5)")
    db.execute(
        "CREATE TABLE pat (id integer PRIMARY KEY, raw_code text, raw_weight text, "
        "raw_born text, raw_ward integer, code text, weight numeric(6,1), born date, "
        "ward integer, updated_at timestamptz)"
    )
    db.execute(
        "INSERT INTO pat (id, raw_code, raw_weight, raw_born, raw_ward) "
        "SELECT g, 'abc-' || g, (50 + g % 100)::text, '1980-01-01', 1 + g % 5 "
        "FROM generate_series(1, 500) g"
    )
    bad = {
        11: "raw_code = 'nope'",  # format -> quarantined
        12: "raw_weight = '0.5'",  # range -> quarantined
        13: "raw_born = '2999-01-01'",  # future birth date -> quarantined
        14: "raw_ward = 99",  # reference -> quarantined
        15: "raw_weight = '13'",  # custom SQL -> quarantined
        16: "raw_weight = NULL",  # NULL passes
        17: "raw_code = 'abc-12345'",  # warning only: written, counted
        18: "raw_weight = '280'",  # transform: capped to 250, written
        19: "raw_code = 'zzz-9'",  # Python rule (pandas path only)
    }
    for key, change in bad.items():
        db.execute(f"UPDATE pat SET {change} WHERE id = {key}")


@pytest.mark.parametrize("mode", ["sql", "pandas"])
def test_every_rule_kind(
    mode: str, db: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    _patients(db)
    path = spec_file(tmp_path, SQL_SPEC if mode == "sql" else PANDAS_SPEC)
    run_id = launch(env, f"{path}:b")
    assert wait_run(db, run_id) == "completed_with_errors"
    quarantined = dict(
        db.execute(
            "SELECT row_key::int, message FROM ferry.quarantine WHERE run_id = %s", (run_id,)
        ).fetchall()
    )
    expected = {11: "bad code", 12: "weight", 13: "birth date", 14: "no ward", 15: "unlucky"}
    if mode == "pandas":
        expected[19] = "python says no"
    assert quarantined == expected
    rows = {
        r[0]: r[1:]
        for r in db.execute(
            "SELECT id, code, weight FROM pat WHERE id > 10 AND id < 20 ORDER BY id"
        )
    }
    assert all(rows[k] == (None, None) for k in expected)  # skipped rows left unchanged
    assert rows[16] == ("ABC-16", None)
    assert rows[17] == ("ABC-12345", 67)
    assert rows[18][1] == 250
    if mode == "sql":
        assert rows[19][0] == "ZZZ-9"
    sums = db.execute(
        "SELECT sum(rows_read), sum(rows_written), sum(rows_quarantined), "
        "sum(rows_warned), sum(rows_fixed) FROM ferry.chunks WHERE run_id = %s",
        (run_id,),
    ).fetchone()
    assert sums == (500, 500 - len(expected), len(expected), 1, 1)

    # quarantine, listed by rule and exported with masked values
    listing = ferry("quarantine", str(run_id), "--json", env=env)
    assert listing.returncode == 0, listing.stderr
    summary = json.loads(listing.stdout)
    assert summary["rows"] == len(expected)
    assert {r["message"] for r in summary["rules"]} == set(expected.values())
    out = tmp_path / "q.csv"
    assert ferry("quarantine", str(run_id), "--export", str(out), env=env).returncode == 0
    masked = list(csv.DictReader(out.read_text().splitlines()))
    assert len(masked) == len(expected)
    assert all(r["value"].startswith("***") for r in masked)
    assert "nope" not in out.read_text() and "NOPE" not in out.read_text()
    raw = tmp_path / "raw.csv"
    assert (
        ferry("quarantine", str(run_id), "--export", str(raw), "--unmask", env=env).returncode == 0
    )
    assert {r["row_key"]: r["value"] for r in csv.DictReader(raw.read_text().splitlines())}[
        "11"
    ] == "NOPE"
    audit = db.execute(
        "SELECT params->>'unmask' FROM ferry.audit_log WHERE run_id = %s AND "
        "action = 'quarantine_export' ORDER BY id",
        (run_id,),
    ).fetchall()
    assert audit == [("false",), ("true",)]

    # the data is fixed, then exactly the quarantined rows are re-run
    fixed = ", ".join(str(k) for k in expected)
    db.execute(
        "UPDATE pat SET raw_code = 'abc-11', raw_weight = '60', raw_born = '1970-01-01', "
        f"raw_ward = 1 WHERE id IN ({fixed})"
    )
    again = ferry("retry", str(run_id), "--quarantined", env=env)
    assert again.returncode == 0, again.stderr
    assert wait_run(db, run_id) == "completed"
    sums = db.execute(
        "SELECT sum(rows_written), sum(rows_quarantined) FROM ferry.chunks WHERE run_id = %s",
        (run_id,),
    ).fetchone()
    assert sums == (500, 0)
    assert db.execute("SELECT count(*) FROM pat WHERE code IS NULL").fetchone() == (0,)
    report = ferry("verify", str(run_id), "--json", env=env)
    assert report.returncode == 0, report.stdout + report.stderr
    assert json.loads(report.stdout)["counts"]["ok"]


def test_unmask_needs_the_privilege(
    db: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path, database_url: str
) -> None:
    _patients(db)
    path = spec_file(tmp_path, SQL_SPEC)
    run_id = launch(env, f"{path}:b")
    assert wait_run(db, run_id) == "completed_with_errors"
    viewer_role = f"ferry_viewer_{os.getpid()}"  # roles are cluster-wide: one per session
    role = sql.Identifier(viewer_role)
    db.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(role))
    db.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
    try:
        db.execute(sql.SQL("GRANT USAGE ON SCHEMA ferry TO {}").format(role))
        db.execute(
            sql.SQL(
                "GRANT SELECT ON ferry.runs, ferry.quarantine, ferry.ledger_version TO {}"
            ).format(role)
        )
        db.execute(sql.SQL("GRANT INSERT ON ferry.audit_log TO {}").format(role))
        db.execute(sql.SQL("GRANT USAGE ON SEQUENCE ferry.audit_log_id_seq TO {}").format(role))
        viewer = {
            **env,
            "FERRY_DATABASE_URL": database_url.replace("postgres@", f"{viewer_role}@"),
        }
        ok = ferry("quarantine", str(run_id), "--export", str(tmp_path / "m.csv"), env=viewer)
        assert ok.returncode == 0, ok.stderr
        refused = ferry(
            "quarantine", str(run_id), "--export", str(tmp_path / "u.csv"), "--unmask", env=viewer
        )
        assert refused.returncode == 1 and "may not unmask" in refused.stderr
        assert not (tmp_path / "u.csv").exists()
    finally:
        db.execute(sql.SQL("DROP OWNED BY {}").format(role))
        db.execute(sql.SQL("DROP ROLE {}").format(role))


def test_fail_rule_stops_the_run(
    db: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    _patients(db)
    db.execute("UPDATE pat SET raw_weight = '900' WHERE id = 250")
    path = spec_file(
        tmp_path,
        """
b = Backfill(table="pat", key="id", reads=["raw_weight"], writes=["weight"],
             sql={"weight": "raw_weight::numeric"}, chunk_size=50,
             rules=[ValidationRule(field="weight", type="range", condition="..500",
                                   action="fail", error_message="absurd weight")])
""",
    )
    run_id = launch(env, f"{path}:b")
    assert wait_run(db, run_id) == "failed"
    counts = chunk_counts(db, run_id)
    errors = db.execute(
        "SELECT chunk_no, error FROM ferry.chunks WHERE run_id = %s AND status = 'failed'",
        (run_id,),
    ).fetchall()
    assert counts["failed"] == 1, errors
    assert db.execute(
        "SELECT count(*) FROM pat WHERE id BETWEEN 201 AND 250 AND weight IS NOT NULL"
    ).fetchone() == (0,)
    status = json.loads(ferry("status", str(run_id), "--json", env=env).stdout)
    assert status["status"] == "failed"
    failure = status["failures"][0]
    assert failure["type"] == "data" and failure["severity"] == "high"
    assert "absurd weight" in failure["description"]
    # the failed chunk wrote nothing, but the chunks before it did: the run is partly applied
    assert failure["rollbackRequired"] is True
    assert {"impact", "resolution"} <= set(failure)
    db.execute("UPDATE pat SET raw_weight = '90' WHERE id = 250")
    assert ferry("retry", str(run_id), env=env).returncode == 0
    assert wait_run(db, run_id) == "completed"
    assert db.execute(
        "SELECT count(*) FROM pat WHERE weight IS NULL AND raw_weight IS NOT NULL"
    ).fetchone() == (0,)


@pytest.mark.parametrize("with_column", [False, True])
def test_verify_drift_and_catch_up(
    with_column: bool, db: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    _patients(db)
    if not with_column:
        db.execute("ALTER TABLE pat DROP COLUMN updated_at")
    path = spec_file(
        tmp_path,
        """
b = Backfill(table="pat", key="id", reads=["raw_code"], writes=["code"],
             sql={"code": "upper(raw_code)"}, chunk_size=100)
""",
    )
    run_id = launch(env, f"{path}:b")
    assert wait_run(db, run_id) == "completed"
    clean = ferry("verify", str(run_id), "--json", env=env)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    report = json.loads(clean.stdout)
    assert report["ok"] and report["drift"]["rows"] == 0
    assert report["counts"]["rows_in_range"] == 500 and report["checksum"]["sample"] > 0
    assert report["drift"]["method"] == ("column updated_at" if with_column else "xmin")

    # the application keeps writing: three rows change after their chunk was applied
    stamp = ", updated_at = clock_timestamp()" if with_column else ""
    db.execute(f"UPDATE pat SET raw_code = 'new-' || id{stamp} WHERE id IN (5, 150, 499)")
    proc = ferry("verify", str(run_id), "--json", env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # drift is a failed verification
    drifted = json.loads(proc.stdout)
    assert not drifted["ok"] and not drifted["drift"]["ok"] and drifted["drift"]["rows"] == 3
    assert sorted(drifted["drift"]["keys"], key=int) == ["5", "150", "499"]
    assert drifted["counts"]["ok"] and drifted["checksum"]["ok"] and drifted["rules"]["ok"]
    command = f"ferry launch {shlex.quote(f'{path}:b')} --catch-up {run_id}"
    assert drifted["drift"]["catch_up"] == command
    human = ferry("verify", str(run_id), env=env)
    assert human.returncode == 1
    assert f"{command}\n" in human.stdout

    proc = ferry("launch", f"{path}:b", "--catch-up", str(run_id), "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    catch_up = json.loads(proc.stdout)
    assert catch_up["rows"] == 3
    assert wait_run(db, catch_up["run_id"]) == "completed"
    assert db.execute("SELECT code FROM pat WHERE id IN (5, 150, 499) ORDER BY id").fetchall() == [
        ("NEW-5",),
        ("NEW-150",),
        ("NEW-499",),
    ]
    assert db.execute(
        "SELECT count(*) FROM pat WHERE code IS DISTINCT FROM upper(raw_code)"
    ).fetchone() == (0,)
    written = db.execute(
        "SELECT sum(rows_written) FROM ferry.chunks WHERE run_id = %s", (catch_up["run_id"],)
    ).fetchone()
    assert written == (3,)


def test_verify_fails_on_a_broken_rule(
    db: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    _patients(db)
    path = spec_file(
        tmp_path,
        """
b = Backfill(table="pat", key="id", reads=["raw_weight"], writes=["weight"],
             sql={"weight": "raw_weight::numeric"}, chunk_size=100,
             rules=[ValidationRule(field="weight", type="range", condition="1..300")])
""",
    )
    run_id = launch(env, f"{path}:b")
    assert wait_run(db, run_id) == "completed_with_errors"
    before = fingerprint(db, "pat")
    db.execute("UPDATE pat SET weight = 999 WHERE id = 42")  # the application breaks the rule
    proc = ferry("verify", str(run_id), env=env)
    assert proc.returncode == 1
    assert "rules" in proc.stdout and "FAILED" in proc.stdout
    report = json.loads(ferry("verify", str(run_id), "--json", env=env).stdout)
    assert report["rules"]["violations"][0]["rows"] == 1
    assert fingerprint(db, "pat") != before
    assert db.execute(
        "SELECT count(*) FROM ferry.verifications WHERE run_id = %s", (run_id,)
    ).fetchone() == (2,)


@pytest.mark.parametrize("mode", ["sql", "pandas"])
def test_only_the_checksum_catches_a_wrong_value(
    mode: str, db: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    """A written value changed behind the drift detector's back (the updated-at column not
    bumped): counts, rules and drift all hold, so the checksum alone must fail the run."""
    _patients(db)
    transform = (
        'sql={"code": "upper(raw_code)"}'
        if mode == "sql"
        else 'transform=lambda df: df.assign(code=df["raw_code"].str.upper())[["id", "code"]]'
    )
    path = spec_file(
        tmp_path,
        f"""
b = Backfill(table="pat", key="id", reads=["raw_code"], writes=["code"], {transform},
             chunk_size=100)
""",
    )
    run_id = launch(env, f"{path}:b")
    assert wait_run(db, run_id) == "completed"
    assert ferry("verify", str(run_id), env=env).returncode == 0
    # one written value altered, updated_at left as it was: no drift is seen
    db.execute("UPDATE pat SET code = code || ' ' WHERE id = 321")
    proc = ferry("verify", str(run_id), "--json", "--sample", "1000", env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["counts"]["ok"] and report["rules"]["ok"]
    assert report["drift"]["rows"] == 0 and report["drift"]["ok"]
    checksum = report["checksum"]
    assert not checksum["ok"] and checksum["sample"] == 500
    assert checksum["rows_that_differ"] == 1 and checksum["keys_that_differ"] == ["321"]
    assert checksum["table"] != checksum["recomputed"]
