"""The Redis backend: small Lua scripts, atomic, timed by the Redis server's clock.

No maintained library fits these needs (``limits`` pins redis-py < 8, which
kombu no longer needs; none offers a leased semaphore or a line of turns), so
the scripts are ours: a sorted set of holders scored by lease end, a token
bucket kept as (tokens, timestamp) that may go into debt by one request (a
charge, what a chunk turned out to cost, known only after it ran, always goes
into debt, and is smoothed into the bucket's typical charge), and the line of
waiting chunks: two sorted sets, by arrival and by when each is due back.
"""

from __future__ import annotations

from typing import Any

import redis

from workers.identity import check

# Seconds a waiting chunk keeps its place after it was due back: a task returns a little late
# when its worker was busy with another chunk.
TURN_GRACE = 10.0

SEMAPHORE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
  redis.call('EXPIRE', KEYS[1], math.ceil(lease * 4))
  return 1
end
return 0
"""

BUCKET = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local amount = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or rate
local ts = tonumber(state[2]) or now
tokens = math.min(rate, tokens + (now - ts) * rate)
if tokens < 0 and ARGV[3] ~= '1' then
  redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', now)
  return tostring(-tokens / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tokens - amount, 'ts', now)
if ARGV[3] == '1' then  -- as smoothed() below
  local typical = tonumber(redis.call('HGET', KEYS[1], 'typical'))
  typical = typical and (0.7 * typical + 0.3 * amount) or amount
  redis.call('HSET', KEYS[1], 'typical', typical)
end
redis.call('EXPIRE', KEYS[1], 3600)
return '0'
"""


# The line of waiting chunks, in order of arrival (KEYS[1]), and when each is due back
# (KEYS[2]). A chunk already in the line keeps its place; its countdown is its place times
# the run's pace, recomputed each time it looks (so a better estimate of the pace corrects
# the line within a horizon). One not back `grace` seconds after it was due has gone.
TURN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local grace = tonumber(ARGV[5])
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - grace)
for _, m in ipairs(gone) do redis.call('ZREM', KEYS[1], m) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - grace)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, ARGV[1])
end
local place = redis.call('ZRANK', KEYS[1], ARGV[1])
local delay = math.min(tonumber(ARGV[2]) + place * tonumber(ARGV[3]), tonumber(ARGV[4]))
redis.call('ZADD', KEYS[2], now + delay, ARGV[1])
local ttl = math.ceil(tonumber(ARGV[4]) + grace) + 60
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
return tostring(delay)
"""


def smoothed(last: float | None, new: float) -> float:
    """A chunk cost smoothed over the last few chunks (the bucket script does the same)."""
    return new if last is None else 0.7 * last + 0.3 * new


# Every key carries the ledger's identity (workers.identity): scopes name runs, and run ids
# are only unique inside one ledger.
def slots_key(ledger: str, scope: str) -> str:
    return f"ferry:{check(ledger)}:slots:{scope}"


def bucket_key(ledger: str, scope: str) -> str:
    return f"ferry:{check(ledger)}:bucket:{scope}"


def line_keys(ledger: str, scope: str) -> list[str]:
    # One script touches both: the braces keep them in one hash slot of a Redis Cluster.
    tag = f"{{{check(ledger)}:{scope}}}"
    return [f"ferry:{ledger}:line:{tag}", f"ferry:{ledger}:due:{tag}"]


class RedisLimiter:
    """The limits of ledger ``ledger``'s runs."""

    def __init__(self, client: Any, ledger: str) -> None:
        self.client = client
        self.ledger = check(ledger)
        self._semaphore = client.register_script(SEMAPHORE)
        self._bucket = client.register_script(BUCKET)
        self._turn = client.register_script(TURN)

    @classmethod
    def from_url(cls, url: str, ledger: str) -> RedisLimiter:
        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        return cls(client, ledger)

    def acquire(self, scope: str, holder: str, limit: int, lease: float) -> bool:
        return bool(
            self._semaphore(keys=[slots_key(self.ledger, scope)], args=[holder, limit, lease])
        )

    def release(self, scope: str, holder: str) -> None:
        self.client.zrem(slots_key(self.ledger, scope), holder)

    def take(self, scope: str, amount: float, rate: float) -> float:
        return float(self._bucket(keys=[bucket_key(self.ledger, scope)], args=[amount, rate, 0]))

    def charge(self, scope: str, amount: float, rate: float) -> None:
        self._bucket(keys=[bucket_key(self.ledger, scope)], args=[amount, rate, 1])

    def typical(self, scope: str) -> float | None:
        value = self.client.hget(bucket_key(self.ledger, scope), "typical")
        return float(value) if value else None

    def turn(self, scope: str, member: str, earliest: float, pace: float, horizon: float) -> float:
        args = [member, earliest, pace, horizon, TURN_GRACE]
        return float(self._turn(keys=line_keys(self.ledger, scope), args=args))

    def leave(self, scope: str, member: str) -> None:
        pipe = self.client.pipeline(transaction=False)
        for key in line_keys(self.ledger, scope):
            pipe.zrem(key, member)
        pipe.execute()

    def clear_line(self, scope: str) -> None:
        self.client.delete(*line_keys(self.ledger, scope))

    def holders(self, scope: str) -> int:
        return int(self.client.zcard(slots_key(self.ledger, scope)))
