--[[ release: end a hold without charging; its credits become available again.

KEYS[1] account hash        KEYS[5] account holds hash
KEYS[2] partition cfg hash  KEYS[6] account hold-expiry zset
KEYS[3] partition outbox    KEYS[7] partition hold-expiry index
KEYS[4] idempotency record  KEYS[8..9] unused

ARGV[1] account id          ARGV[4] request fingerprint (16 characters)
ARGV[2] hold id             ARGV[5] idempotency TTL in ms
ARGV[3] idempotency key ("" for none)

Reply  {"ok", released amount, available after, replayed 0|1}
Record (KEYS[4]) the 16-character fingerprint, then the reply's released, available,
       space-separated: what a replay answers
Errors {"err", "invalid_argument", name} {"err", "idempotency_conflict"}
       {"err", "account_not_loaded"} {"err", "account_not_found"} {"err", "hold_not_found"}
]]
local account, hold_id, idem, fp = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local idem_ttl = ttl_arg(ARGV[5])
if not id_arg(hold_id) then return {'err', 'invalid_argument', 'hold_id'} end
if not idem_ttl then return {'err', 'invalid_argument', 'idempotency_ttl'} end

local refused, first = replay(idem, fp)
if refused then return refused end
if first then return {'ok', first[1], first[2], '1'} end

local a, missing = account_fields('m', 'b', 'r', 'od', 'g', 'tier', 'rp')
if not a then return missing end
local w, r, od = wallet(a[1], a[2], a[5], a[6], a[7]), tonumber(a[3]), tonumber(a[4])

local now = now_ms()
local hold = open_hold(hold_id, now)
if not hold then return {'err', 'hold_not_found'} end

-- Holds of the account past their deadline end first, each by its policy.
r = expire_due(account, now, r, w, od)
drop_holds(account, {hold_id})
r = r - hold.held
if w.changed then wallet_save(w, 'r', s(r)) else redis.call('HSET', KEYS[1], 'r', s(r)) end

local reply = {'ok', s(hold.held), s(wallet_balance(w) - r + od), '0'}
remember(idem, fp, idem_ttl, reply[2], reply[3])
return reply
