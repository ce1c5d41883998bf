"""The cluster ring: worker hosts in network namespaces on a bridge of their own.

Built once per session (a few ip commands and two socat forwarders), torn down in a
finalizer even when a test fails. Each test gets workers of its own queue on every host,
stopped afterwards, and every link and route the test cut is restored. Locally the ring
skips when it cannot build namespaces (not root, no iproute2 or socat); under CI=true that
is a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.netns import Cluster, HostWorkers, missing_requirements


@pytest.fixture(scope="session")
def network(redis_url: str, database_url: str) -> Iterator[Cluster]:
    """Three hosts; asks for the services first, so a missing one skips before any ip command."""
    reason = missing_requirements()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the cluster tests cannot run under CI: {reason}")
        pytest.skip(reason)
    built = Cluster(3)
    try:
        yield built
    finally:
        built.close()


@pytest.fixture
def hosts(
    network: Cluster, own_env: dict[str, str], tmp_path: Path, ledger_ready: None
) -> Iterator[HostWorkers]:
    """One worker per host on the test's own queue (started by the test), healed afterwards."""
    workers = HostWorkers(network, own_env, tmp_path)
    try:
        yield workers
    finally:
        network.heal()
        workers.stop_all()
