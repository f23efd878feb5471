--[[
  satellite_rotate: a satellite's new API key; the old one keeps working until ARGV[3] (src/satellites/registry.ts).
  KEYS[1] the satellite's hash <p>:{sat}:s:<id>  KEYS[2] the key index <p>:{sat}:keys   (one hash tag {sat})
  ARGV[1] satellite id  ARGV[2] sha256 of the new key  ARGV[3] epoch ms the old key stops working ('': at once)
  Reply: 1, or 0 when the satellite is not registered.
  Read and written in one step: two rotations at once each retire the key the other made, so no key is
  left in the index without its satellite knowing of it (it would outlive a later remove).
]]
local cur = redis.call('HGET', KEYS[1], 'keyHash')
if not cur then return 0 end
local prev = redis.call('HGET', KEYS[1], 'prevKeyHash')
if prev and prev ~= '' then redis.call('HDEL', KEYS[2], prev) end
local keep = ''
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[2], cur, ARGV[1] .. '\t' .. ARGV[3])
  keep = cur
else
  redis.call('HDEL', KEYS[2], cur)
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1] .. '\t')
redis.call('HSET', KEYS[1], 'keyHash', ARGV[2], 'prevKeyHash', keep)
return 1
