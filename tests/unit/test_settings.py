"""Settings read from the environment: defaults and refusals (no services)."""

from __future__ import annotations

import pytest

from migrations.errors import BadInput
from workers.settings import Settings


def test_chunks_commit_synchronously_unless_told_otherwise() -> None:
    assert Settings.from_env({}).synchronous_commit == "on"
    chosen = Settings.from_env({"FERRY_SYNCHRONOUS_COMMIT": "off"})
    assert chosen.synchronous_commit == "off"


def test_an_unknown_synchronous_commit_is_refused_in_one_line() -> None:
    with pytest.raises(BadInput) as refused:
        Settings.from_env({"FERRY_SYNCHRONOUS_COMMIT": "sometimes"})
    assert str(refused.value) == (
        "FERRY_SYNCHRONOUS_COMMIT must be one of off, local, remote_write, on, remote_apply"
    )


def test_numbers_are_checked() -> None:
    with pytest.raises(BadInput, match="FERRY_LOCK_TIMEOUT_MS must be a number"):
        Settings.from_env({"FERRY_LOCK_TIMEOUT_MS": "soon"})
