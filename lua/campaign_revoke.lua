--[[
  campaign_revoke: records on a campaign's record that it was revoked (before its tokens are swept, shard by
  shard, by revoke_campaign), so generate refuses to run it again and the snapshot carries the revocation
  to Postgres and back on restore (src/store/campaigns.ts).
  KEYS[1] the campaign's record <p>:{camp:<id>}:meta   (one key: one slot)
  ARGV[1] the revocation time (ms) revocation_record returned
  Reply: 1, or 0 when no such record exists (a campaign made only through the admin route): nothing is
  written then, since the record's existence is what makes a campaign exist.
]]
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSETNX', KEYS[1], 'revokedAt', ARGV[1])
return 1
