--[[
  satellite_rotate: a satellite's new API key; the old one keeps working until ARGV[3] (src/satellites/registry.ts).
  KEYS[1] the satellite's hash <p>:{sat}:s:<id>  KEYS[2] the key index <p>:{sat}:keys   (one hash tag {sat})
  ARGV[1] satellite id  ARGV[2] sha256 of the new key  ARGV[3] epoch ms the old key stops working ('': at once)
  ARGV[4] the retirement channel <p>:{sat}:retired (a channel, no key: no slot)
  Reply: 1, or 0 when the satellite is not registered.
  prevKeyHash lists the retired keys still in their grace, space-separated. A rotation with a grace keeps
  them until theirs ends: a rotation retried because its reply was lost must not kill the key the
  satellite still uses, as dropping every older key did. One without a grace (a leaked key) retires them
  all at once. Read and written in one step: two rotations at once each retire the key the other made, so
  no key is left in the index without its satellite knowing of it (it would outlive a later remove).
  The id is published on ARGV[4] in the same step, as satellite_remove does (why: there).
]]
local cur = redis.call('HGET', KEYS[1], 'keyHash')
if not cur then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local kept = {}
for h in string.gmatch(redis.call('HGET', KEYS[1], 'prevKeyHash') or '', '%S+') do
  local entry = redis.call('HGET', KEYS[2], h)
  local ends = entry and tonumber(string.match(entry, '\t(%d+)$'))
  if ARGV[3] ~= '' and ends and ends > now then
    kept[#kept + 1] = h
  else
    redis.call('HDEL', KEYS[2], h)
  end
end
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[2], cur, ARGV[1] .. '\t' .. ARGV[3])
  kept[#kept + 1] = cur
else
  redis.call('HDEL', KEYS[2], cur)
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1] .. '\t')
redis.call('HSET', KEYS[1], 'keyHash', ARGV[2], 'prevKeyHash', table.concat(kept, ' '))
redis.call('PUBLISH', ARGV[4], ARGV[1])
return 1
