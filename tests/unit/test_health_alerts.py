"""Alerts computed from a run's recent error events (pure logic, no services)."""

from __future__ import annotations

from coordinator.health import LOCK_STORM, lock_storm


def _retry(message: str) -> dict[str, str]:
    return {"kind": "retry", "message": message, "at": "0"}


def test_a_few_lock_timeouts_raise_nothing() -> None:
    events = [_retry("55P03 LockNotAvailable: canceling statement due to lock timeout")] * (
        LOCK_STORM - 1
    )
    assert lock_storm(events) is None


def test_a_storm_of_lock_timeouts_raises_an_alert() -> None:
    events = [_retry("55P03 LockNotAvailable: canceling statement due to lock timeout")] * (
        LOCK_STORM
    ) + [_retry("40P01 DeadlockDetected: deadlock detected")] * 10
    alert = lock_storm(events)
    assert alert is not None and alert["type"] == "lock_timeouts"
    assert alert["message"].startswith(f"{LOCK_STORM} lock timeouts")


def test_other_retries_are_not_lock_timeouts() -> None:
    assert lock_storm([_retry("40001 SerializationFailure: could not serialize")] * 50) is None
