--[[ credit: add credits (grant, earn, refund) or correct a balance (adjust, signed).

KEYS[1] account hash        KEYS[3] partition outbox
KEYS[2] partition cfg hash  KEYS[4] idempotency record
KEYS[5..9]                  unused (the account scripts share one KEYS layout)
KEYS[10] the refund count of the spend named by ARGV[11] (untouched unless a refund)

ARGV[1] transaction id      ARGV[6] metadata (JSON text, "" for none)
ARGV[2] account id          ARGV[7] idempotency key ("" for none)
ARGV[3] amount (signed; only adjust may be negative)
ARGV[4] type: grant | earn | refund | adjust
ARGV[5] description         ARGV[8] request fingerprint (16 characters)
                            ARGV[9] idempotency TTL in ms
                            ARGV[10] largest balance allowed
ARGV[11] refund: the spend's transaction id ("" for the other types)
ARGV[12] refund: the spend's cost, as the ledger counts it ("" when not counted)
ARGV[13] refund: what the spend's refunds returned so far, as the ledger counts it
ARGV[14] refund: how long the refund count lives after this refund, in ms

Reply  {"ok", transaction id, balance after, available after, replayed 0|1, outbox entry id}
Record (KEYS[4]) the 16-character fingerprint, then the reply's txn, balance, available, entry,
       space-separated: what a replay answers
Errors {"err", "invalid_argument", name} {"err", "idempotency_conflict"}
       {"err", "account_not_loaded"} {"err", "account_not_found"}
       {"err", "balance_limit", balance, max}
       {"err", "refund_not_counted"}: no refund count in Redis and none given (ARGV[12] "")
       {"err", "refund_exceeds_spend", cost, refunded so far}
       {"err", "adjust_below_floor", available}
Credits go to the purchased grant (they do not expire; an explicit grant is grant.lua's). Banned accounts may be credited.
A refund's count lives in KEYS[10]: when it is absent the ledger's count (ARGV[12], ARGV[13])
starts it, when present it wins (a concurrent refund started it after the ledger was read).
A negative adjustment may not take available (balance - reserved + overdraft) below zero:
holds were admitted against it, and their captures would take the balance below its floor.
]]
local account, typ, desc, meta, idem, fp = ARGV[2], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local txn = id_arg(ARGV[1])
local idem_ttl = ttl_arg(ARGV[9])
local max_balance = int_arg(ARGV[10], 1, 4e15)
local spend_id = ARGV[11]
local amount
if typ == 'adjust' then
  amount = int_arg(ARGV[3], -MAX_AMOUNT, MAX_AMOUNT)
  if amount == 0 then amount = nil end
elseif typ == 'grant' or typ == 'earn' or typ == 'refund' then
  amount = amount_arg(ARGV[3])
else
  return {'err', 'invalid_argument', 'type'}
end
if not txn then return {'err', 'invalid_argument', 'transaction_id'} end
if not amount then return {'err', 'invalid_argument', 'amount'} end
if not idem_ttl then return {'err', 'invalid_argument', 'idempotency_ttl'} end
if not max_balance then return {'err', 'invalid_argument', 'max_balance'} end
local seed_cost, seed_refunded, count_ttl
if typ == 'refund' then
  if not id_arg(spend_id) then return {'err', 'invalid_argument', 'refund_of'} end
  if ARGV[12] ~= '' then
    seed_cost = amount_arg(ARGV[12])
    seed_refunded = amount_arg(ARGV[13], 0)
    if not seed_cost then return {'err', 'invalid_argument', 'spend_cost'} end
    if not seed_refunded then return {'err', 'invalid_argument', 'refunded'} end
  end
  count_ttl = ttl_arg(ARGV[14])
  if not count_ttl then return {'err', 'invalid_argument', 'refund_count_ttl'} end
elseif spend_id ~= '' then
  return {'err', 'invalid_argument', 'refund_of'}
end

local refused, first = replay(idem, fp)
if refused then return refused end
if first then return {'ok', first[1], first[2], first[3], '1', first[4]} end

local a, missing = account_fields('m', 'b', 'r', 'od', 'g', 'tier', 'rp')
if not a then return missing end
local w, r, od = wallet(a[1], a[2], a[5], a[6], a[7]), tonumber(a[3]), tonumber(a[4])
local spend_cost, refunded
if typ == 'refund' then
  local count = redis.call('HMGET', KEYS[10], 'cost', 'refunded')
  spend_cost, refunded = tonumber(count[1]), tonumber(count[2])
  if not spend_cost then spend_cost, refunded = seed_cost, seed_refunded end
  -- Not an answer but a request for the ledger's count: the call comes again with it, so
  -- nothing is written yet.
  if not spend_cost then return {'err', 'refund_not_counted'} end
end
-- Grants past their expiry go first, so the checks below count only credits still there
-- (every refusal after this point keeps what it expired: wallet_keep).
if wallet_expires(w) then wallet_expire(w, account, now_ms()) end
if typ == 'refund' and refunded + amount > spend_cost then
  wallet_keep(w)
  return {'err', 'refund_exceeds_spend', s(spend_cost), s(refunded)}
end
local before = wallet_balance(w)
local balance = before + amount
if balance > max_balance or balance < -max_balance then
  wallet_keep(w)
  return {'err', 'balance_limit', s(before), s(max_balance)}
end
if amount < 0 and balance - r + od < 0 then
  wallet_keep(w)
  return {'err', 'adjust_below_floor', s(before - r + od)}
end

w.b = w.b + amount
wallet_save(w)
local extra = nil
if typ == 'refund' then
  redis.call('HSET', KEYS[10], 'cost', s(spend_cost), 'refunded', s(refunded + amount))
  redis.call('PEXPIRE', KEYS[10], count_ttl)
  extra = {'rf', spend_id}
end
local entry = append_transaction(txn, account, amount, typ, '', '', desc, meta, nil, balance, 0,
  idem, extra)

local reply = {'ok', txn, s(balance), s(balance - r + od), '0', entry}
remember(idem, fp, idem_ttl, reply[2], reply[3], reply[4], reply[6])
return reply
