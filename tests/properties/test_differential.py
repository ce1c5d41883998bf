"""Randomized differential testing of whole runs, PostgreSQL as the oracle (issue 20).

Each example: a table of 5-12 columns of random type families, a key of a random type and
shape, a random SQL or pandas backfill with a random chunk size and maybe a rule, application
writes while it runs, sometimes a worker SIGKILLed mid-run; then the forward oracle, the
application's corrections, a rollback and the rollback oracle (see ``harness.py``).

CI runs a fixed-seed budget (``derandomize``); ``FERRY_PROPERTY_EXAMPLES=2000`` runs the long
campaign. A failure prints the example's reproduction: table, values, backfill, steps.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from coordinator import commands
from tests.conftest import WorkerPool
from tests.properties.conftest import broken_now, examples_budget, excluded, only_families
from tests.properties.harness import run_example
from tests.properties.oracle import Discrepancy
from tests.properties.strategies import Example, examples

pytestmark = [pytest.mark.properties, pytest.mark.timeout(0)]

_tables = itertools.count()

PROPERTY_SETTINGS = settings(
    max_examples=examples_budget(30),
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    # Shrinking replays whole runs (seconds each): minutes for one failure. On with
    # FERRY_PROPERTY_SHRINK=1 when a failure's reproduction is to be made small.
    phases=(Phase.explicit, Phase.reuse, Phase.generate)
    + ((Phase.shrink,) if os.environ.get("FERRY_PROPERTY_SHRINK") == "1" else ()),
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.function_scoped_fixture,
    ],
)


def _check(
    example: Example,
    props_database_url: str,
    coordinator: commands.Context,
    props_pool: WorkerPool,
    spec_dir: Path,
) -> None:
    log = os.environ.get("FERRY_PROPERTY_LOG")
    try:
        _run(example, props_database_url, coordinator, props_pool, spec_dir)
    except Discrepancy as exc:
        if not log:
            raise
        # a campaign that notes every discrepancy and goes on (FERRY_PROPERTY_LOG=file)
        with open(log, "a") as out:
            out.write(f"===== {example.mode}\n{exc}\n")


def _run(
    example: Example,
    props_database_url: str,
    coordinator: commands.Context,
    props_pool: WorkerPool,
    spec_dir: Path,
) -> None:
    run_example(
        example,
        url=props_database_url,
        ctx=coordinator,
        pool=props_pool,
        spec_dir=spec_dir,
        table=f"t{next(_tables)}_{example.mode}",
        check_touched_rollback="rollback_respects_app" not in broken_now(),
    )


def check_mode(
    mode: str,
    props_database_url: str,
    coordinator: commands.Context,
    props_pool: WorkerPool,
    spec_dir: Path,
) -> None:
    """The property over ``mode``'s examples (its own test module per mode, so that
    ``pytest -n 2 --dist loadfile`` runs the two side by side)."""

    @PROPERTY_SETTINGS
    @given(st.data())
    def check(data: Any) -> None:
        example = data.draw(
            examples(mode, exclude=excluded(mode), only=only_families()), label="example"
        )
        _check(example, props_database_url, coordinator, props_pool, spec_dir)

    check()


def test_sql_runs_match_the_oracle(
    props_database_url: str,
    coordinator: commands.Context,
    props_pool: WorkerPool,
    spec_dir: Path,
) -> None:
    check_mode("sql", props_database_url, coordinator, props_pool, spec_dir)
