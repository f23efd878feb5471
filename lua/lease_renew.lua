--[[
  lease_renew: extend a lease only for its holder (src/store/lease.ts).
  KEYS[1] the lease key   (one key: Cluster safe by construction)
  ARGV[1] the holder's id  ARGV[2] lease length in ms
  Reply: 1 when extended, 0 when the key is gone or held by someone else.
]]
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
