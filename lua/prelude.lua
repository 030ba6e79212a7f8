--[[ prelude: the rules every script shares, one copy each. The loader joins the definitions a
script names (and those they name) to the front of that script before it loads it, so the
helpers below are locals of every script that uses them; a script never defines them again (a
test fails when one does). Each definition is a top-level `local`, with its comment above it.

The account scripts share one KEYS layout, and the helpers use it:
KEYS[1] account hash        KEYS[5] account holds hash
KEYS[2] partition cfg hash  KEYS[6] account hold-expiry zset
KEYS[3] partition outbox    KEYS[7] partition hold-expiry index
KEYS[4] idempotency record  KEYS[8] account rate-limit state

Argument checks return nil for a bad value; the script replies
{"err", "invalid_argument", name} before its first write.
]]
local MAX_AMOUNT = 1000000000000
local MAX_TTL_MS = 100000000000
local MAX_ID_LENGTH = 64
local FINGERPRINT_LENGTH = 16
local HOLDS_PER_CALL = 1000  -- hold ids per HMGET, HDEL or ZREM: Lua's unpack has a limit

local function s(n) return string.format('%d', n) end

-- A decimal integer in [lo, hi], or nil.
local function int_arg(v, lo, hi)
  if not v or not string.match(v, '^%-?%d+$') or #v > 17 then return nil end
  local n = tonumber(v)
  if n < lo or n > hi then return nil end
  return n
end

-- A count of credits: 1..MAX_AMOUNT (lo = 0 for an optional grant).
local function amount_arg(v, lo) return int_arg(v, lo or 1, MAX_AMOUNT) end

-- A lifetime in milliseconds: 1..MAX_TTL_MS.
local function ttl_arg(v) return int_arg(v, 1, MAX_TTL_MS) end

-- A transaction, hold, event or spend id: 1..MAX_ID_LENGTH characters, or nil.
local function id_arg(v)
  if not v or #v < 1 or #v > MAX_ID_LENGTH then return nil end
  return v
end

-- A "YYYY-MM" period, or nil.
local function period_arg(v)
  if not v or not string.match(v, '^%d%d%d%d%-%d%d$') then return nil end
  return v
end

-- Redis TIME in microseconds.
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function now_ms() return math.floor(now_us() / 1000) end

-- The idempotency replay. With no key: nil. Else an error reply to return (a bad fingerprint,
-- a conflict), or nil and the first answer's recorded fields (nil when this is the first).
local function replay(idem, fp)
  if idem == '' then return nil end
  if #fp ~= FINGERPRINT_LENGTH then return {'err', 'invalid_argument', 'fingerprint'} end
  local rec = redis.call('GET', KEYS[4])
  if not rec then return nil end
  if string.sub(rec, 1, FINGERPRINT_LENGTH) ~= fp then return {'err', 'idempotency_conflict'} end
  local fields = {}
  for field in string.gmatch(string.sub(rec, FINGERPRINT_LENGTH + 1), '%S+') do
    fields[#fields + 1] = field
  end
  return nil, fields
end

-- Keeps what a replay answers: the fingerprint, then the fields, space-separated.
local function remember(idem, fp, ttl_ms, ...)
  if idem == '' then return end
  redis.call('SET', KEYS[4], fp .. table.concat({...}, ' '), 'PX', ttl_ms)
end

-- Whether the partition was made ready: a Redis that lost its data has no cfg hash until
-- recovery rebuilds it, and every account would look missing.
local function partition_ready() return redis.call('HGET', KEYS[2], 'ready') == '1' end

-- The account's fields (HMGET of KEYS[1]), or nil and the error reply: not loaded when the
-- partition is not ready, else not found.
local function account_fields(...)
  local a = redis.call('HMGET', KEYS[1], ...)
  if a[1] then return a end
  if not partition_ready() then return nil, {'err', 'account_not_loaded'} end
  return nil, {'err', 'account_not_found'}
end

-- The tier's entry in the cfg hash ("t:<tier>" = "<interval_us> <burst>"), nil for a tier
-- the config does not name.
local function tier_entry(tier) return redis.call('HGET', KEYS[2], 't:' .. tier) end

-- GCRA over Redis TIME: admits `burst` at once, then one per `interval` microseconds. The
-- tier's limit from its cfg entry, nil when it has none; then whether the tier is in shadow
-- mode (its entry ends with " shadow": its charges are decided, recorded, not charged).
local function tier_rate(tier)
  local rl = tier_entry(tier)
  if not rl then return nil, false end
  local interval, burst, flag = string.match(rl, '^(%d+) (%d+)( ?%a*)$')
  interval, burst = tonumber(interval), tonumber(burst)
  local shadow = flag == ' shadow'
  if interval == 0 then return nil, shadow end
  return {interval = interval, burst = burst}, shadow
end

-- Reads the limit's state (KEYS[8]): its theoretical arrival time, not before `now`.
local function rate_start(limit, now)
  local tat = tonumber(redis.call('GET', KEYS[8]) or '0')
  if tat < now then tat = now end
  limit.tat = tat
end

-- One request against the limit at `now`: nil and the retry-after ms when refused, else the
-- arrival time it moves the state to, the requests left and the ms until the state resets.
local function rate_admit(limit, now)
  local new_tat = limit.tat + limit.interval
  local allow_at = new_tat - limit.interval * limit.burst
  if now < allow_at then return nil, math.ceil((allow_at - now) / 1000) end
  return new_tat, math.floor((now - allow_at) / limit.interval), math.ceil((new_tat - now) / 1000)
end

-- Keeps the limit's state until it no longer holds anything back.
local function rate_save(tat, now)
  redis.call('SET', KEYS[8], s(tat), 'PX', math.ceil((tat - now) / 1000) + 1)
end

-- Appends a transaction to the outbox (KEYS[3]) and returns its entry id. Only what cannot be
-- derived: an empty or zero field is left out (no resource means no units, "dm" 0 means the
-- monthly bucket did not move), and the time is the entry id's, unless `time` (ms) is given:
-- a renewal or an opening grant sets the account's last reset to the time of its script, and
-- the ledger must read that same millisecond ("ts"; nil otherwise). `extra`, when given, is
-- one more field's name, with `extra_value` (a capture's hold, a refund's spend). Fields keep
-- one order. Every text argument is a string ('' for none).
local function append_transaction(id, account, amount, kind, resource, units, description,
                                  metadata, time, balance, monthly_delta, idem, extra, extra_value)
  local f = {'id', id, 'a', account, 'amt', s(amount), 't', kind}
  if resource ~= '' then f[#f + 1] = 'res'; f[#f + 1] = resource; f[#f + 1] = 'u'; f[#f + 1] = units end
  if description ~= '' then f[#f + 1] = 'd'; f[#f + 1] = description end
  if metadata ~= '' then f[#f + 1] = 'md'; f[#f + 1] = metadata end
  if time then f[#f + 1] = 'ts'; f[#f + 1] = s(time) end
  f[#f + 1] = 'bal'; f[#f + 1] = s(balance)
  if monthly_delta ~= 0 then f[#f + 1] = 'dm'; f[#f + 1] = s(monthly_delta) end
  if idem ~= '' then f[#f + 1] = 'ik'; f[#f + 1] = idem end
  if extra then f[#f + 1] = extra; f[#f + 1] = extra_value end
  return redis.call('XADD', KEYS[3], '*', unpack(f))
end

-- Appends an account event (tier, status, overdraft, last reset, created; a renewal adds its
-- period) to the outbox and returns its entry id. An empty last reset is left out.
local function append_account_event(id, account, tier, status, od, rst, ca, period)
  local f = {'id', id, 'a', account, 't', 'account', 'tier', tier, 'st', status, 'od', od}
  if rst and rst ~= '' then f[#f + 1] = 'rst'; f[#f + 1] = rst end
  f[#f + 1] = 'ca'; f[#f + 1] = ca
  if period then f[#f + 1] = 'rp'; f[#f + 1] = period end
  return redis.call('XADD', KEYS[3], '*', unpack(f))
end

-- shadow.lua keeps the account's shadow spend where the account scripts keep the idempotency
-- record (KEYS[4]) and its shadow stream where they keep the outbox (KEYS[3]).
local function shadow_spent() return tonumber(redis.call('GET', KEYS[4]) or '0') end

local function add_shadow_spend(cost) redis.call('INCRBY', KEYS[4], cost) end

-- Appends a shadow decision: what a charge would have done. An empty description is left out.
local function append_shadow(id, account, resource, units, cost, decision, available, description)
  local f = {'id', id, 'a', account, 'res', resource, 'u', units, 'c', cost,
    'dec', decision, 'av', s(available)}
  if description ~= '' then f[#f + 1] = 'd'; f[#f + 1] = description end
  return redis.call('XADD', KEYS[3], '*', unpack(f))
end

-- A hold as stored in the account's holds hash: "amount|expires_ms|resource|units", and for a
-- reservation (made by the hook's reserve routes) "|max_overrun|on_expiry|unit_price" after
-- it: what a settle may charge above the amount, "release" or "capture" at the deadline, and
-- the price of one unit when the amount was priced by units (0 otherwise).
local function hold_fields(h)
  local held, expires, resource, units, rest = string.match(h, '^(%d+)|(%d+)|([^|]*)|(%d+)(.*)$')
  local hold = {held = tonumber(held), expires = tonumber(expires), resource = resource,
                units = units, overrun = 0, on_expiry = 'release', price = 0}
  if rest ~= '' then
    local overrun, policy, price = string.match(rest, '^|(%d+)|(%a+)|(%d+)$')
    hold.overrun, hold.on_expiry, hold.price = tonumber(overrun), policy, tonumber(price)
  end
  return hold
end

-- The credits that the account's holds past their deadline at now_ms set aside and give
-- back (holds that capture at their deadline keep theirs); reads only.
local function due_release_credits(now)
  local due = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now)
  local credits = 0
  for first = 1, #due, HOLDS_PER_CALL do
    local last = math.min(first + HOLDS_PER_CALL - 1, #due)
    for _, h in ipairs(redis.call('HMGET', KEYS[5], unpack(due, first, last))) do
      if h then
        local hold = hold_fields(h)
        if hold.on_expiry ~= 'capture' then credits = credits + hold.held end
      end
    end
  end
  return credits
end

-- Drops holds from the account's holds hash and expiry zset, then scores the account in the
-- partition's hold-expiry index by its earliest hold left, or takes it out.
local function drop_holds(account, hold_ids)
  for first = 1, #hold_ids, HOLDS_PER_CALL do
    local last = math.min(first + HOLDS_PER_CALL - 1, #hold_ids)
    redis.call('HDEL', KEYS[5], unpack(hold_ids, first, last))
    redis.call('ZREM', KEYS[6], unpack(hold_ids, first, last))
  end
  local head = redis.call('ZRANGE', KEYS[6], 0, 0, 'WITHSCORES')
  if head[1] then redis.call('ZADD', KEYS[7], head[2], account)
  else redis.call('ZREM', KEYS[7], account) end
end

-- The transaction id of a hold captured at its deadline: a UUIDv7 of `now` (ms) carrying the
-- hold id's own counter and random bits, so it sorts by the time of the charge, is the same
-- on every replica, and is no other id (the hold id is unique in them).
local function expiry_transaction_id(hold_id, now)
  return string.format('%08x-%04x', math.floor(now / 65536), now % 65536)
    .. string.sub(hold_id, 14)
end

-- Takes `amount` from the account's credits, monthly ones first; returns m, b and what the
-- monthly bucket gave.
local function spend_buckets(m, b, amount)
  local from_monthly = math.min(math.max(m, 0), amount)
  return m - from_monthly, b - (amount - from_monthly), from_monthly
end

-- Ends the holds of the account past their deadline at now_ms, each by its policy: released,
-- or captured for its amount (as far as the credits of the account allow, apart from what
-- other holds keep aside), with a spend in the outbox (KEYS[3]). Writes r (and m, b after a
-- capture) to KEYS[1]. Returns r, m, b, the holds ended, the credits released and captured.
local function end_due_holds(account, now, r, m, b, od)
  local due = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now)
  if #due == 0 then return r, m, b, 0, 0, 0 end
  local released, captured = 0, 0
  for first = 1, #due, HOLDS_PER_CALL do
    local last = math.min(first + HOLDS_PER_CALL - 1, #due)
    local values = redis.call('HMGET', KEYS[5], unpack(due, first, last))
    for i = 1, last - first + 1 do
      local h = values[i]
      if h then
        local hold, hold_id = hold_fields(h), due[first + i - 1]
        r = r - hold.held
        if hold.on_expiry == 'capture' then
          local cost = math.min(hold.held, math.max(0, m + b - r + od))
          if cost > 0 then
            local from_monthly
            m, b, from_monthly = spend_buckets(m, b, cost)
            append_transaction(expiry_transaction_id(hold_id, now), account, -cost, 'spend',
              hold.resource, hold.units, 'hold expired', '', nil, m + b, -from_monthly, '',
              'hold', hold_id)
            captured = captured + cost
          end
        else
          released = released + hold.held
        end
      end
    end
  end
  drop_holds(account, due)
  if captured > 0 then redis.call('HSET', KEYS[1], 'r', s(r), 'm', s(m), 'b', s(b))
  else redis.call('HSET', KEYS[1], 'r', s(r)) end
  return r, m, b, #due, released, captured
end

-- Lazy expiry: end_due_holds, as every script that changes an account does first. Nothing
-- is reserved without an open hold (a hold reserves at least 1): r = 0 skips the look.
-- Returns the new r, m, b.
local function expire_due(account, now, r, m, b, od)
  if r <= 0 then return r, m, b end
  r, m, b = end_due_holds(account, now, r, m, b, od)
  return r, m, b
end

-- An open hold of the account (hold_fields), nil when there is none by that id or it is past
-- its deadline (expired: the sweep or a later call ends it).
local function open_hold(hold_id, now)
  local h = redis.call('HGET', KEYS[5], hold_id)
  if not h then return nil end
  local hold = hold_fields(h)
  if hold.expires <= now then return nil end
  return hold
end
