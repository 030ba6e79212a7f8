--[[ capture: charge the actual cost of a hold (at most the held amount); the rest returns.

KEYS[1] account hash        KEYS[5] account holds hash
KEYS[2] partition cfg hash  KEYS[6] account hold-expiry zset
KEYS[3] partition outbox    KEYS[7] partition hold-expiry index
KEYS[4] idempotency record  KEYS[8..9] unused

ARGV[1] transaction id      ARGV[6] metadata (JSON text, "" for none)
ARGV[2] account id          ARGV[7] idempotency key ("" for none)
ARGV[3] hold id             ARGV[8] request fingerprint (16 characters)
ARGV[4] amount ("" = all)   ARGV[9] idempotency TTL in ms
ARGV[5] description

Reply  {"ok", transaction id, cost, available after, balance after, replayed 0|1}
Record (KEYS[4]) the 16-character fingerprint, then the reply's txn, cost, available, balance,
       space-separated: what a replay answers
Errors {"err", "invalid_argument", name} {"err", "idempotency_conflict"}
       {"err", "account_not_loaded"} {"err", "account_not_found"}
       {"err", "hold_not_found"} {"err", "capture_exceeds_hold", held}
       {"err", "insufficient_credits", amount, available}
The held credits were set aside, so a capture fails for lack of credits only when the balance
fell behind the hold (a renewal expired the credits it held, a lower overdraft limit): then a
capture that would leave available (balance - held + overdraft) below zero is refused and the
hold stays, to be captured for less or released. A capture never lowers available.
]]
local account, hold_id, desc, meta, idem, fp = ARGV[2], ARGV[3], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local amount = nil
if ARGV[4] ~= '' then
  amount = amount_arg(ARGV[4])
  if not amount then return {'err', 'invalid_argument', 'amount'} end
end
local txn = id_arg(ARGV[1])
local idem_ttl = ttl_arg(ARGV[9])
if not txn then return {'err', 'invalid_argument', 'transaction_id'} end
if not id_arg(hold_id) then return {'err', 'invalid_argument', 'hold_id'} end
if not idem_ttl then return {'err', 'invalid_argument', 'idempotency_ttl'} end

local refused, first = replay(idem, fp)
if refused then return refused end
if first then return {'ok', first[1], first[2], first[3], first[4], '1'} end

local a, missing = account_fields('m', 'b', 'r', 'od', 'g', 'tier', 'rp')
if not a then return missing end
local w, r, od = wallet(a[1], a[2], a[5], a[6], a[7]), tonumber(a[3]), tonumber(a[4])

local now = now_ms()
local hold = open_hold(hold_id, now)
if not hold then return {'err', 'hold_not_found'} end
local held = hold.held
if amount == nil then amount = held end
if amount > held then return {'err', 'capture_exceeds_hold', s(held)} end

-- Holds of the account past their deadline end first, each by its policy.
r = expire_due(account, now, r, w, od)
if wallet_balance(w) - amount - (r - held) + od < 0 then
  wallet_keep(w)
  return {'err', 'insufficient_credits', s(amount), s(wallet_balance(w) - (r - held) + od)}
end
drop_holds(account, {hold_id})
r = r - held

local from_monthly, draws = wallet_spend(w, amount)
local balance = wallet_balance(w)
wallet_save(w, 'r', s(r))
local extra = {'hold', hold_id}
if draws then extra[3], extra[4] = draws[1], draws[2] end
append_transaction(txn, account, -amount, 'spend', hold.resource, hold.units, desc, meta, nil,
  balance, -from_monthly, idem, extra)

local reply = {'ok', txn, s(amount), s(balance - r + od), s(balance), '0'}
remember(idem, fp, idem_ttl, reply[2], reply[3], reply[4], reply[5])
return reply
