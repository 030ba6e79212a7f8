--[[ consume: check and decrement an account's credits in one step, with the tier's rate limit.

KEYS[1] account hash        KEYS[5] account holds hash
KEYS[2] partition cfg hash  KEYS[6] account hold-expiry zset
KEYS[3] partition outbox    KEYS[7] partition hold-expiry index
KEYS[4] idempotency record  KEYS[8] account rate-limit state
KEYS[9]                     unused (the account scripts share one KEYS layout)

ARGV[1] transaction id      ARGV[6] description
ARGV[2] account id          ARGV[7] metadata (JSON text, "" for none)
ARGV[3] cost (credits)      ARGV[8] idempotency key ("" for none)
ARGV[4] resource            ARGV[9] request fingerprint
ARGV[5] units               ARGV[10] idempotency TTL in ms

Reply  {"ok", transaction id, cost, available after, balance after, replayed 0|1,
        rate limit (burst, -1 when none), rate remaining, rate reset ms}
Errors {"err", "invalid_argument", name} {"err", "idempotency_conflict"}
       {"err", "account_not_loaded"} {"err", "account_not_found"} {"err", "account_banned"}
       {"err", "rate_limited", retry after ms} {"err", "insufficient_credits", required, available}
Spends monthly credits first, then purchased ones. Writes nothing unless it charges, but
releases holds found expired.
]]
local MAX_AMOUNT = 1000000000000

local function int_arg(v, lo, hi)
  if not string.match(v, '^%-?%d+$') or #v > 17 then return nil end
  local n = tonumber(v)
  if n < lo or n > hi then return nil end
  return n
end
local function s(n) return string.format('%d', n) end

local txn, account, resource, desc, meta, idem, fp = ARGV[1], ARGV[2], ARGV[4], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local cost = int_arg(ARGV[3], 1, MAX_AMOUNT)
local units = int_arg(ARGV[5], 1, MAX_AMOUNT)
local idem_ttl = int_arg(ARGV[10], 1, 1e11)
if #txn < 1 or #txn > 64 then return {'err', 'invalid_argument', 'transaction_id'} end
if not cost then return {'err', 'invalid_argument', 'cost'} end
if not units then return {'err', 'invalid_argument', 'units'} end
if not idem_ttl then return {'err', 'invalid_argument', 'idempotency_ttl'} end

if idem ~= '' then
  local rec = redis.call('GET', KEYS[4])
  if rec then
    local sep = string.find(rec, '\n', 1, true)
    if string.sub(rec, 1, sep - 1) ~= fp then return {'err', 'idempotency_conflict'} end
    local reply = cjson.decode(string.sub(rec, sep + 1))
    reply[6] = '1'
    return reply
  end
end

local a = redis.call('HMGET', KEYS[1], 'm', 'b', 'r', 'od', 'st', 'tier')
if not a[1] then
  if redis.call('HGET', KEYS[2], 'ready') ~= '1' then return {'err', 'account_not_loaded'} end
  return {'err', 'account_not_found'}
end
if a[5] ~= 'active' then return {'err', 'account_banned'} end
local m, b, r, od = tonumber(a[1]), tonumber(a[2]), tonumber(a[3]), tonumber(a[4])

local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)

-- GCRA over Redis TIME: admits `burst` at once, then one per `interval` microseconds.
local rl_burst, rl_remaining, rl_reset, new_tat = -1, -1, -1, nil
local rl = redis.call('HGET', KEYS[2], 't:' .. a[6])
if rl then
  local interval, burst = string.match(rl, '^(%d+) (%d+)$')
  interval, burst = tonumber(interval), tonumber(burst)
  if interval > 0 then
    local tat = tonumber(redis.call('GET', KEYS[8]) or '0')
    if tat < now_us then tat = now_us end
    new_tat = tat + interval
    local allow_at = new_tat - interval * burst
    if now_us < allow_at then
      return {'err', 'rate_limited', s(math.ceil((allow_at - now_us) / 1000))}
    end
    rl_burst = burst
    rl_remaining = math.floor((now_us - allow_at) / interval)
    rl_reset = math.ceil((new_tat - now_us) / 1000)
  end
end

-- Lazy expiry: holds past their deadline give their credits back before we count. Nothing is
-- reserved without an open hold (a hold reserves at least 1), so r = 0 skips the look.
local due = r > 0 and redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now_ms) or {}
if #due > 0 then
  for _, hid in ipairs(due) do
    local h = redis.call('HGET', KEYS[5], hid)
    if h then r = r - tonumber(string.match(h, '^(%d+)')) end
    redis.call('HDEL', KEYS[5], hid)
    redis.call('ZREM', KEYS[6], hid)
  end
  local first = redis.call('ZRANGE', KEYS[6], 0, 0, 'WITHSCORES')
  if first[1] then redis.call('ZADD', KEYS[7], first[2], account) else redis.call('ZREM', KEYS[7], account) end
  redis.call('HSET', KEYS[1], 'r', s(r))
end

local available = m + b - r + od
if available < cost then
  return {'err', 'insufficient_credits', s(cost), s(available)}
end

local from_monthly = math.min(m, cost)
m = m - from_monthly
b = b - (cost - from_monthly)
redis.call('HSET', KEYS[1], 'm', s(m), 'b', s(b))
if new_tat then redis.call('SET', KEYS[8], s(new_tat), 'PX', math.ceil((new_tat - now_us) / 1000) + 1) end
redis.call('XADD', KEYS[3], '*', 'id', txn, 'a', account, 'amt', s(-cost), 't', 'spend',
  'res', resource, 'u', s(units), 'd', desc, 'md', meta, 'ts', s(now_ms),
  'bal', s(m + b), 'dm', s(-from_monthly), 'ik', idem)

local reply = {'ok', txn, s(cost), s(available - cost), s(m + b), '0', s(rl_burst), s(rl_remaining), s(rl_reset)}
if idem ~= '' then
  redis.call('SET', KEYS[4], fp .. '\n' .. cjson.encode(reply), 'PX', idem_ttl)
end
return reply
