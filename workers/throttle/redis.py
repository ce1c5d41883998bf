"""The Redis backend: two small Lua scripts, atomic, timed by the Redis server's clock.

No maintained library fits both needs here (``limits`` pins redis-py < 8, which
kombu no longer needs; neither offers a leased semaphore), so the scripts are
ours: a sorted set of holders scored by lease end, and a token bucket kept as
(tokens, timestamp) that may go into debt by one request. A charge (what a
chunk turned out to cost, known only after it ran) always goes into debt.
"""

from __future__ import annotations

from typing import Any

import redis

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
redis.call('EXPIRE', KEYS[1], 3600)
return '0'
"""


def slots_key(scope: str) -> str:
    return f"ferry:slots:{scope}"


def bucket_key(scope: str) -> str:
    return f"ferry:bucket:{scope}"


class RedisLimiter:
    def __init__(self, client: Any) -> None:
        self.client = client
        self._semaphore = client.register_script(SEMAPHORE)
        self._bucket = client.register_script(BUCKET)

    @classmethod
    def from_url(cls, url: str) -> RedisLimiter:
        return cls(redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2))

    def acquire(self, scope: str, holder: str, limit: int, lease: float) -> bool:
        return bool(self._semaphore(keys=[slots_key(scope)], args=[holder, limit, lease]))

    def release(self, scope: str, holder: str) -> None:
        self.client.zrem(slots_key(scope), holder)

    def take(self, scope: str, amount: float, rate: float) -> float:
        return float(self._bucket(keys=[bucket_key(scope)], args=[amount, rate, 0]))

    def charge(self, scope: str, amount: float, rate: float) -> None:
        self._bucket(keys=[bucket_key(scope)], args=[amount, rate, 1])

    def holders(self, scope: str) -> int:
        return int(self.client.zcard(slots_key(scope)))
