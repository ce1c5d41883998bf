"""When one failed chunk stops its whole run: errors no retry can fix, and the breaker."""

from __future__ import annotations

import pytest

from migrations.errors import BadInput, PermanentChunkError
from workers.failures import Breaker, stop_reason
from workers.settings import Settings


def _err(code: str | None) -> PermanentChunkError:
    err = PermanentChunkError(f"{code} something")
    err.sqlstate = code
    return err


@pytest.mark.parametrize("code", ["42P01", "42703", "42501", "42883", "42804", "3F000", "0A000"])
def test_errors_no_retry_can_fix_stop_the_run_on_the_first_chunk(code: str) -> None:
    stop = stop_reason(_err(code), 7, done=0, failed=1, breaker=Breaker())
    assert stop is not None and stop[0] == "run_stopped"
    assert code in stop[1] and "chunk 7" in stop[1] and "ferry retry" in stop[1]


@pytest.mark.parametrize("code", ["22012", "23505", "22P02", None, "55P03", "40001"])
def test_data_errors_fail_their_chunk_only(code: str | None) -> None:
    assert stop_reason(_err(code), 7, done=0, failed=1, breaker=Breaker()) is None


@pytest.mark.parametrize(
    ("done", "failed", "trips"),
    [
        (0, 9, False),  # fewer than 10 settled, however bad
        (5, 5, False),  # exactly half is not more than half
        (4, 6, True),
        (100, 101, True),
        (101, 100, False),
    ],
)
def test_the_breaker_trips_past_half_of_at_least_ten(done: int, failed: int, trips: bool) -> None:
    stop = stop_reason(_err("22012"), 3, done=done, failed=failed, breaker=Breaker())
    assert (stop is not None) is trips
    if stop is not None:
        assert stop[0] == "failure_breaker" and f"{failed} of {done + failed}" in stop[1]


def test_the_breaker_off_and_configured() -> None:
    assert not Breaker(min_chunks=0).trips(0, 1000)
    assert Breaker(min_chunks=2, ratio=0.0).trips(1, 1)
    settings = Settings.from_env({"FERRY_BREAKER_MIN_CHUNKS": "50", "FERRY_BREAKER_RATIO": "0.25"})
    assert settings.breaker == Breaker(min_chunks=50, ratio=0.25)
    assert Settings.from_env({}).breaker == Breaker(min_chunks=10, ratio=0.5)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FERRY_BREAKER_RATIO", "1"),
        ("FERRY_BREAKER_RATIO", "-0.1"),
        ("FERRY_BREAKER_RATIO", "nan"),
        ("FERRY_BREAKER_MIN_CHUNKS", "-1"),
        ("FERRY_BREAKER_MIN_CHUNKS", "x"),
        ("FERRY_TRANSFORM_TIMEOUT", "0"),
        ("FERRY_TRANSFORM_TIMEOUT", "nan"),
    ],
)
def test_bad_chunk_settings_are_refused(name: str, value: str) -> None:
    with pytest.raises(BadInput, match=name):
        Settings.from_env({name: value})
