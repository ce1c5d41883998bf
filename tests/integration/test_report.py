"""``ferry report`` on a real run: real workers, a verification, a rollback, then the page
rendered by headless Chromium, with PHI-looking values seeded in the rows that must never show.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from coordinator.commands import Context
from coordinator.report import collect
from tests.conftest import _unavailable, ferry
from tests.helpers import launch, make_numbers_table, spec_file, wait_run
from workers.settings import Settings

pytestmark = pytest.mark.usefixtures("workers")

TABLE = "report_patients"
CHUNK = 400
ROWS = 4000
RATE = 1600
# Values a report must never contain: a name, an SSN in a quarantined value, an SSN in a column
# the run does not even read.
NAME, QUARANTINED_SSN, OTHER_SSN = "Quarrington", "078-05-1120", "219-09-9999"
SPEC = """
b = Backfill(table="{table}", key="id", reads=["a", "b", "name"], writes=["score", "code"],
             sql={{"score": "a * 3 + b", "code": "upper(trim(name))"}},
             rules=[ValidationRule(field="code", type="format", condition="^[A-Z ]+$",
                                   error_message="code must be letters", action="skip")],
             chunk_size={chunk})
"""
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


@dataclass(frozen=True)
class Reported:
    run_id: int
    html: str
    markdown: str
    html_path: Path
    quarantined: int
    rolled_back_chunk: int


@pytest.fixture(scope="module")
def reported(
    env: dict[str, str], database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Reported]:
    tmp = tmp_path_factory.mktemp("report")
    with psycopg.connect(database_url, autocommit=True) as db:
        make_numbers_table(db, TABLE, ROWS)
        db.execute(
            f"UPDATE {TABLE} SET name = CASE WHEN id % 40 = 0 THEN 'ssn {QUARANTINED_SSN}' "
            f"ELSE 'Ximena {NAME}' END, note = '{OTHER_SSN}'"
        )
        path = spec_file(tmp, SPEC.format(table=TABLE, chunk=CHUNK))
        # a rows/s budget makes the run last a few seconds: the charts get several points
        run_id = launch(env, f"{path}:b", "--rows-per-second", str(RATE))
        assert wait_run(db, run_id) == "completed_with_errors"
        ferry("verify", str(run_id), "--json", env=env, check=True)
        rolled = ferry("rollback", str(run_id), "--chunk", "3", "--wait", env=env)
        assert rolled.returncode == 0, rolled.stderr
        row = db.execute(
            "SELECT count(*) FROM ferry.quarantine WHERE run_id = %s", (run_id,)
        ).fetchone()
        assert row is not None
        html_path, md_path = tmp / "report.html", tmp / "report.md"
        proc = ferry("report", str(run_id), "--html", str(html_path), "--md", str(md_path), env=env)
        assert proc.returncode == 0, proc.stderr
        yield Reported(
            run_id=run_id,
            html=html_path.read_text(),
            markdown=md_path.read_text(),
            html_path=html_path,
            quarantined=int(row[0]),
            rolled_back_chunk=3,
        )


def test_no_phi_in_either_report(reported: Reported) -> None:
    assert reported.quarantined == ROWS // 40
    for text in (reported.html, reported.markdown):
        lowered = text.lower()
        for secret in (NAME.lower(), QUARANTINED_SSN, OTHER_SSN, "ximena"):
            assert secret not in lowered
        assert "***" not in text  # not even masked quarantine examples: counts only


def test_report_holds_every_section_with_ledger_figures(
    reported: Reported, db: psycopg.Connection[Any]
) -> None:
    html, md = reported.html, reported.markdown
    for heading in (
        "Overview",
        "Specification",
        "Validation rules",
        "Timeline",
        "Throughput",
        "Error rate",
        "Chunk durations",
        "Quarantine by rule (counts only)",
        "Verification",
        "Rollback history",
    ):
        assert f"<h2>{heading}</h2>" in html
        assert f"\n## {heading}\n" in md
    # spec and rules as launched
    assert "a * 3 + b" in md and "upper(trim(name))" in md and "^[A-Z ]+$" in md
    assert f"| chunk size | {CHUNK} |" in md
    # who launched it: the audit row's actor
    actor = db.execute(
        "SELECT actor FROM ferry.audit_log WHERE run_id = %s AND action = 'launch'",
        (reported.run_id,),
    ).fetchone()
    assert actor is not None and f"| launched by | {actor[0]} on " in md
    # quarantine counts by rule, from the ledger
    assert re.search(
        rf"\| 0 \| code \| format \| code must be letters \| {reported.quarantined} \|", md
    )
    # one verification (passed), one rollback of chunk 3
    verification = re.findall(r"^\| \S+ \| pytest \| (yes|no) \| yes \|", md, re.MULTILINE)
    assert verification == ["yes"]
    assert re.search(r"\| pytest \| rollback \| chunk=3, chunks=1, force=no \|", md)
    # the timeline orders launch, verify and rollback as they happened
    actions = [a for a in re.findall(r"\| pytest \| (\w+) \|", md) if a != "rollback"] + ["x"]
    assert actions.index("launch") < actions.index("verify")
    # escaped: the rule's "<" or "&" never reaches the page raw
    assert "<script" not in html


def test_series_account_for_every_row(
    env: dict[str, str], reported: Reported, db: psycopg.Connection[Any]
) -> None:
    ctx = Context(Settings.from_env(env))
    try:
        data = collect(ctx, reported.run_id)
    finally:
        ctx.close()
    series = data["series"]
    width = series["bucket_seconds"]
    assert series["seconds"][-1] == pytest.approx(width * len(series["seconds"]), abs=1e-3)
    rows = sum(r * width for r in series["rows_per_second"])
    assert rows == pytest.approx(data["totals"]["rows"]["processed"], rel=1e-3)
    timed = db.execute(
        "SELECT count(*) FROM ferry.chunks WHERE run_id = %s AND duration_ms IS NOT NULL",
        (reported.run_id,),
    ).fetchone()
    assert timed is not None and timed[0] >= ROWS // CHUNK
    assert sum(b["count"] for b in data["durations"]) == timed[0]
    busy = [r for r in series["rows_per_second"] if r > 0]
    assert len(busy) >= 3
    # every bucket's error rate is the quarantined share of rows there: 1 in 40
    assert [e for e in series["error_rate"] if e] == pytest.approx(
        [1 / 40] * len([e for e in series["error_rate"] if e]), rel=0.2
    )


def _chromium() -> str:
    """Debian's chromium (or FERRY_TEST_CHROMIUM): skipped locally without it, failed in CI."""
    wanted = (
        os.environ.get("FERRY_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    )
    if not os.access(wanted, os.X_OK):
        _unavailable(
            "chromium", FileNotFoundError(f"{wanted} not found (apt-get install chromium)")
        )
    return wanted


def test_report_renders_in_headless_chromium(reported: Reported, tmp_path: Path) -> None:
    binary = _chromium()
    base = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    url = reported.html_path.resolve().as_uri()
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    rendered = dom.stdout
    assert f"Ferry run {reported.run_id}" in rendered
    # three charts, each with drawn marks: two lines each, and the histogram's bars
    assert rendered.count("<svg") == 3
    assert rendered.count("<polyline") == 4
    assert rendered.count("<rect") >= 1
    for points in re.findall(r'<polyline[^>]* points="([^"]*)"', rendered):
        assert len(points.split()) >= 3
    assert NAME.lower() not in rendered.lower() and QUARANTINED_SSN not in rendered
    shot = tmp_path / "report.png"
    proc = subprocess.run(
        [*base, f"--screenshot={shot}", "--window-size=1200,2400", url],
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_report_bad_input(env: dict[str, str], reported: Reported, tmp_path: Path) -> None:
    nothing = ferry("report", str(reported.run_id), env=env)
    assert nothing.returncode == 2 and nothing.stderr.startswith("ferry: error: give --html")
    missing = ferry("report", "999999", "--md", str(tmp_path / "x.md"), env=env)
    assert missing.returncode == 2 and missing.stderr.startswith("ferry: error:")
    assert not (tmp_path / "x.md").exists()


FAIL_SPEC = """
b = Backfill(table="{table}", key="id", reads=["a", "b", "name"], writes=["score", "code"],
             sql={{"score": "a * 3 + b", "code": "upper(trim(name))"}},
             rules=[ValidationRule(field="code", type="format", condition="^[A-Z ]+$",
                                   error_message="code must be letters", action="fail")],
             chunk_size=100)
"""


def test_report_of_a_failed_run_lists_its_failed_chunks(
    db: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    table = "report_failing"
    make_numbers_table(db, table, 500)
    db.execute(
        f"UPDATE {table} SET name = CASE WHEN id = 250 THEN 'ssn {QUARANTINED_SSN}' "
        f"ELSE 'Ximena {NAME}' END"
    )
    path = spec_file(tmp_path, FAIL_SPEC.format(table=table))
    run_id = launch(env, f"{path}:b")
    assert wait_run(db, run_id) == "failed"
    failed = db.execute(
        "SELECT chunk_no, lo, hi, attempts, error_info->>'type' FROM ferry.chunks "
        "WHERE run_id = %s AND status = 'failed'",
        (run_id,),
    ).fetchall()
    assert len(failed) == 1 and int(failed[0][1]) < 250 <= int(failed[0][2])
    md_path = tmp_path / "failed.md"
    proc = ferry("report", str(run_id), "--md", str(md_path), env=env)
    assert proc.returncode == 0, proc.stderr
    md = md_path.read_text()
    chunk, lo, hi, attempts, kind = failed[0]
    assert f"| {chunk} | {lo} | {hi} | {attempts} | {kind} |" in md
    assert "| run status | failed |" in md and "| health | failed |" in md
    assert NAME.lower() not in md.lower() and QUARANTINED_SSN not in md


def test_report_of_a_run_with_no_rows(
    db: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    make_numbers_table(db, "report_empty", 50)
    path = spec_file(tmp_path, SPEC.format(table="report_empty", chunk=10))
    run_id = launch(env, f"{path}:b", "--where", "id < 0")
    assert wait_run(db, run_id) == "completed"
    html, md = tmp_path / "e.html", tmp_path / "e.md"
    proc = ferry("report", str(run_id), "--html", str(html), "--md", str(md), env=env)
    assert proc.returncode == 0, proc.stderr
    assert html.read_text().count("<svg") == 3
    text = md.read_text()
    assert "| where (literals masked) | id &lt; 0 |" in text  # no raw HTML in Markdown
    assert "| rows | processed 0, written 0, quarantined 0, warned 0 |" in text
