--[[
  campaign_open: a campaign's record, written whole or not at all (src/store/campaign-store.ts).
  KEYS[1] the campaign's record <p>:{camp:<id>}:meta   (one key: one slot)
  ARGV    field, value, field, value, ... (id, perUser, satellites, createdAt, expiresAt?)
  Reply: 1 when created, 0 when the campaign exists.
  One step, so a run that reads the record of a campaign another run is creating never sees it half
  written, and a process killed mid-create leaves no record without its fields.
]]
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
