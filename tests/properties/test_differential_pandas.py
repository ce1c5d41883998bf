"""The differential property over pandas backfills (see test_differential.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator import commands
from tests.conftest import WorkerPool
from tests.properties.test_differential import check_mode

pytestmark = [pytest.mark.properties, pytest.mark.timeout(0)]


def test_pandas_runs_match_the_oracle(
    props_database_url: str,
    coordinator: commands.Context,
    props_pool: WorkerPool,
    spec_dir: Path,
) -> None:
    check_mode("pandas", props_database_url, coordinator, props_pool, spec_dir)
