--[[ grant: give an account an explicit grant of credits, with a priority and an optional expiry.

KEYS[1] account hash        KEYS[3] partition outbox
KEYS[2] partition cfg hash  KEYS[4] idempotency record
KEYS[5..9]                  unused (the account scripts share one KEYS layout)
KEYS[10] partition grant-expiry index

ARGV[1] transaction id      ARGV[7] source: renewal | purchase | promotion | refund | adjustment
ARGV[2] account id          ARGV[8] description
ARGV[3] grant id            ARGV[9] metadata (JSON text, "" for none)
ARGV[4] amount (credits)    ARGV[10] idempotency key ("" for none)
ARGV[5] expires at, ms ("" for never; "+<ms>": that long after the script runs)
ARGV[6] priority, 0..100    ARGV[11] request fingerprint (16 characters)
                            ARGV[12] idempotency TTL in ms
                            ARGV[13] largest balance allowed

Reply  {"ok", grant id, transaction id, balance after, available after, replayed 0|1,
        outbox entry id, expires at in ms (0: never)}
Record (KEYS[4]) the 16-character fingerprint, then the reply's grant, txn, balance, available,
       entry, expiry, space-separated: what a replay answers
Errors {"err", "invalid_argument", name} {"err", "idempotency_conflict"}
       {"err", "account_not_loaded"} {"err", "account_not_found"}
       {"err", "balance_limit", balance, max} {"err", "too_many_grants", max}
The grant joins the account's `g` field in spend order; a "grant" transaction records it with
its terms (gr, gx, gp, gs). Banned accounts may be granted credits, as they may be credited.
]]
local account, gid, source, desc, meta, idem, fp =
  ARGV[2], ARGV[3], ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11]
local txn = id_arg(ARGV[1])
local amount = amount_arg(ARGV[4])
local priority = int_arg(ARGV[6], 0, 100)
local idem_ttl = ttl_arg(ARGV[12])
local max_balance = int_arg(ARGV[13], 1, 4e15)
local expires, expires_in = 0, nil
if string.sub(ARGV[5], 1, 1) == '+' then
  expires_in = int_arg(string.sub(ARGV[5], 2), 1, 1e13)
  if not expires_in then return {'err', 'invalid_argument', 'expires_at'} end
elseif ARGV[5] ~= '' then
  expires = int_arg(ARGV[5], 1, 1e14)
  if not expires then return {'err', 'invalid_argument', 'expires_at'} end
end
if not txn then return {'err', 'invalid_argument', 'transaction_id'} end
if not id_arg(gid) or not string.match(gid, '^[%w-]+$') then
  return {'err', 'invalid_argument', 'grant_id'}
end
if not amount then return {'err', 'invalid_argument', 'amount'} end
if not priority then return {'err', 'invalid_argument', 'priority'} end
if source ~= 'renewal' and source ~= 'purchase' and source ~= 'promotion'
  and source ~= 'refund' and source ~= 'adjustment' then
  return {'err', 'invalid_argument', 'source'}
end
if not idem_ttl then return {'err', 'invalid_argument', 'idempotency_ttl'} end
if not max_balance then return {'err', 'invalid_argument', 'max_balance'} end

local refused, first = replay(idem, fp)
if refused then return refused end
if first then return {'ok', first[1], first[2], first[3], first[4], '1', first[5], first[6]} end

local a, missing = account_fields('m', 'b', 'r', 'od', 'g', 'tier', 'rp')
if not a then return missing end
local w, r, od = wallet(a[1], a[2], a[5], a[6], a[7]), tonumber(a[3]), tonumber(a[4])
local now = now_ms()
-- A relative expiry counts from this script's time, so a retry under the same idempotency
-- key asks for the same grant (and replays it above) however late it comes.
if expires_in then expires = now + expires_in end
if expires > 0 and expires <= now then return {'err', 'invalid_argument', 'expires_at'} end
wallet_expire(w, account, now)
w.grants = w.grants or {}
if #w.grants >= MAX_GRANTS then
  wallet_keep(w)
  return {'err', 'too_many_grants', s(MAX_GRANTS)}
end
for i = 1, #w.grants do
  if w.grants[i].id == gid then
    wallet_keep(w)
    return {'err', 'invalid_argument', 'grant_id'}
  end
end
local balance = wallet_balance(w) + amount
if balance > max_balance then
  wallet_keep(w)
  return {'err', 'balance_limit', s(balance - amount), s(max_balance)}
end

-- In spend order: priority, then soonest expiry (never last), then id (a UUIDv7: the oldest).
local new = {id = gid, rem = amount, exp = expires, prio = priority, src = source, amt = s(amount)}
w.grants[#w.grants + 1] = new
table.sort(w.grants, function(x, y)
  if x.prio ~= y.prio then return x.prio < y.prio end
  local xe, ye = x.exp, y.exp
  if xe == 0 then xe = NEVER end
  if ye == 0 then ye = NEVER end
  if xe ~= ye then return xe < ye end
  return x.id < y.id
end)
w.changed = true
wallet_save(w)
local terms = {'gr', gid}
if expires > 0 then
  terms[3], terms[4] = 'gx', s(expires)
  redis.call('ZADD', KEYS[10], 'LT', expires, account)
end
terms[#terms + 1] = 'gp'; terms[#terms + 1] = s(priority)
terms[#terms + 1] = 'gs'; terms[#terms + 1] = source
local entry = append_transaction(txn, account, amount, 'grant', '', '', desc, meta, nil, balance, 0,
  idem, terms)

local reply = {'ok', gid, txn, s(balance), s(balance - r + od), '0', entry, s(expires)}
remember(idem, fp, idem_ttl, reply[2], reply[3], reply[4], reply[5], reply[7], reply[8])
return reply
