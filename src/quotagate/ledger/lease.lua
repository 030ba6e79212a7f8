--[[ lease: renew or release a flush lease, only if we still hold it.

KEYS[1] the lease key (the partition's hash tag, so it lives beside the outbox)
ARGV[1] our token
ARGV[2] "renew" or "release"
ARGV[3] lease length in ms (renew)

Reply  1 when done, 0 when the lease is not ours any more (expired, maybe taken by another)
Taking a lease is a plain SET NX PX; only the renew and release need the compare.
]]
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == 'release' then
  redis.call('DEL', KEYS[1])
  return 1
end
local ttl = tonumber(ARGV[3])
if not ttl or ttl < 1 then return redis.error_reply('lease length must be a positive integer') end
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
