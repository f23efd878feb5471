--[[
  campaign_made: the tokens a campaign made for users of one satellite, recorded and counted in one step (src/store/campaign-store.ts).
  KEYS[1] the satellite's made tokens     <p>:{camp:<id>}:made:<sat>   user -> comma-joined tokens
  KEYS[2] the satellite's progress        <p>:{camp:<id>}:prog:<sat>
          (both carry the hash tag {camp:<id>}: one slot)
  ARGV    user, tokens (comma-joined), user, tokens, ...
  Reply: {users, tokens} not recorded before (usersServed and tokensMade grew by that much).
  One step: a run killed between a record and its count left the counters short for good, and a user
  recorded again (a resume adopting tokens) is not counted twice.
]]
local users, tokens = 0, 0
for i = 1, #ARGV, 2 do
  if redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
    users = users + 1
    local _, commas = string.gsub(ARGV[i + 1], ',', '')
    tokens = tokens + commas + 1
  end
end
if users > 0 then
  redis.call('HINCRBY', KEYS[2], 'usersServed', users)
  redis.call('HINCRBY', KEYS[2], 'tokensMade', tokens)
end
return {users, tokens}
