"""A backfill spread over three hosts: every row exactly once, the work really shared."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

from tests.cluster.netns import Cluster, HostWorkers
from tests.cluster.proofs import chunks_by_host, exactly_once
from tests.helpers import launch, prepare_reference, slow_spec, wait_run


def test_run_across_three_hosts(
    db: psycopg.Connection[Any],
    own_env: dict[str, str],
    network: Cluster,
    hosts: HostWorkers,
    tmp_path: Path,
) -> None:
    rows = 40_000
    _, expected = prepare_reference(db, "spread", rows)
    hosts.start_all()
    path = slow_spec(tmp_path, "spread", 1_000, 0.15)
    run_id = launch(own_env, f"{path}:b", "--max-concurrency", "3", "--db-load", "0")
    assert wait_run(db, run_id, timeout=90) == "completed", hosts.logs()[-3000:]
    exactly_once(db, "spread", run_id, expected, rows)
    shares = chunks_by_host(db, run_id)
    assert set(shares) <= {h.name for h in network.hosts}, shares  # no chunk ran elsewhere
    assert len(shares) >= 2, shares
