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

-- Texts already parsed, and what they parse to. The scripts run as functions of one library,
-- whose top level runs once: these tables outlive a call. Each holds only what a pure parse
-- of the text gave (the same text always gives the same value), so a hit is the parse's own
-- answer; they hold at most PARSED_TEXTS entries each and are emptied when full. Arguments
-- repeat from call to call (a cost of 1, the same TTL), and parsing one costs Redis more than
-- the rest of its check.
local PARSED_TEXTS = 1000
-- A new table of parsed texts: `seen[text]` is what the text parsed to (see parsed()).
local function parse_cache() return {seen = {}, count = 0} end
-- Keeps `value` as what `text` parses to in `cache`, which is emptied when full; returns it.
local function parsed(cache, text, value)
  if cache.count >= PARSED_TEXTS then cache.seen, cache.count = {}, 0 end
  cache.seen[text], cache.count = value, cache.count + 1
  return value
end
local int_texts = parse_cache()  -- arguments that passed int_arg's check
local stored_texts = parse_cache()  -- integers read from hashes (num)
local rate_texts = parse_cache()  -- tier rate entries (tier_rate)
local number_texts = parse_cache()  -- numbers written as text (s)

-- An integer's canonical text, remembered (number_texts).
local function s(n)
  return number_texts.seen[n] or parsed(number_texts, n, string.format('%d', n))
end

-- The number of an integer's text as s() stored it: tonumber, remembered (stored_texts).
local function num(v)
  return stored_texts.seen[v] or parsed(stored_texts, v, tonumber(v))
end

-- A decimal integer in [lo, hi] in its canonical text (no sign on 0, no leading zero, as s()
-- writes it: the text is then stored as given, with no string.format), or nil.
local function int_arg(v, lo, hi)
  local n = v and int_texts.seen[v]  -- a text found here passed this check before
  if not n then
    if not v or #v > 17 or not (v == '0' or string.find(v, '^%-?[1-9]%d*$')) then return nil end
    n = parsed(int_texts, v, tonumber(v))
  end
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

-- remember() for a charge: its id and cost (text), available and balance after (numbers), in
-- one string.format (which costs Redis less than a format per number and a concat).
local function remember_charge(idem, fp, ttl_ms, id, cost, available, balance)
  if idem == '' then return end
  redis.call('SET', KEYS[4], string.format('%s%s %s %d %d', fp, id, cost, available, balance),
    'PX', ttl_ms)
end

-- The reply of a call of n charges that all get `reply`: it alone for one, else a list.
local function same_reply(n, reply)
  if n == 1 then return reply end
  local out = {}
  for i = 1, n do out[i] = reply end
  return out
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
  local rate = rate_texts.seen[rl]  -- {interval, burst, shadow}
  if not rate then
    local interval, burst, flag = string.match(rl, '^(%d+) (%d+)( ?%a*)$')
    rate = parsed(rate_texts, rl, {tonumber(interval), tonumber(burst), flag == ' shadow'})
  end
  if rate[1] == 0 then return nil, rate[3] end
  return {interval = rate[1], burst = rate[2]}, rate[3]
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

-- Whether the account is a member of a pool: its id is "<pool>~<name>".
local function is_member(account) return string.find(account, '~', 1, true) ~= nil end

-- Appends a transaction to the outbox (KEYS[3]) and returns its entry id. Only what cannot be
-- derived: an empty or zero field is left out (no resource means no units, "dm" 0 means the
-- monthly grant did not move), and the time is the entry id's, unless `time` (ms) is given:
-- a renewal or an opening grant sets the account's last reset to the time of its script, and
-- the ledger must read that same millisecond ("ts"; nil otherwise). `extra`, when given, is a
-- list of more fields and their values (a capture's hold, a refund's spend, a spend's grant
-- draws, a grant's terms). Fields keep one order. Every text argument is a string ('' for none).
local function append_transaction(id, account, amount, kind, resource, units, description,
                                  metadata, time, balance, monthly_delta, idem, extra)
  if type(amount) == 'number' then amount = s(amount) end  -- or its canonical text
  -- The constructor's placeholders size the array once (filled field by field, it would be
  -- reallocated three times); unpack stops at the last field set.
  local f = {'id', id, 'a', account, 'amt', amount, 't', kind, false, false, false, false,
    false, false, false, false, false, false, false, false}
  local k = 8
  if resource ~= '' then
    f[9], f[10], f[11], f[12], k = 'res', resource, 'u', units, 12
  end
  if description ~= '' then f[k + 1], f[k + 2], k = 'd', description, k + 2 end
  if metadata ~= '' then f[k + 1], f[k + 2], k = 'md', metadata, k + 2 end
  if time then f[k + 1], f[k + 2], k = 'ts', s(time), k + 2 end
  f[k + 1], f[k + 2], k = 'bal', s(balance), k + 2
  if monthly_delta ~= 0 then f[k + 1], f[k + 2], k = 'dm', s(monthly_delta), k + 2 end
  if idem ~= '' then f[k + 1], f[k + 2], k = 'ik', idem, k + 2 end
  if extra then
    for i = 1, #extra do f[k + i] = extra[i] end
    k = k + #extra
  end
  return redis.call('XADD', KEYS[3], '*', unpack(f, 1, k))
end

-- Appends an account event (tier, status, overdraft, last reset, created; a renewal adds its
-- period) to the outbox and returns its entry id. An empty last reset is left out. The event
-- of a pool's member also carries its settings: `pl` its limit (left out: none) and `pf`.
local function append_account_event(id, account, tier, status, od, rst, ca, period, pl, pf)
  local f = {'id', id, 'a', account, 't', 'account', 'tier', tier, 'st', status, 'od', od}
  if rst and rst ~= '' then f[#f + 1] = 'rst'; f[#f + 1] = rst end
  f[#f + 1] = 'ca'; f[#f + 1] = ca
  if period then f[#f + 1] = 'rp'; f[#f + 1] = period end
  if is_member(account) then
    if pl then f[#f + 1] = 'pl'; f[#f + 1] = pl end
    f[#f + 1] = 'pf'; f[#f + 1] = pf or '0'
  end
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

-- A spend order key for an expiry that never comes: later than any time in ms.
local NEVER = 1e15
-- The priority of the standing grants (monthly, purchased), and the default of explicit ones.
local STANDING_PRIORITY = 50
-- At most this many explicit grants per account: each charge of it reads them all.
local MAX_GRANTS = 100

-- The account's credits: w.m its monthly grant, w.b its purchased grant (below zero: its
-- debt), and w.grants its explicit grants in spend order, parsed from the account hash's `g`
-- field ("id|remaining|expires_ms|priority|source|amount;..."), nil when it has none (its
-- charges then take m, then b, as before grants existed). The account's tier and renewed
-- period place the monthly grant in the spend order (see wallet_monthly_expiry); a period
-- not given is read when it is needed. `key` is the account hash it is read from and saved
-- to: KEYS[1] unless given (a member's charge also spends its pool's wallet).
local function wallet(m, b, g, tier, period, key)
  local w = {m = num(m), b = num(b), tier = tier, period = period, key = key or KEYS[1]}
  w.m0, w.b0 = w.m, w.b  -- as stored: wallet_save writes only what moved
  if g and g ~= '' then
    local list = {}
    for id, rem, exp, prio, src, amt in string.gmatch(g, '([^|;]+)|(%d+)|(%d+)|(%d+)|(%a+)|(%d+)') do
      list[#list + 1] = {id = id, rem = tonumber(rem), exp = tonumber(exp), prio = tonumber(prio),
        src = src, amt = amt}
    end
    w.grants = list
  end
  return w
end

-- The wallet's balance: every grant's credits, less its debt.
local function wallet_balance(w)
  local total = w.m + w.b
  if w.grants then
    for i = 1, #w.grants do total = total + w.grants[i].rem end
  end
  return total
end

-- Whether one of the wallet's grants has an expiry (a script then needs the time).
local function wallet_expires(w)
  if not w.grants then return false end
  for i = 1, #w.grants do
    if w.grants[i].exp > 0 then return true end
  end
  return false
end

-- The credits of grants past their expiry at now (ms); reads only.
local function wallet_due(w, now)
  local due = 0
  if not w.grants then return due end
  for i = 1, #w.grants do
    local gr = w.grants[i]
    if gr.exp > 0 and gr.exp <= now then due = due + gr.rem end
  end
  return due
end

-- The transaction id of a hold captured, or a grant expired, at `now` (ms): a UUIDv7 of `now`
-- carrying the hold's or grant's own counter and random bits, so it sorts by the time of the
-- change, is the same on every replica, and is no other id (hold and grant ids are unique).
local function expiry_transaction_id(source_id, now)
  return string.format('%08x-%04x', math.floor(now / 65536), now % 65536)
    .. string.sub(source_id, 14)
end

-- Lazy expiry of grants: each explicit grant past its expiry at now (ms) leaves the wallet,
-- with an "expire" transaction in the outbox (KEYS[3]) for what was left of it. Marks the
-- wallet changed (wallet_save writes it). Returns the grants expired and their credits.
local function wallet_expire(w, account, now)
  if not w.grants or wallet_due(w, now) == 0 then return 0, 0 end
  local kept, count, credits = {}, 0, 0
  local balance = wallet_balance(w)
  for i = 1, #w.grants do
    local gr = w.grants[i]
    if gr.exp > 0 and gr.exp <= now then
      balance = balance - gr.rem
      append_transaction(expiry_transaction_id(gr.id, now), account, -gr.rem, 'expire', '', '',
        'grant expired', '', nil, balance, 0, '', {'gr', gr.id})
      count, credits = count + 1, credits + gr.rem
    else
      kept[#kept + 1] = gr
    end
  end
  w.grants, w.changed, w.order = kept, true, nil
  return count, credits
end

-- The days from 1970-01-01 to a date of the proleptic Gregorian calendar.
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local doy = math.floor((153 * ((m + 9) % 12) + 2) / 5) + d - 1
  return era * 146097 + yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy - 719468
end

-- Where the monthly grant falls in the spend order: it expires at the end of its period (the
-- account's "rp", UTC) under the tier's renewal policy "reset", never under "add".
-- Returns its expiry in ms, or NEVER.
local function wallet_monthly_expiry(w)
  local terms = w.tier and redis.call('HGET', KEYS[2], 'r:' .. w.tier)
  if not terms or string.sub(terms, 1, 6) ~= 'reset ' then return NEVER end
  local y, mo = string.match(w.period or redis.call('HGET', w.key, 'rp') or '',
    '^(%d%d%d%d)%-(%d%d)$')
  if not terms or string.sub(terms, 1, 6) ~= 'reset ' or not y then return NEVER end
  y, mo = tonumber(y), tonumber(mo) + 1
  if mo == 13 then y, mo = y + 1, 1 end
  return days_from_civil(y, mo, 1) * 86400000
end

-- The wallet's grants in spend order: priority, then soonest expiry (never last), then the
-- oldest (the standing grants first, monthly before purchased; explicit ones by id, a UUIDv7).
-- The monthly grant's expiry is looked up only when an expiring grant of its priority makes
-- it matter (else it comes first among its priority either way). Built once per script: a
-- spend only lowers what grants hold, which never changes their order.
local function spend_order(w)
  if w.order then return w.order end
  local order = {}
  if w.m > 0 then
    local mexp = NEVER
    for i = 1, #w.grants do
      local gr = w.grants[i]
      if gr.prio == STANDING_PRIORITY and gr.exp > 0 then
        mexp = wallet_monthly_expiry(w)
        break
      end
    end
    order[1] = {STANDING_PRIORITY, mexp, 0, 'm'}
  end
  if w.b > 0 then order[#order + 1] = {STANDING_PRIORITY, NEVER, 1, 'b'} end
  for i = 1, #w.grants do
    local gr = w.grants[i]
    local exp = gr.exp
    if exp == 0 then exp = NEVER end
    order[#order + 1] = {gr.prio, exp, 1 + i, gr}
  end
  table.sort(order, function(x, y)
    if x[1] ~= y[1] then return x[1] < y[1] end
    if x[2] ~= y[2] then return x[2] < y[2] end
    return x[3] < y[3]
  end)
  w.order = order
  return order
end

-- Takes `amount` from the wallet's grants in spend order; what they lack becomes debt on the
-- purchased grant. Returns what the monthly grant gave and the outbox fields naming the
-- explicit grants drawn on ({'gd', "id:credits,..."}, nil when none). A grant spent to 0
-- stays in w.grants until wallet_save leaves it out.
local function wallet_spend(w, amount)
  if not w.grants or #w.grants == 0 then
    local from_monthly = math.min(math.max(w.m, 0), amount)
    w.m, w.b = w.m - from_monthly, w.b - (amount - from_monthly)
    return from_monthly, nil
  end
  local left, from_monthly, draws = amount, 0, {}
  for _, o in ipairs(spend_order(w)) do
    if left == 0 then break end
    local source = o[4]
    if source == 'm' then
      if w.m > 0 then
        from_monthly = math.min(w.m, left)
        w.m, left = w.m - from_monthly, left - from_monthly
      end
    elseif source == 'b' then
      if w.b > 0 then
        local take = math.min(w.b, left)
        w.b, left = w.b - take, left - take
      end
    elseif source.rem > 0 then
      local take = math.min(source.rem, left)
      source.rem, left = source.rem - take, left - take
      draws[#draws + 1] = source.id .. ':' .. s(take)
    end
  end
  w.b = w.b - left
  w.changed = true
  if #draws == 0 then return from_monthly, nil end
  return from_monthly, {'gd', table.concat(draws, ',')}
end

-- Writes the wallet (m and b where they moved, g when its grants changed) and the extra
-- field/value pairs given to the account hash (w.key), in one HSET; a wallet left without
-- grants drops `g`.
local function wallet_save(w, ...)
  local f, k = {false, false, false, false, false, false, false, false}, 0  -- sized once
  if w.m ~= w.m0 then f[1], f[2], k, w.m0 = 'm', s(w.m), 2, w.m end
  if w.b ~= w.b0 then f[k + 1], f[k + 2], k, w.b0 = 'b', s(w.b), k + 2, w.b end
  if (...) ~= nil then
    local extra = {...}
    for i = 1, #extra do f[k + i] = extra[i] end
    k = k + #extra
  end
  if w.changed then
    local parts = {}
    for i = 1, #w.grants do
      local gr = w.grants[i]
      if gr.rem > 0 then
        parts[#parts + 1] = gr.id .. '|' .. s(gr.rem) .. '|' .. s(gr.exp) .. '|' .. s(gr.prio)
          .. '|' .. gr.src .. '|' .. gr.amt
      end
    end
    if #parts == 0 then redis.call('HDEL', w.key, 'g')
    else f[k + 1], f[k + 2], k = 'g', table.concat(parts, ';'), k + 2 end
    w.changed = false
  end
  if k > 0 then redis.call('HSET', w.key, unpack(f, 1, k)) end
end

-- Writes the wallet if its grants changed (an expiry) though nothing was charged: a script
-- that refuses after expiring grants keeps what it expired, as its outbox rows say.
local function wallet_keep(w)
  if w.changed then wallet_save(w) end
end

-- Ends the holds of the account past their deadline at now_ms, each by its policy: released,
-- or captured for its amount (as far as the credits of the account allow, apart from what
-- other holds keep aside), with a spend in the outbox (KEYS[3]). Writes r (and the wallet
-- after a capture) to KEYS[1]. Returns r, the holds ended, the credits released and captured.
local function end_due_holds(account, now, r, w, od)
  local due = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now)
  if #due == 0 then return r, 0, 0, 0 end
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
          local cost = math.min(hold.held, math.max(0, wallet_balance(w) - r + od))
          if cost > 0 then
            local from_monthly, draws = wallet_spend(w, cost)
            local extra = {'hold', hold_id}
            if draws then extra[3], extra[4] = draws[1], draws[2] end
            append_transaction(expiry_transaction_id(hold_id, now), account, -cost, 'spend',
              hold.resource, hold.units, 'hold expired', '', nil, wallet_balance(w),
              -from_monthly, '', extra)
            captured = captured + cost
          end
        else
          released = released + hold.held
        end
      end
    end
  end
  drop_holds(account, due)
  if captured > 0 then wallet_save(w, 'r', s(r))
  else redis.call('HSET', KEYS[1], 'r', s(r)) end
  return r, #due, released, captured
end

-- Lazy expiry, as every script that changes an account does first: its grants past their
-- expiry, then its holds past their deadline (end_due_holds; nothing is reserved without an
-- open hold, so r = 0 skips the look). Returns the new r; the wallet is changed in place
-- (written by end_due_holds after a capture, else by the caller: see wallet.changed).
local function expire_due(account, now, r, w, od)
  wallet_expire(w, account, now)
  if r <= 0 then return r end
  r = end_due_holds(account, now, r, w, od)
  return r
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

-- The pool of a member (KEYS[11] is the pool's hash) as its charges see it: the pool's id,
-- wallet (saved to KEYS[11]), reserved credits and overdraft; the member's limit (nil: none),
-- what the pool paid for it in the pool's period (`pu`, counted afresh once the pool's `rp`
-- is not the `pp` it was counted in), and whether its own credits go first (read from the
-- member's hash, KEYS[1], apart from what every account script reads: other accounts' charges
-- read nothing more). Nil and the error reply when the pool is missing or banned.
local function member_pool(member)
  local pl, pf, pu, pp = unpack(redis.call('HMGET', KEYS[1], 'pl', 'pf', 'pu', 'pp'))
  local p = redis.call('HMGET', KEYS[11], 'm', 'b', 'r', 'od', 'st', 'tier', 'g', 'rp')
  if not p[1] then return nil, {'err', 'pool_not_found'} end
  if p[5] ~= 'active' then return nil, {'err', 'pool_banned'} end
  local period = p[8] or ''
  local used = 0
  if pp == period then used = tonumber(pu) or 0 end
  return {id = string.sub(member, 1, string.find(member, '~', 1, true) - 1),
    w = wallet(p[1], p[2], p[7], p[6], p[8], KEYS[11]), r = tonumber(p[3]), od = tonumber(p[4]),
    period = period, used = used, limit = tonumber(pl), own_first = pf == '1', due = 0}
end

-- What the pool may still pay for the member now: its available credits (less grants past
-- their expiry not yet expired: pool.due), within the member's limit left in the period.
local function pool_share(pool)
  local share = math.max(0, wallet_balance(pool.w) - pool.due - pool.r + pool.od)
  if pool.limit then share = math.min(share, math.max(0, pool.limit - pool.used)) end
  return share
end

-- The part of a member's charge its own credits pay (its wallet w, reserved r): none unless
-- its own credits go first, and never its overdraft.
local function member_own_share(pool, w, r)
  if not pool.own_first then return 0 end
  return math.max(0, wallet_balance(w) - r)
end

-- The transaction id of the pool's row when a charge is split between member and pool: the
-- charge's UUIDv7 with version 8, so it is derived, stable and no other transaction's id.
local function pool_part_id(id) return string.sub(id, 1, 14) .. '8' .. string.sub(id, 16) end
