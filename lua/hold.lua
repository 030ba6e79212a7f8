--[[ hold: set credits aside for a bounded time, to be captured, settled or released later.

KEYS[1] account hash        KEYS[5] account holds hash
KEYS[2] partition cfg hash  KEYS[6] account hold-expiry zset
KEYS[3] partition outbox    KEYS[7] partition hold-expiry index
KEYS[4] idempotency record  KEYS[8] account rate-limit state
KEYS[9]                     unused (the account scripts share one KEYS layout)

ARGV[1] hold id             ARGV[7] idempotency key ("" for none)
ARGV[2] account id          ARGV[8] request fingerprint (16 characters)
ARGV[3] amount (credits)    ARGV[9] idempotency TTL in ms
ARGV[4] time to live in ms  ARGV[10] a reservation's max overrun in credits ("" for a plain hold)
ARGV[5] resource ("" when the hold names an amount)
ARGV[6] units               ARGV[11] a reservation's policy at its deadline: release | capture
                            ARGV[12] a reservation's unit price (0: priced by amount)

Reply  {"ok", hold id, amount, expires at (ms), available after, replayed 0|1}
Record (KEYS[4]) the 16-character fingerprint, then the reply's hold, amount, expires, available,
       space-separated: what a replay answers
Errors {"err", "invalid_argument", name} {"err", "idempotency_conflict"}
       {"err", "account_not_loaded"} {"err", "account_not_found"} {"err", "account_banned"}
       {"err", "rate_limited", retry after ms} {"err", "insufficient_credits", required, available}
A hold changes `reserved`, not the balance, so it appends nothing to the outbox (holds past
their deadline that capture when they end do, see end_due_holds).
Counts against the tier's rate limit like a consume.
]]
local account, resource, idem, fp = ARGV[2], ARGV[5], ARGV[7], ARGV[8]
local hold_id = id_arg(ARGV[1])
local amount = amount_arg(ARGV[3])
local ttl = ttl_arg(ARGV[4])
local units = amount_arg(ARGV[6])
local idem_ttl = ttl_arg(ARGV[9])
local reservation = ''
if ARGV[10] ~= '' then
  local overrun, price = amount_arg(ARGV[10], 0), amount_arg(ARGV[12], 0)
  if not overrun then return {'err', 'invalid_argument', 'max_overrun'} end
  if ARGV[11] ~= 'release' and ARGV[11] ~= 'capture' then
    return {'err', 'invalid_argument', 'on_expiry'}
  end
  if not price then return {'err', 'invalid_argument', 'unit_price'} end
  reservation = '|' .. s(overrun) .. '|' .. ARGV[11] .. '|' .. s(price)
end
if not hold_id or string.find(hold_id, '|', 1, true) then
  return {'err', 'invalid_argument', 'hold_id'}
end
if string.find(resource, '|', 1, true) then return {'err', 'invalid_argument', 'resource'} end
if not amount then return {'err', 'invalid_argument', 'amount'} end
if not ttl then return {'err', 'invalid_argument', 'ttl'} end
if not units then return {'err', 'invalid_argument', 'units'} end
if not idem_ttl then return {'err', 'invalid_argument', 'idempotency_ttl'} end

local refused, first = replay(idem, fp)
if refused then return refused end
if first then return {'ok', first[1], first[2], first[3], first[4], '1'} end

local a, missing = account_fields('m', 'b', 'r', 'od', 'st', 'tier', 'g', 'rp')
if not a then return missing end
if a[5] ~= 'active' then return {'err', 'account_banned'} end
local w, r, od = wallet(a[1], a[2], a[7], a[6], a[8]), tonumber(a[3]), tonumber(a[4])

local now = now_us()
local now_in_ms = math.floor(now / 1000)

local new_tat = nil
local limit = tier_rate(a[6])
if limit then
  rate_start(limit, now)
  local admitted, retry_ms = rate_admit(limit, now)
  if not admitted then return {'err', 'rate_limited', s(retry_ms)} end
  new_tat = admitted
end

r = expire_due(account, now_in_ms, r, w, od)

local available = wallet_balance(w) - r + od
if available < amount then
  wallet_keep(w)
  return {'err', 'insufficient_credits', s(amount), s(available)}
end
if redis.call('HEXISTS', KEYS[5], hold_id) == 1 then
  wallet_keep(w)
  return {'err', 'invalid_argument', 'hold_id'}
end

local expires = now_in_ms + ttl
r = r + amount
if w.changed then wallet_save(w, 'r', s(r)) else redis.call('HSET', KEYS[1], 'r', s(r)) end
redis.call('HSET', KEYS[5], hold_id,
  s(amount) .. '|' .. s(expires) .. '|' .. resource .. '|' .. s(units) .. reservation)
redis.call('ZADD', KEYS[6], expires, hold_id)
redis.call('ZADD', KEYS[7], 'LT', expires, account)
if new_tat then rate_save(new_tat, now) end

local reply = {'ok', hold_id, s(amount), s(expires), s(available - amount), '0'}
remember(idem, fp, idem_ttl, reply[2], reply[3], reply[4], reply[5])
return reply
