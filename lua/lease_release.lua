--[[
  lease_release: delete a lease only for its holder (src/store/lease.ts), so a holder that stalled past
  its lease cannot delete the next holder's.
  KEYS[1] the lease key   (one key: Cluster safe by construction)
  ARGV[1] the holder's id
  Reply: 1 when deleted, 0 otherwise.
]]
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
