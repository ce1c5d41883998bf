"""The line of waiting chunks as Redis keeps it: its Lua script, on the Redis server's clock."""

from __future__ import annotations

import uuid

import pytest
import redis

from workers.throttle import RedisLimiter
from workers.throttle.redis import TURN_GRACE, bucket_key, line_keys

LEDGER = uuid.uuid4().hex[:12]  # a ledger of its own: these tests need no database


@pytest.fixture
def limiter(redis_url: str) -> RedisLimiter:
    return RedisLimiter(redis.Redis.from_url(redis_url, decode_responses=True), LEDGER)


def test_waiting_chunks_are_spaced_kept_in_order_and_forgotten(limiter: RedisLimiter) -> None:
    scope = f"run:{uuid.uuid4().hex[:8]}"
    assert [limiter.turn(scope, str(n), 1.0, 2.0, 30.0) for n in range(4)] == [1, 3, 5, 7]
    assert limiter.turn(scope, "2", 0.0, 2.0, 30.0) == 4.0  # keeps its place
    limiter.leave(scope, "0")
    assert limiter.turn(scope, "2", 0.0, 2.0, 30.0) == 2.0
    assert limiter.turn(scope, "9", 0.0, 0.5, 30.0) == 1.5  # joins the end
    assert limiter.turn(scope, "far", 0.0, 60.0, 10.0) == 10.0  # looks again at the horizon
    for key in line_keys(LEDGER, scope):
        assert 0 < limiter.client.ttl(key) <= 10 + TURN_GRACE + 61  # goes away by itself
    limiter.clear_line(scope)
    assert limiter.turn(scope, "9", 0.5, 2.0, 30.0) == 0.5
    limiter.clear_line(scope)


def test_charges_keep_a_typical_cost(limiter: RedisLimiter) -> None:
    scope = f"run:{uuid.uuid4().hex[:8]}:db-time"
    assert limiter.typical(scope) is None
    limiter.charge(scope, 1.0, 0.5)
    limiter.charge(scope, 2.0, 0.5)
    assert limiter.typical(scope) == pytest.approx(1.3)
    limiter.client.delete(bucket_key(LEDGER, scope))
