--[[ settle: end a reservation with its actual cost, after the upstream served the request.
Up to the held amount the cost is charged and the rest released; above it, up to the hold's
max overrun more, as far as the account's credits allow (no overdraft past its floor, and
what other holds set aside stays aside). What could not be charged is the shortfall. A cost
of 0 releases the hold.

KEYS[1] account hash        KEYS[5] account holds hash
KEYS[2] partition cfg hash  KEYS[6] account hold-expiry zset
KEYS[3] partition outbox    KEYS[7] partition hold-expiry index
KEYS[4] idempotency record  KEYS[8..9] unused (the account scripts share one KEYS layout)
KEYS[10] the hold's settled mark

ARGV[1] transaction id      ARGV[6] idempotency key ("" for none)
ARGV[2] account id          ARGV[7] request fingerprint (16 characters)
ARGV[3] hold id             ARGV[8] idempotency TTL in ms
ARGV[4] actual cost in credits ("" when given in units)
ARGV[5] actual units ("" when given in credits), priced at the hold's unit price
ARGV[9] how long the settled mark is kept, in ms

Reply  {"ok", transaction id ("-" when nothing was charged), charged, shortfall, released,
        available after, balance after, replayed 0|1}
Record (KEYS[4]) the 16-character fingerprint, then the reply's fields up to the balance,
       space-separated: what a replay answers
Errors {"err", "invalid_argument", name} {"err", "idempotency_conflict"}
       {"err", "account_not_loaded"} {"err", "account_not_found"}
       {"err", "hold_not_found"} {"err", "hold_settled"} {"err", "hold_expired", policy}
       {"err", "units_not_priced"}
       ("actual_cost" names units whose price passes 10^12 credits)
]]
local account, hold_id, idem, fp = ARGV[2], ARGV[3], ARGV[6], ARGV[7]
local txn = id_arg(ARGV[1])
local idem_ttl, mark_ttl = ttl_arg(ARGV[8]), ttl_arg(ARGV[9])
local actual, units = nil, nil
if ARGV[4] ~= '' then
  actual = amount_arg(ARGV[4], 0)
  if not actual then return {'err', 'invalid_argument', 'amount'} end
else
  units = amount_arg(ARGV[5], 0)
  if not units then return {'err', 'invalid_argument', 'units'} end
end
if not txn then return {'err', 'invalid_argument', 'transaction_id'} end
if not id_arg(hold_id) then return {'err', 'invalid_argument', 'hold_id'} end
if not idem_ttl then return {'err', 'invalid_argument', 'idempotency_ttl'} end
if not mark_ttl then return {'err', 'invalid_argument', 'settled_ttl'} end

local refused, first = replay(idem, fp)
if refused then return refused end
if first then
  return {'ok', first[1], first[2], first[3], first[4], first[5], first[6], '1'}
end

local a, missing = account_fields('m', 'b', 'r', 'od', 'g', 'tier', 'rp')
if not a then return missing end
local w, r, od = wallet(a[1], a[2], a[5], a[6], a[7]), tonumber(a[3]), tonumber(a[4])

local now = now_ms()
local stored = redis.call('HGET', KEYS[5], hold_id)
if not stored then
  if redis.call('EXISTS', KEYS[10]) == 1 then return {'err', 'hold_settled'} end
  return {'err', 'hold_not_found'}
end
local hold = hold_fields(stored)
if hold.expires <= now then
  -- Its deadline passed: its policy ends it now, as the sweep would have.
  expire_due(account, now, r, w, od)
  wallet_keep(w)
  return {'err', 'hold_expired', hold.on_expiry}
end
local ledger_units = hold.units
if units then
  if hold.price == 0 then return {'err', 'units_not_priced'} end
  if units > math.floor(MAX_AMOUNT / hold.price) then
    return {'err', 'invalid_argument', 'actual_cost'}
  end
  actual, ledger_units = units * hold.price, s(units)
end

-- Holds of the account past their deadline end first, each by its policy.
r = expire_due(account, now, r, w, od)
drop_holds(account, {hold_id})
r = r - hold.held

-- What other holds set aside stays aside: the charge never takes available below zero.
local affordable = math.max(0, wallet_balance(w) - r + od)
local charged = math.min(actual, hold.held + hold.overrun, affordable)
local released = hold.held - math.min(charged, hold.held)
local reply_txn = '-'
if charged > 0 then
  local from_monthly, draws = wallet_spend(w, charged)
  wallet_save(w, 'r', s(r))
  local extra = {'hold', hold_id}
  if draws then extra[3], extra[4] = draws[1], draws[2] end
  append_transaction(txn, account, -charged, 'spend', hold.resource, ledger_units, '', '', nil,
    wallet_balance(w), -from_monthly, idem, extra)
  reply_txn = txn
elseif w.changed then
  wallet_save(w, 'r', s(r))
else
  redis.call('HSET', KEYS[1], 'r', s(r))
end
redis.call('SET', KEYS[10], '1', 'PX', mark_ttl)

local balance = wallet_balance(w)
local reply = {'ok', reply_txn, s(charged), s(actual - charged), s(released), s(balance - r + od),
  s(balance), '0'}
remember(idem, fp, idem_ttl, reply[2], reply[3], reply[4], reply[5], reply[6], reply[7])
return reply
