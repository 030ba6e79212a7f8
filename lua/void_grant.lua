--[[ void_grant: take back what is left of an explicit grant (an admin adjustment).

KEYS[1] account hash        KEYS[3] partition outbox
KEYS[2] partition cfg hash  KEYS[4] idempotency record
KEYS[5..9]                  unused (the account scripts share one KEYS layout)

ARGV[1] transaction id      ARGV[5] idempotency key ("" for none)
ARGV[2] account id          ARGV[6] request fingerprint (16 characters)
ARGV[3] grant id            ARGV[7] idempotency TTL in ms
ARGV[4] description

Reply  {"ok", transaction id, credits voided, balance after, available after, replayed 0|1,
        outbox entry id}
Record (KEYS[4]) the 16-character fingerprint, then the reply's txn, voided, balance, available,
       entry, space-separated: what a replay answers
Errors {"err", "invalid_argument", name} {"err", "idempotency_conflict"}
       {"err", "account_not_loaded"} {"err", "account_not_found"}
       {"err", "grant_not_found"}: no such explicit grant (spent, expired, voided, or never)
An "adjust" transaction for what was left records the void, naming the grant (gr). Voiding
may take available credits below zero (what holds set aside is not protected).
]]
local account, gid, desc, idem, fp = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local txn = id_arg(ARGV[1])
local idem_ttl = ttl_arg(ARGV[7])
if not txn then return {'err', 'invalid_argument', 'transaction_id'} end
if not id_arg(gid) then return {'err', 'invalid_argument', 'grant_id'} end
if not idem_ttl then return {'err', 'invalid_argument', 'idempotency_ttl'} end

local refused, first = replay(idem, fp)
if refused then return refused end
if first then return {'ok', first[1], first[2], first[3], first[4], '1', first[5]} end

local a, missing = account_fields('m', 'b', 'r', 'od', 'g', 'tier', 'rp')
if not a then return missing end
local w, r, od = wallet(a[1], a[2], a[5], a[6], a[7]), tonumber(a[3]), tonumber(a[4])
if wallet_expires(w) then wallet_expire(w, account, now_ms()) end

local found, kept = nil, {}
for _, gr in ipairs(w.grants or {}) do
  if gr.id == gid then found = gr else kept[#kept + 1] = gr end
end
if not found then
  wallet_keep(w)
  return {'err', 'grant_not_found'}
end
w.grants, w.changed = kept, true
wallet_save(w)
local balance = wallet_balance(w)
local entry = append_transaction(txn, account, -found.rem, 'adjust', '', '', desc, '', nil,
  balance, 0, idem, {'gr', gid})

local reply = {'ok', txn, s(found.rem), s(balance), s(balance - r + od), '0', entry}
remember(idem, fp, idem_ttl, reply[2], reply[3], reply[4], reply[5], reply[7])
return reply
