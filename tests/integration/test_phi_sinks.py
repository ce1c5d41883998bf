"""No seeded PHI value reaches any sink Ferry writes to.

A patients table is seeded with values that look like PHI (full names, SSN-like numbers,
dates of birth). Two backfills run on the session's real workers: a SQL one whose rules
quarantine implausible rows and whose cast fails one chunk on a garbage date holding an
SSN, and a pandas one whose transform raises on that same value. Then every place a value
could escape to is scanned for every seeded value: the worker logs, the CLI's outputs
(status, quarantine, its CSV export, verify, report, audit), every text in the ledger
(raw quarantined values and pre-images aside: they are the data, kept on purpose, and
readable only by the roles that may), every key and value in the session's Redis
database, and the Celery events Flower shows (task arguments and results).
"""

from __future__ import annotations

import csv
import json
import re
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from celery import Celery
from psycopg import sql

from tests.conftest import WorkerPool, ferry
from tests.helpers import launch, ledger_id, spec_file, wait_run
from workers.progress import errors_key

GARBAGE_SSN = "123-45-6789"
FIRST = ("Zebulon", "Philippa", "Octavius", "Marisol", "Thaddeus", "Ingrid")
LAST = ("Quackenbush", "Featherstone", "Vandermolen", "Okonkwo-Reyes", "Lindqvist")

SPEC = """
rules = [
    ValidationRule(field="dob", type="range", condition="1900-01-01..today",
                   error_message="implausible birth date", action="skip"),
    ValidationRule(field="name_norm", type="format", condition="[A-Z' -]+",
                   error_message="name with digits", action="skip"),
]
sqlb = Backfill(table="phi_pat", key="id", reads=["name", "dob_text"],
                writes=["dob", "name_norm"],
                sql={"dob": "dob_text::date", "name_norm": "upper(name)"},
                rules=rules, chunk_size=40, phi=["name", "ssn", "dob_text", "dob", "name_norm"])

def to_dates(df):
    return pd.DataFrame({"id": df["id"],
                         "dob2": pd.to_datetime(df["dob_text"], format="mixed").dt.date})

pandasb = Backfill(table="phi_pat", key="id", reads=["dob_text"], writes=["dob2"],
                   transform=to_dates, chunk_size=40)
"""


def _seed(db: psycopg.Connection[Any]) -> list[str]:
    """300 patients; returns every PHI value seeded (as the sinks could render it)."""
    db.execute("DROP TABLE IF EXISTS phi_pat")
    db.execute(
        "CREATE TABLE phi_pat (id integer PRIMARY KEY, name text, ssn text, dob_text text, "
        "dob date, name_norm text, dob2 date)"
    )
    rows = []
    for i in range(1, 301):
        name = f"{FIRST[i % len(FIRST)]} {LAST[i % len(LAST)]}"
        if i % 50 == 7:
            name += f" {i}rd"  # quarantined: a name with digits
        ssn = f"{500 + i:03d}-{10 + i % 89:02d}-{1000 + i:04d}"
        dob = f"{1930 + i % 60}-{1 + i % 12:02d}-{1 + i % 28:02d}"
        if i % 45 == 11:
            dob = f"18{10 + i % 80}-0{1 + i % 9}-1{i % 9}"  # quarantined: implausible
        rows.append((i, name, ssn, dob))
    rows[290] = (291, rows[290][1], GARBAGE_SSN, GARBAGE_SSN)  # fails the last chunk's cast
    with db.cursor() as cur:
        cur.executemany(
            "INSERT INTO phi_pat (id, name, ssn, dob_text) VALUES (%s, %s, %s, %s)", rows
        )
    values = {GARBAGE_SSN}
    for _, name, ssn, dob in rows:
        values |= {name, name.upper(), ssn, dob}
        y, m, d = dob.split("-")  # a date rendered by Python: datetime.date(1961, 7, 23)
        values |= {f"{int(y)}, {int(m)}, {int(d)}"}
    values |= {last for last in LAST} | {last.upper() for last in LAST}
    return sorted(values)


def _leaks(text: str, values: list[str], where: str) -> list[str]:
    return [f"{where}: {v!r}" for v in values if v in text]


class EventTap:
    """The Celery events Flower consumes (task-sent/received/succeeded/failed), captured."""

    def __init__(self, redis_url: str) -> None:
        self.app = Celery("phi-tap", broker=redis_url)
        self.events: list[dict[str, Any]] = []
        self.error: Exception | None = None
        self.ready = threading.Event()
        self._receiver: Any = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with self.app.connection() as conn:
                self._receiver = self.app.events.Receiver(conn, handlers={"*": self.events.append})
                self.ready.set()
                self._receiver.capture(limit=None, timeout=None, wakeup=False)
        except Exception as exc:  # reported by the test, not lost in a thread
            self.error = exc
            self.ready.set()

    def __enter__(self) -> EventTap:
        self._thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(timeout=10)


@pytest.fixture
def tap(redis_url: str) -> Iterator[EventTap]:
    with EventTap(redis_url) as events:
        yield events


def _ledger_texts(db: psycopg.Connection[Any]) -> dict[str, str]:
    """Every row of every ledger table as text, the data kept on purpose aside."""
    tables = [
        r[0]
        for r in db.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'ferry' AND c.relkind IN ('r', 'p') "
            "AND c.relname !~ '^backup_[0-9]+$' AND c.relname NOT IN ('quarantine_values') "
            "ORDER BY 1"
        )
    ]
    assert {"runs", "chunks", "quarantine", "audit_log", "alerts"} <= set(tables)
    return {
        t: "\n".join(
            str(r[0])
            for r in db.execute(
                sql.SQL("SELECT x::text FROM {} AS x").format(sql.Identifier("ferry", t))
            )
        )
        for t in tables
    }


def _redis_texts(url: str) -> str:
    """Every key and value of the session's Redis database, whatever its type."""
    client = redis.Redis.from_url(url)
    parts: list[str] = []
    for key in client.scan_iter(count=1000):
        parts.append(repr(key))
        kind = client.type(key).decode()
        if kind == "string":
            parts.append(repr(client.get(key)))
        elif kind == "hash":
            parts.append(repr(client.hgetall(key)))
        elif kind == "list":
            parts.append(repr(client.lrange(key, 0, -1)))
        elif kind == "set":
            parts.append(repr(client.smembers(key)))
        elif kind == "zset":
            parts.append(repr(client.zrange(key, 0, -1, withscores=True)))
        elif kind == "stream":
            parts.append(repr(client.xrange(key)))
        else:
            raise AssertionError(f"unexpected Redis type {kind} for {key!r}")
    return "\n".join(parts)


def _cli(env: dict[str, str], *args: str) -> str:
    proc = ferry(*args, env=env)
    assert proc.returncode in (0, 1), f"ferry {' '.join(args)}: {proc.stderr}"
    return proc.stdout + proc.stderr


def test_no_phi_value_reaches_any_sink(
    db: psycopg.Connection[Any],
    env: dict[str, str],
    redis_url: str,
    workers: WorkerPool,
    tap: EventTap,
    tmp_path: Path,
) -> None:
    values = _seed(db)
    path = spec_file(tmp_path, SPEC)
    launched = ferry("launch", f"{path}:sqlb", "--json", env=env)
    assert launched.returncode == 0, launched.stderr
    sql_run = int(json.loads(launched.stdout)["run_id"])
    assert wait_run(db, sql_run) == "failed"
    pandas_run = launch(env, f"{path}:pandasb")
    assert wait_run(db, pandas_run) == "failed"

    # the runs did what the test needs: rows quarantined, one chunk failed on the cast
    failed = db.execute(
        "SELECT error FROM ferry.chunks WHERE run_id = %s AND status = 'failed'", (sql_run,)
    ).fetchall()
    assert len(failed) == 1 and failed[0][0].startswith("2200"), failed  # a datetime error
    quarantined = db.execute(
        "SELECT count(*) FROM ferry.quarantine WHERE run_id = %s", (sql_run,)
    ).fetchone()
    assert quarantined is not None and quarantined[0] >= 8
    stored = db.execute("SELECT spec->'extra'->'phi' FROM ferry.runs WHERE id = %s", (sql_run,))
    assert stored.fetchone() == (["dob", "dob_text", "name", "name_norm", "ssn"],)
    pandas_failed = db.execute(
        "SELECT error FROM ferry.chunks WHERE run_id = %s AND status = 'failed'", (pandas_run,)
    ).fetchall()
    assert pandas_failed and "transform raised" in pandas_failed[0][0], pandas_failed

    # the scan would see a leak: the data kept on purpose holds the seeded values, and an
    # unmasking export (this session's role may unmask) shows them
    raw = "\n".join(str(r[0]) for r in db.execute("SELECT value FROM ferry.quarantine_values"))
    assert _leaks(raw, values, "raw"), "the needles do not match the seeded values"
    unmasked = tmp_path / "unmasked.csv"
    _cli(env, "quarantine", str(sql_run), "--export", str(unmasked), "--unmask")
    assert _leaks(unmasked.read_text(), values, "unmasked export")

    leaks: list[str] = []
    sinks: dict[str, str] = {"launch": launched.stdout + launched.stderr}
    sinks["plan"] = _cli(env, "plan", f"{path}:sqlb")
    sinks["plan --json"] = _cli(env, "plan", f"{path}:pandasb", "--json")
    for run in (sql_run, pandas_run):
        sinks[f"status {run}"] = _cli(env, "status", str(run), "--json")
        sinks[f"status text {run}"] = _cli(env, "status", str(run))
        sinks[f"verify {run}"] = _cli(env, "verify", str(run), "--json")
        md, html = tmp_path / f"r{run}.md", tmp_path / f"r{run}.html"
        sinks[f"report {run}"] = _cli(env, "report", str(run), "--md", str(md), "--html", str(html))
        sinks[f"report.md {run}"] = md.read_text()
        sinks[f"report.html {run}"] = html.read_text()
    sinks["quarantine"] = _cli(env, "quarantine", str(sql_run))
    sinks["quarantine --json"] = _cli(env, "quarantine", str(sql_run), "--json")
    csv_path = tmp_path / "q.csv"
    sinks["quarantine --export"] = _cli(env, "quarantine", str(sql_run), "--export", str(csv_path))
    sinks["quarantine.csv"] = csv_path.read_text()
    assert len(sinks["quarantine.csv"].splitlines()) == quarantined[0] + 1
    sinks["audit list"] = _cli(env, "audit", "list", "--json")
    for where, text in sinks.items():
        leaks += _leaks(text, values, where)

    # the ledger, every table but the data kept on purpose (raw quarantine, pre-images)
    for table, text in _ledger_texts(db).items():
        leaks += _leaks(text, values, f"ferry.{table}")

    # every Redis key and value: progress, error streams, heartbeats, throttle, Celery results
    in_redis = _redis_texts(redis_url)
    assert errors_key(ledger_id(db), sql_run) in in_redis, "nothing scanned in Redis"
    leaks += _leaks(in_redis, values, "redis")

    # the workers' log lines (INFO: every task, retry, failure)
    logs = workers.logs()
    assert "succeeded" in logs and "failed" in logs
    leaks += _leaks(logs, values, "worker logs")

    # the events Flower shows: task arguments are (run, chunk) numbers, results are counts
    assert tap.error is None, f"the event capture stopped: {tap.error!r}"
    own = [e for e in tap.events if e.get("type", "").startswith("task-")]
    sent = [e for e in own if e["type"] in ("task-sent", "task-received")]
    assert sent, "no task events captured"
    for event in sent:
        assert re.fullmatch(r"[\[(]\d+, -?\d+[\])]", event["args"]), event["args"]
        # the only keyword: the ledger's identity (workers.identity), never a value
        assert event.get("kwargs") in (f"{{'ledger': '{ledger_id(db)}'}}", None), event
    leaks += _leaks(json.dumps(own, default=str), values, "celery events")

    assert not leaks, "\n".join(leaks[:40])


KEYED_SPEC = """
b = Backfill(table="phi_keyed", key="ssn", reads=["weight_lb"], writes=["weight_kg"],
             sql={"weight_kg": "round(weight_lb / 2.2046, 1)"}, chunk_size=30,
             rules=[ValidationRule(field="weight_kg", type="range", condition="1..300",
                                   error_message="implausible weight", action="skip")])
"""


def test_a_phi_key_is_masked_in_keys_and_boundaries(
    db: psycopg.Connection[Any], env: dict[str, str], workers: WorkerPool, tmp_path: Path
) -> None:
    """An SSN as the key, classified project-wide (FERRY_PHI_COLUMNS): row keys and chunk
    boundaries are values too, masked in every listing unless unmasked with the privilege."""
    db.execute("DROP TABLE IF EXISTS phi_keyed")
    db.execute(
        "CREATE TABLE phi_keyed (ssn text PRIMARY KEY, weight_lb numeric, weight_kg numeric)"
    )
    ssns = [f"{600 + i:03d}-{20 + i % 70:02d}-{3000 + i:04d}" for i in range(100)]
    with db.cursor() as cur:
        cur.executemany(
            "INSERT INTO phi_keyed VALUES (%s, %s, NULL)",
            [(s, 9000 if i % 9 == 4 else 120 + i) for i, s in enumerate(ssns)],
        )
    classified = {**env, "FERRY_PHI_COLUMNS": "weight_lb, public.phi_keyed.ssn, other.ssn"}
    path = spec_file(tmp_path, KEYED_SPEC)
    run_id = launch(classified, f"{path}:b")
    assert wait_run(db, run_id) == "completed_with_errors"
    stored = db.execute("SELECT spec->'extra'->'phi' FROM ferry.runs WHERE id = %s", (run_id,))
    assert stored.fetchone() == (["ssn", "weight_lb"],)

    texts = {
        "quarantine": _cli(env, "quarantine", str(run_id)),
        "quarantine --json": _cli(env, "quarantine", str(run_id), "--json"),
        "verify": _cli(env, "verify", str(run_id), "--json"),
    }
    md = tmp_path / "keyed.md"
    _cli(env, "report", str(run_id), "--md", str(md))
    texts["report"] = md.read_text()
    masked = tmp_path / "keyed.csv"
    _cli(env, "quarantine", str(run_id), "--export", str(masked))
    texts["export"] = masked.read_text()
    leaks = [leak for where, text in texts.items() for leak in _leaks(text, ssns, where)]
    assert not leaks, "\n".join(leaks)
    listing = json.loads(texts["quarantine --json"])
    assert listing["phi"] == ["ssn", "weight_lb"] and listing["rows"] == 11
    assert all(e.startswith("***") for r in listing["rules"] for e in r["examples"])
    assert "PHI columns" in texts["report"] and "ssn, weight_lb" in texts["report"]

    raw = tmp_path / "keyed-raw.csv"
    _cli(env, "quarantine", str(run_id), "--export", str(raw), "--unmask")
    assert len(_leaks(raw.read_text(), ssns, "unmasked")) == 11  # the privilege shows them

    # a role that may neither unmask nor read the masking key: keys bare ***, unmask refused
    # (and the attempt audited)
    viewer = f"ferry_phi_viewer_{uuid.uuid4().hex[:6]}"
    db.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(viewer)))
    try:
        for grant in (
            "GRANT USAGE ON SCHEMA ferry TO {}",
            "GRANT SELECT ON ferry.runs, ferry.quarantine, ferry.ledger_version TO {}",
            "GRANT INSERT ON ferry.audit_log TO {}",
            "GRANT USAGE ON SEQUENCE ferry.audit_log_id_seq TO {}",
        ):
            db.execute(sql.SQL(grant).format(sql.Identifier(viewer)))
        as_viewer = {
            **env,
            "FERRY_DATABASE_URL": env["FERRY_DATABASE_URL"].replace("postgres@", f"{viewer}@"),
        }
        seen = tmp_path / "viewer.csv"
        _cli(as_viewer, "quarantine", str(run_id), "--export", str(seen))
        rows = list(csv.DictReader(seen.read_text().splitlines()))
        assert len(rows) == 11 and {r["row_key"] for r in rows} == {"***"}
        assert {r["phi"] for r in rows} == {"False"}  # weight_kg is not classified
        refused = ferry(
            "quarantine", str(run_id), "--export", str(tmp_path / "v.csv"), "--unmask",
            env=as_viewer,
        )  # fmt: skip
        assert refused.returncode == 1 and "may not unmask" in refused.stderr
        assert not (tmp_path / "v.csv").exists()
        attempts = db.execute(
            "SELECT actor FROM ferry.audit_log WHERE run_id = %s "
            "AND action = 'quarantine_unmask_refused'",
            (run_id,),
        ).fetchall()
        assert attempts == [("pytest",)]
    finally:
        db.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(viewer)))
        db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(viewer)))


RAISING_SPEC = """
def normalise(df, at):
    hit = df[df["id"] == at]
    if len(hit):
        row = hit.iloc[0]
        raise ValueError(f"cannot normalise {row['ssn']} for patient {row['name']}")
    return pd.DataFrame({"id": df["id"], "name_norm": df["name"].str.upper()})

early = Backfill(table="phi_raise", key="id", reads=["name", "ssn"], writes=["name_norm"],
                 transform=lambda df: normalise(df, 3), chunk_size=40)
late = Backfill(table="phi_raise", key="id", reads=["name", "ssn"], writes=["name_norm"],
                transform=lambda df: normalise(df, 250), chunk_size=40)
"""


def test_a_users_exception_is_stored_without_the_rows_values(
    db: psycopg.Connection[Any],
    env: dict[str, str],
    redis_url: str,
    workers: WorkerPool,
    tmp_path: Path,
) -> None:
    """A transform's own message quoting a name (no digits, no quotes: no pattern finds it):
    every word of the chunk's values is masked, in the pre-flight line and the worker's
    failure alike; the class and the message's own words remain."""
    db.execute("DROP TABLE IF EXISTS phi_raise")
    db.execute(
        "CREATE TABLE phi_raise (id integer PRIMARY KEY, name text, ssn text, name_norm text)"
    )
    names = [f"{FIRST[i % 6]} {LAST[i % 5]}son" for i in range(300)]
    with db.cursor() as cur:
        cur.executemany(
            "INSERT INTO phi_raise VALUES (%s, %s, %s, NULL)",
            [(i, names[i - 1], f"{700 + i:03d}-55-{4000 + i:04d}") for i in range(1, 301)],
        )
    needles = [names[2], names[249], *names[2].split(), *names[249].split(), "703-55", "950-55"]
    path = spec_file(tmp_path, RAISING_SPEC)

    plan = ferry("plan", f"{path}:early", env=env)
    assert plan.returncode != 0
    assert "ValueError: cannot normalise *** for patient *** ***" in plan.stderr, plan.stderr

    run_id = launch(env, f"{path}:late")
    assert wait_run(db, run_id) == "failed"
    (error,) = db.execute(
        "SELECT error FROM ferry.chunks WHERE run_id = %s AND status = 'failed'", (run_id,)
    ).fetchone() or (None,)
    assert error is not None and "cannot normalise *** for patient *** ***" in error
    status = _cli(env, "status", str(run_id)) + _cli(env, "status", str(run_id), "--json")
    sinks = {
        "plan": plan.stdout + plan.stderr,
        "ledger": "\n".join(_ledger_texts(db).values()),
        "status": status,
        "redis": _redis_texts(redis_url),
        "worker logs": workers.logs(),
    }
    leaks = [leak for where, text in sinks.items() for leak in _leaks(text, needles, where)]
    assert not leaks, "\n".join(leaks)
