--[[ lease: renew or release a flush lease, only if we still hold it.

KEYS[1] the lease key (the partition's hash tag, so it lives beside the outbox)
ARGV[1] our token
ARGV[2] "renew" or "release"
ARGV[3] lease length in ms (renew; ignored by a release)

Reply  1 when done, 0 when the lease is not ours any more (expired, maybe taken by another)
Errors an error reply when ARGV[2] or ARGV[3] is not one of the above
Taking a lease is a plain SET NX PX; only the renew and release need the compare.
]]
local action, ttl = ARGV[2], nil
if action == 'renew' then
  ttl = ttl_arg(ARGV[3])
  if not ttl then return redis.error_reply('lease length must be a positive integer of ms') end
elseif action ~= 'release' then
  return redis.error_reply('lease action must be renew or release')
end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if action == 'release' then
  redis.call('DEL', KEYS[1])
  return 1
end
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
