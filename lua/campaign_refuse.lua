--[[
  campaign_refuse: users a satellite refused in a campaign, recorded and counted in one step (src/store/campaign-store.ts).
  KEYS[1] the satellite's refused users   <p>:{camp:<id>}:rej:<sat>
  KEYS[2] the satellite's progress        <p>:{camp:<id>}:prog:<sat>
          (both carry the hash tag {camp:<id>}: one slot)
  ARGV    the user ids
  Reply: how many were not recorded before (the usersRefused counter grew by that much).
  One step, because the snapshot copies a refusal set when its counter moves (src/snapshot/campaigns.ts):
  a process killed between an add and its count would leave the users out of Postgres for good, and the
  counter short of the set.
]]
local fresh = redis.call('SADD', KEYS[1], unpack(ARGV))
if fresh > 0 then redis.call('HINCRBY', KEYS[2], 'usersRefused', fresh) end
return fresh
