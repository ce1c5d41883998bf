"""Semaphore and token bucket semantics, on the in-memory limiter (no services)."""

from __future__ import annotations

import pytest

from workers.throttle import MemoryLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_semaphore_caps_and_leases_expire() -> None:
    clock = Clock()
    lim = MemoryLimiter(clock)
    assert lim.acquire("r", "a", 2, 5) and lim.acquire("r", "b", 2, 5)
    assert not lim.acquire("r", "c", 2, 5)
    assert lim.acquire("r", "a", 2, 5)  # renewal by the holder
    lim.release("r", "a")
    assert lim.acquire("r", "c", 2, 5)
    assert not lim.acquire("r", "d", 2, 5)
    clock.now += 6  # a killed holder's slot frees itself
    assert lim.acquire("r", "d", 2, 5)


def test_bucket_rate_over_time() -> None:
    clock = Clock()
    lim = MemoryLimiter(clock)
    granted = 0.0
    for _ in range(2000):  # requests of 500 rows against 1000 rows/s for ~20 s
        wait = lim.take("r", 500, 1000)
        if wait == 0:
            granted += 500
            clock.now += 0.01
        else:
            clock.now += wait
    elapsed = clock.now - 100.0
    assert abs(granted / elapsed - 1000) / 1000 < 0.15


def test_bucket_admits_chunks_larger_than_the_rate() -> None:
    clock = Clock()
    lim = MemoryLimiter(clock)
    assert lim.take("r", 5000, 1000) == 0
    wait = lim.take("r", 5000, 1000)
    assert 3.9 < wait <= 4.0
    clock.now += wait
    assert lim.take("r", 5000, 1000) == 0


def test_health_levels() -> None:
    from workers.gate import judge_health
    from workers.limits import Limits

    limits = Limits.from_json({"health": {"lock_waits": [2, 10]}})
    assert judge_health({"lock_waits": 0}, limits).level == "ok"
    soft = judge_health({"lock_waits": 3}, limits)
    assert soft.level == "soft" and "lock_waits 3 >= 2" in soft.reason
    assert judge_health({"lock_waits": 3, "replica_lag_s": 120}, limits).level == "critical"


def test_bad_limits_are_refused() -> None:
    import pytest

    from migrations.errors import BadInput
    from workers.limits import Limits

    for bad in (
        {"max_concurrency": 0},
        {"rows_per_second": -1},
        {"chunk_time": 0},
        {"health": {"nope": [1, 2]}},
        {"health": {"active": [9, 3]}},
    ):
        with pytest.raises(BadInput):
            Limits.from_json(bad)


def test_worker_over_its_memory_limit_declines_chunks() -> None:
    from workers.gate import Gate

    gate = Gate(db=None, limiter=MemoryLimiter(), lease=5, memory_mb=1)  # type: ignore[arg-type]
    decision = gate.check(1, spec=None, holder="w:1", rows=10, member="1")  # type: ignore[arg-type]
    assert decision.kind == "wait" and decision.reason == "worker memory limit"


def test_memory_progress_store() -> None:
    from workers.progress import MemoryProgress

    store = MemoryProgress()
    store.chunk_done(7, {"rows_read": 10, "chunks_done": 1})
    store.chunk_done(7, {"rows_read": 5, "chunks_done": 1})
    store.error(7, 3, "retry", "55P03 LockNotAvailable: ***")
    store.heartbeat("w1", {"worker": "w1", "cpu": 0.5})
    assert store.counters(7) == {"rows_read": 15, "chunks_done": 2}
    assert store.recent_errors(7)[0]["chunk"] == "3"
    assert store.workers() == [{"worker": "w1", "cpu": 0.5}]


def test_a_charge_goes_into_debt_and_makes_the_next_take_wait() -> None:
    """Database time is known only after a chunk ran: it is charged, then waited off."""
    now = [0.0]
    lim = MemoryLimiter(clock=lambda: now[0])
    assert lim.take("db", 0, 0.5) == 0
    lim.charge("db", 2.0, 0.5)  # a 2 s chunk against half a second per second
    lim.charge("db", 1.0, 0.5)  # charged even though already in debt
    wait = lim.take("db", 0, 0.5)
    assert wait == pytest.approx(5.0)  # 2.5 s of debt at 0.5/s
    now[0] += 5.0
    assert lim.take("db", 0, 0.5) == 0


def test_db_load_limits_round_trip_and_lift() -> None:
    from workers.limits import DEFAULT_DB_LOAD, Limits

    assert Limits.from_json(None).db_load == DEFAULT_DB_LOAD
    assert Limits.from_json({"db_load": 0}).db_load is None
    loaded = Limits(db_load=1.5)
    assert Limits.from_json(loaded.to_json()) == loaded
    assert loaded.evolve(db_load=0).db_load is None
    assert loaded.evolve(db_load=None).db_load == 1.5


def test_plan_estimate_counts_every_bound() -> None:
    from coordinator.commands import estimate_seconds
    from workers.limits import Limits

    # 100 chunks of 96 ms (+4 ms Celery): two at a time, 5 s; a db load of 0.15 makes 9.6 s
    # of chunk time last 64 s; 10,000 rows/s makes a million rows last 100 s
    assert estimate_seconds(100, 1_000_000, 96, Limits(db_load=None)) == pytest.approx(5.0)
    assert estimate_seconds(100, 1_000_000, 96, Limits(db_load=0.15)) == pytest.approx(64.0)
    slow = Limits(db_load=0.15, rows_per_second=10_000)
    assert estimate_seconds(100, 1_000_000, 96, slow) == pytest.approx(100.0)


def test_waiting_chunks_come_back_one_pace_apart_in_the_order_they_came() -> None:
    """The backlog comes back one chunk at a time, not all at once when the budget allows one."""
    clock = Clock()
    lim = MemoryLimiter(clock)
    assert [lim.turn("r", str(n), 1.0, 2.0, 30.0) for n in range(4)] == [1.0, 3.0, 5.0, 7.0]
    clock.now += 1.0
    assert lim.turn("r", "0", 0.25, 2.0, 30.0) == 0.25  # its turn, but the budget says wait
    assert lim.turn("r", "2", 0.0, 2.0, 30.0) == 4.0  # back early: keeps its place
    lim.leave("r", "0")  # it went
    assert lim.turn("r", "2", 0.0, 2.0, 30.0) == 2.0
    assert lim.turn("r", "9", 0.0, 0.5, 30.0) == 1.5  # a newcomer joins the end, at the new pace


def test_a_place_past_the_horizon_is_looked_at_again_and_kept() -> None:
    clock = Clock()
    lim = MemoryLimiter(clock)
    assert lim.turn("r", "a", 1.0, 50.0, 10.0) == 1.0
    assert lim.turn("r", "b", 1.0, 50.0, 10.0) == 10.0  # due at 51 s: looks again at 10 s
    clock.now += 10.0
    assert lim.turn("r", "b", 0.0, 50.0, 10.0) == 10.0
    lim.leave("r", "a")
    assert lim.turn("r", "b", 0.0, 50.0, 10.0) == 0.0  # first in line now


def test_chunks_that_never_came_back_leave_the_line_and_a_cleared_line_starts_afresh() -> None:
    from workers.throttle.redis import TURN_GRACE

    clock = Clock()
    lim = MemoryLimiter(clock)
    lim.turn("r", "a", 1.0, 5.0, 30.0)
    clock.now += 1.0 + TURN_GRACE + 0.1  # "a" was due back long ago: it went, or died
    assert lim.turn("r", "b", 1.0, 5.0, 30.0) == 1.0
    lim.turn("r", "c", 1.0, 5.0, 30.0)
    lim.clear_line("r")
    assert lim.turn("r", "c", 0.5, 5.0, 30.0) == 0.5


def test_charges_keep_a_typical_cost() -> None:
    lim = MemoryLimiter(Clock())
    assert lim.typical("db") is None
    lim.charge("db", 1.0, 0.5)
    lim.charge("db", 2.0, 0.5)
    assert lim.typical("db") == pytest.approx(1.3)


def test_db_load_below_one_runs_one_chunk_at_a_time() -> None:
    from workers.limits import Limits

    assert Limits(max_concurrency=4, db_load=0.15).in_flight == 1
    assert Limits(max_concurrency=4, db_load=2.5).in_flight == 3
    assert Limits(max_concurrency=2, db_load=None).in_flight == 2
    assert Limits(max_concurrency=2, db_load=8).in_flight == 2
