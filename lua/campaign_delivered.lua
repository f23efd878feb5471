--[[
  campaign_delivered: users whose whole set a satellite accepted, recorded and counted in one step (src/store/campaign-store.ts).
  KEYS[1] the satellite's delivered users <p>:{camp:<id>}:dlv:<sat>
  KEYS[2] the satellite's progress        <p>:{camp:<id>}:prog:<sat>
          (both carry the hash tag {camp:<id>}: one slot)
  ARGV    user, its set's size, user, size, ...
  Reply: the tokens of users not recorded before (tokensDelivered grew by that much).
  One step: a run killed between a record and its count left tokensDelivered short for good, and a set
  pushed again by a resume is not counted twice.
]]
local tokens = 0
for i = 1, #ARGV, 2 do
  if redis.call('SADD', KEYS[1], ARGV[i]) == 1 then tokens = tokens + tonumber(ARGV[i + 1]) end
end
if tokens > 0 then redis.call('HINCRBY', KEYS[2], 'tokensDelivered', tokens) end
return tokens
