--[[ consume: check and decrement an account's credits in one step, with the tier's rate limit.

KEYS[1] account hash        KEYS[5] account holds hash
KEYS[2] partition cfg hash  KEYS[6] account hold-expiry zset
KEYS[3] partition outbox    KEYS[7] partition hold-expiry index
KEYS[4] idempotency record  KEYS[8] account rate-limit state
KEYS[9]                     unused (the account scripts share one KEYS layout)

ARGV[1] transaction id      ARGV[6] description
ARGV[2] account id          ARGV[7] metadata (JSON text, "" for none)
ARGV[3] cost (credits)      ARGV[8] idempotency key ("" for none)
ARGV[4] resource            ARGV[9] request fingerprint (16 characters)
ARGV[5] units               ARGV[10] idempotency TTL in ms
ARGV[11..] more charges of the same account, 10 arguments each as above, none with an
           idempotency key: run in order, as that many calls in a row at one instant would be

Reply  {"ok", transaction id, cost, available after, balance after, replayed 0|1,
        rate limit (burst, -1 when none), rate remaining, rate reset ms}
       for several charges, an array of their replies (ok or error), in order
Record (KEYS[4]) the 16-character fingerprint, then the reply's txn, cost, available, balance,
       space-separated: what a replay answers (with no rate-limit state: a replay is not
       counted against the rate)
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

-- Every charge's arguments are checked before anything is read or written.
local n = #ARGV / 10
if n < 1 or #ARGV % 10 ~= 0 then return {'err', 'invalid_argument', 'arguments'} end
local function all(reply)  -- the same reply for every charge
  if n == 1 then return reply end
  local out = {}
  for i = 1, n do out[i] = reply end
  return out
end
local costs, units, ttls = {}, {}, {}
for i = 1, n do
  local o = (i - 1) * 10
  local cost, u, ttl = int_arg(ARGV[o + 3], 1, MAX_AMOUNT), int_arg(ARGV[o + 5], 1, MAX_AMOUNT), int_arg(ARGV[o + 10], 1, 1e11)
  local bad = nil
  if #ARGV[o + 1] < 1 or #ARGV[o + 1] > 64 then bad = 'transaction_id'
  elseif not cost then bad = 'cost'
  elseif not u then bad = 'units'
  elseif not ttl then bad = 'idempotency_ttl'
  elseif ARGV[o + 2] ~= ARGV[2] then bad = 'account_id'
  elseif n > 1 and ARGV[o + 8] ~= '' then bad = 'idempotency_key'
  end
  if bad then return all({'err', 'invalid_argument', bad}) end
  costs[i], units[i], ttls[i] = cost, u, ttl
end
local account = ARGV[2]

local idem = ARGV[8]  -- only a single charge may carry one
if idem ~= '' then
  if #ARGV[9] ~= 16 then return {'err', 'invalid_argument', 'fingerprint'} end
  local rec = redis.call('GET', KEYS[4])
  if rec then
    if string.sub(rec, 1, 16) ~= ARGV[9] then return {'err', 'idempotency_conflict'} end
    local first_txn, first_cost, first_available, first_balance = string.match(rec, '^(%S+) (%S+) (%S+) (%S+)$', 17)
    return {'ok', first_txn, first_cost, first_available, first_balance, '1', '-1', '-1', '-1'}
  end
end

local a = redis.call('HMGET', KEYS[1], 'm', 'b', 'r', 'od', 'st', 'tier')
if not a[1] then
  if redis.call('HGET', KEYS[2], 'ready') ~= '1' then return all({'err', 'account_not_loaded'}) end
  return all({'err', 'account_not_found'})
end
if a[5] ~= 'active' then return all({'err', 'account_banned'}) end
local m, b, r, od = tonumber(a[1]), tonumber(a[2]), tonumber(a[3]), tonumber(a[4])

local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)

-- GCRA over Redis TIME: admits `burst` at once, then one per `interval` microseconds.
local interval, burst, tat = 0, 0, nil
local rl = redis.call('HGET', KEYS[2], 't:' .. a[6])
if rl then
  interval, burst = string.match(rl, '^(%d+) (%d+)$')
  interval, burst = tonumber(interval), tonumber(burst)
  if interval > 0 then
    tat = tonumber(redis.call('GET', KEYS[8]) or '0')
    if tat < now_us then tat = now_us end
  end
end
local tat_moved = false

-- Lazy expiry: holds past their deadline give their credits back before we count. Nothing is
-- reserved without an open hold (a hold reserves at least 1), so r = 0 skips the look.
local expired = false
local replies, charged = {}, false
for i = 1, n do
  local o, cost = (i - 1) * 10, costs[i]
  local rl_burst, rl_remaining, rl_reset, new_tat = -1, -1, -1, nil
  local reply = nil
  if tat then
    new_tat = tat + interval
    local allow_at = new_tat - interval * burst
    if now_us < allow_at then
      reply = {'err', 'rate_limited', s(math.ceil((allow_at - now_us) / 1000))}
    else
      rl_burst = burst
      rl_remaining = math.floor((now_us - allow_at) / interval)
      rl_reset = math.ceil((new_tat - now_us) / 1000)
    end
  end
  if not reply and not expired then
    -- Lazy expiry: holds past their deadline give their credits back before we count. Nothing
    -- is reserved without an open hold (a hold reserves at least 1), so r = 0 skips the look.
    expired = true
    local due = r > 0 and redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now_ms) or {}
    if #due > 0 then
      for _, hid in ipairs(due) do
        local h = redis.call('HGET', KEYS[5], hid)
        if h then r = r - tonumber(string.match(h, '^(%d+)')) end
        redis.call('HDEL', KEYS[5], hid)
        redis.call('ZREM', KEYS[6], hid)
      end
      local head = redis.call('ZRANGE', KEYS[6], 0, 0, 'WITHSCORES')
      if head[1] then redis.call('ZADD', KEYS[7], head[2], account) else redis.call('ZREM', KEYS[7], account) end
      redis.call('HSET', KEYS[1], 'r', s(r))
    end
  end
  if not reply then
    local available = m + b - r + od
    if available < cost then
      reply = {'err', 'insufficient_credits', s(cost), s(available)}
    else
      local from_monthly = math.min(m, cost)
      m = m - from_monthly
      b = b - (cost - from_monthly)
      if new_tat then tat, tat_moved = new_tat, true end
      redis.call('XADD', KEYS[3], '*', 'id', ARGV[o + 1], 'a', account, 'amt', s(-cost), 't', 'spend',
        'res', ARGV[o + 4], 'u', s(units[i]), 'd', ARGV[o + 6], 'md', ARGV[o + 7], 'ts', s(now_ms),
        'bal', s(m + b), 'dm', s(-from_monthly), 'ik', ARGV[o + 8])
      reply = {'ok', ARGV[o + 1], s(cost), s(available - cost), s(m + b), '0', s(rl_burst),
        s(rl_remaining), s(rl_reset)}
      if idem ~= '' then
        redis.call('SET', KEYS[4], ARGV[9] .. reply[2] .. ' ' .. reply[3] .. ' ' .. reply[4] .. ' ' .. reply[5], 'PX', ttls[i])
      end
      charged = true
    end
  end
  replies[i] = reply
end

if charged then
  redis.call('HSET', KEYS[1], 'm', s(m), 'b', s(b))
  if tat_moved then redis.call('SET', KEYS[8], s(tat), 'PX', math.ceil((tat - now_us) / 1000) + 1) end
end
if n == 1 then return replies[1] end
return replies
