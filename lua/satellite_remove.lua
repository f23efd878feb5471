--[[
  satellite_remove: a satellite and every API key of it (src/satellites/registry.ts).
  KEYS[1] the satellite's hash <p>:{sat}:s:<id>  KEYS[2] the key index <p>:{sat}:keys  KEYS[3] the id set <p>:{sat}:ids
  KEYS[4] the removed-id set <p>:{sat}:removed   (one hash tag {sat})
  ARGV[1] satellite id  ARGV[2] the retirement channel <p>:{sat}:retired (a channel, no key: no slot)
  Reply: 1, or 0 when the satellite is not registered.
  Every index entry naming the satellite goes, not only its current and previous key: the index holds a
  few entries per satellite, and a key left by an older, non-atomic rotation must not outlive it.
  The id is remembered as removed so the snapshot writer deletes it from Postgres too; a missing
  record alone cannot tell a removal from a Redis that lost its data.
  The id is published on ARGV[2] in the same step, so every worker drops the keys it cached: a PUBLISH
  sent after the script was lost whenever the caller died or lost Redis in between, and the removed
  key then kept working for AUTH_CACHE_MS. A Cluster carries it to every node.
]]
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local owner = ARGV[1] .. '\t'
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  if string.sub(all[i + 1], 1, #owner) == owner then redis.call('HDEL', KEYS[2], all[i]) end
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[1])
return 1
