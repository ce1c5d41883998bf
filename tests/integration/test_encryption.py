"""Encryption at rest: with FERRY_ENCRYPTION_KEY, pre-images and raw quarantined values are
ciphertext in the database, and a rollback still restores the original bytes.

Workers of the test's own queue get the key (the session's workers do not): a run is
encrypted or not from launch to rollback, on every process that touches it.
"""

from __future__ import annotations

import base64
import csv
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import WorkerPool, ferry
from tests.helpers import fingerprint, launch, pre_image_counts, spec_file, wait_run

KEY = base64.b64encode(os.urandom(32)).decode()
OTHER_KEY = base64.b64encode(os.urandom(32)).decode()

SPEC = """
b = Backfill(table="enc_pat", key="id", reads=["name", "weight_lb", "born_text", "extra"],
             writes=["name", "weight_kg", "born", "extra", "ratio", "seen"],
             sql={"name": "upper(name)", "weight_kg": "round(weight_lb / 2.2046, 2)",
                  "born": "born_text::date", "extra": "extra || '{\\"v\\": 2}'",
                  "ratio": "1.0 / (id + 7)",
                  "seen": "timestamptz '2021-01-01 00:00+00' + id * interval '1 hour'"},
             rules=[ValidationRule(field="weight_kg", type="range", condition="1..300",
                                   error_message="implausible weight", action="skip")],
             chunk_size=25)
"""

# Values no encrypted table may show (each row's text holds one of these per column).
NAMES = ("Alice Whitfield", "Bob Marchetti", "Carol Nguyen")


def _seed(db: psycopg.Connection[Any]) -> None:
    db.execute("DROP TABLE IF EXISTS enc_pat")
    db.execute(
        "CREATE TABLE enc_pat (id integer PRIMARY KEY, name text, weight_lb numeric, "
        "weight_kg numeric(6,2), born_text text, born date, extra jsonb, ratio float8, "
        "seen timestamptz)"
    )
    db.execute(
        """INSERT INTO enc_pat
           SELECT g, (ARRAY['Alice Whitfield', 'Bob Marchetti', 'Carol Nguyen'])[1 + g % 3]
                     || ' ' || g,
                  CASE WHEN g % 10 = 0 THEN 9000 ELSE 100 + g END,
                  CASE WHEN g % 7 = 0 THEN NULL ELSE 40.5 + g END,
                  ('1950-01-01'::date + g)::text, '1940-01-01'::date + g,
                  jsonb_build_object('mrn', 'MRN-' || g), 1.0 / (g + 3),
                  '2020-01-01 10:00:00+00'::timestamptz + g * interval '1 hour'
             FROM generate_series(1, 120) AS g"""
    )


@pytest.fixture
def sealed(own_env: dict[str, str], tmp_path: Path, ledger_ready: None) -> Iterator[dict[str, str]]:
    keyed = {**own_env, "FERRY_ENCRYPTION_KEY": KEY}
    pool = WorkerPool(keyed, tmp_path)
    pool.start("enc1")
    yield keyed
    pool.stop_all()


def test_encrypted_pre_images_and_quarantine_restore_exactly(
    db: psycopg.Connection[Any], sealed: dict[str, str], tmp_path: Path
) -> None:
    _seed(db)
    before = fingerprint(db, "enc_pat")
    path = spec_file(tmp_path, SPEC)
    run_id = launch(sealed, f"{path}:b")
    assert wait_run(db, run_id) == "completed_with_errors"
    assert fingerprint(db, "enc_pat") != before

    # the pre-image table holds ciphertext only: bytea columns, no value in clear
    types = dict(
        db.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
            (f"ferry.backup_{run_id}",),
        ).fetchall()
    )
    written = ("name", "weight_kg", "born", "extra", "ratio", "seen")
    # packed: one row a chunk, arrays of keys and of sealed values
    assert {types[c] for c in written} == {"bytea[]"} and types["id"] == "integer[]"
    assert pre_image_counts(db, run_id)[0] > 0
    dump = "\n".join(
        str(r[0]) for r in db.execute(f"SELECT b::text FROM ferry.backup_{run_id} AS b")
    )
    dump += "\n".join(
        bytes(v).decode("latin-1")
        for r in db.execute(f"SELECT name, born, extra FROM ferry.backup_{run_id}")
        for values in r
        for v in values
        if v is not None
    )
    for needle in (*NAMES, "MRN-", "1940-", "2020-01"):
        assert needle not in dump, needle

    # quarantined raw values are ciphertext too; the masked listing is unchanged
    raw = [
        r[0]
        for r in db.execute(
            "SELECT v.value FROM ferry.quarantine_values v JOIN ferry.quarantine q "
            "ON q.id = v.quarantine_id WHERE q.run_id = %s",
            (run_id,),
        )
    ]
    assert len(raw) == 12  # every tenth row weighs 9000 lb
    for value in raw:
        sealed_bytes = base64.b64decode(value.replace("\n", ""), validate=True)
        assert len(sealed_bytes) > 16 and "4082" not in value

    verified = ferry("verify", str(run_id), "--json", env=sealed)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    # unmasking decrypts with the run's key, and refuses another key in one line
    out = tmp_path / "raw.csv"
    exported = ferry("quarantine", str(run_id), "--export", str(out), "--unmask", env=sealed)
    assert exported.returncode == 0, exported.stderr
    values = {r["row_key"]: r["value"] for r in csv.DictReader(out.read_text().splitlines())}
    assert values["10"] == str(round(9000 / 2.2046, 2))
    wrong = ferry(
        "quarantine",
        str(run_id),
        "--export",
        str(tmp_path / "wrong.csv"),
        "--unmask",
        env={**sealed, "FERRY_ENCRYPTION_KEY": OTHER_KEY},
    )
    assert wrong.returncode != 0
    assert "not the key this run was encrypted with" in wrong.stderr
    assert OTHER_KEY not in wrong.stderr + wrong.stdout and KEY not in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1

    # rollback decrypts the pre-images back into the original bytes
    rb = ferry("rollback", str(run_id), "--wait", env=sealed)
    assert rb.returncode == 0, rb.stdout + rb.stderr
    assert fingerprint(db, "enc_pat") == before


def test_bad_encryption_key_is_refused_before_anything(
    env: dict[str, str], tmp_path: Path, db: psycopg.Connection[Any]
) -> None:
    runs = db.execute("SELECT count(*) FROM ferry.runs").fetchone()
    path = spec_file(tmp_path, SPEC)
    for bad in ("not base64!", base64.b64encode(b"short").decode()):
        proc = ferry("launch", f"{path}:b", env={**env, "FERRY_ENCRYPTION_KEY": bad})
        assert proc.returncode == 2
        assert proc.stderr.startswith("ferry: error: FERRY_ENCRYPTION_KEY")
        assert bad not in proc.stderr
    assert db.execute("SELECT count(*) FROM ferry.runs").fetchone() == runs


def test_a_worker_without_the_key_writes_nothing(
    db: psycopg.Connection[Any], env: dict[str, str], workers: WorkerPool, tmp_path: Path
) -> None:
    """The session's workers have no key: the encrypted run's chunks fail, saying why, and
    nothing is written in clear or otherwise."""
    _seed(db)
    before = fingerprint(db, "enc_pat")
    path = spec_file(tmp_path, SPEC)
    run_id = launch({**env, "FERRY_ENCRYPTION_KEY": KEY}, f"{path}:b")
    assert wait_run(db, run_id) == "failed"
    errors = {
        r[0]
        for r in db.execute(
            "SELECT error FROM ferry.chunks WHERE run_id = %s AND status = 'failed'", (run_id,)
        )
    }
    assert errors and all("set FERRY_ENCRYPTION_KEY" in e for e in errors), errors
    assert fingerprint(db, "enc_pat") == before
    assert pre_image_counts(db, run_id) == (0, 0)
