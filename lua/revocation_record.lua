--[[
  revocation_record: records that a campaign was revoked in the registry of revoked campaigns, before
  anything else of the revocation: every campaign id, also one only the admin route ever used (no campaign
  record), so the snapshot carries every revocation to Postgres and restore marks the shards again.
  KEYS[1] the registry <p>:{revoked}:campaigns, hash campaign id -> revokedAt ms   (one key: one slot)
  ARGV[1] campaign id  ARGV[2] optional: the time to record (ms) instead of now, for `verify
    --repair-revocations` registering a revocation that only the shards' marks remember, at the marks' time
  Reply: the revocation time (ms; the first one when it was revoked before), which the campaign's record
  and every shard's mark then take, so all three agree.
]]
local at = ARGV[2]
if not at or at == '' then
  local t = redis.call('TIME')
  at = t[1] .. string.sub('00000' .. t[2], -6, -4)
end
redis.call('HSETNX', KEYS[1], ARGV[1], at)
return tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
