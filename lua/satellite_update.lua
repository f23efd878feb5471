--[[
  satellite_update: changes a registered satellite's name, url or outbound key (src/satellites/registry.ts).
  KEYS[1] the satellite's hash <p>:{sat}:s:<id>   (hash tag {sat}, like every registry key)
  ARGV[1..] field, value pairs: field is name | url | outboundKey; an empty value deletes the field
  Reply: the satellite's hash after the change (HGETALL), or an empty one when it is not registered.
  One step with the existence check: an update racing `satellite_remove` must not write fields into a
  hash the remove just deleted, which would leave a record without id, key or index entry.
]]
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
for i = 1, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', KEYS[1], ARGV[i])
  else
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return redis.call('HGETALL', KEYS[1])
