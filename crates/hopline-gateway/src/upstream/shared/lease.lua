-- hopline shared egress budget: one atomic lease call (Redis >= 5, scripts replicate effects).
--
-- Any client can take part in a scope by calling this script with the same keys; the
-- budgets are the caller's (gateways of one scope should agree on them).
--
-- KEYS[1]  hopline:{<scope>}:rate      string: GCRA theoretical arrival time, µs (Redis clock)
-- KEYS[2]  hopline:{<scope>}:held      hash:   holder id -> in-flight slots held
-- KEYS[3]  hopline:{<scope>}:expiry    zset:   holder id -> when its slots lapse, ms
--
-- ARGV[1]  holder id (unique per process, e.g. host:pid:start)
-- ARGV[2]  new connections per second, the scope's budget (0: no rate limit)
-- ARGV[3]  GCRA burst, in connections (tokens the scope may take at once)
-- ARGV[4]  connection tokens wanted now (0: none)
-- ARGV[5]  in-flight slots, the scope's budget (0: no in-flight limit)
-- ARGV[6]  slots the holder has in use (kept whatever the budget: they are in flight)
-- ARGV[7]  slots the holder wants to hold (in use plus spare)
-- ARGV[8]  how long the holding lasts unless renewed, ms
--
-- Returns { tokens granted, µs until the next token (0 when all were granted),
--           slots now held by this holder, slots held by the others }.

local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)
local me = ARGV[1]

-- New-connection rate: GCRA. A token is due every `interval` µs; the scope may run
-- `burst` tokens ahead of the clock.
local rate = tonumber(ARGV[2])
local want = tonumber(ARGV[4])
local granted, wait = 0, 0
if rate > 0 and want > 0 then
  local interval = 1000000 / rate
  local tolerance = tonumber(ARGV[3]) * interval
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
  if tat < now_us then tat = now_us end
  local room = math.floor((now_us + tolerance - tat) / interval)
  granted = math.max(0, math.min(want, room))
  tat = tat + granted * interval
  if granted > 0 then
    local ttl_ms = math.ceil((tat - now_us) / 1000) + 1000
    redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', ttl_ms)
  end
  if granted < want then
    wait = math.max(1, math.ceil(tat + interval - tolerance - now_us))
  end
end

-- In-flight: every holder's slots, lapsing unless renewed.
local limit = tonumber(ARGV[5])
local held, others = 0, 0
if limit > 0 then
  local lapsed = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now_ms)
  for _, id in ipairs(lapsed) do
    redis.call('HDEL', KEYS[2], id)
    redis.call('ZREM', KEYS[3], id)
  end
  local all = redis.call('HGETALL', KEYS[2])
  for i = 1, #all, 2 do
    if all[i] ~= me then others = others + tonumber(all[i + 1]) end
  end
  local need = tonumber(ARGV[6])
  held = math.max(need, math.min(tonumber(ARGV[7]), limit - others))
  local ttl = tonumber(ARGV[8])
  if held > 0 then
    redis.call('HSET', KEYS[2], me, held)
    redis.call('ZADD', KEYS[3], now_ms + ttl, me)
  else
    redis.call('HDEL', KEYS[2], me)
    redis.call('ZREM', KEYS[3], me)
  end
  redis.call('PEXPIRE', KEYS[2], 2 * ttl)
  redis.call('PEXPIRE', KEYS[3], 2 * ttl)
end

return { granted, wait, held, others }
