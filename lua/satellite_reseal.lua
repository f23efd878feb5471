--[[
  satellite_reseal: stores a satellite's outbound key sealed anew (`satellites seal-keys`,
  src/satellites/registry.ts), only if the stored value is still the one read and opened.
  KEYS[1] the satellite's hash <p>:{sat}:s:<id>   (hash tag {sat}, like every registry key)
  ARGV[1] the value read  ARGV[2] the same key sealed with the current secret
  Reply: 1 stored; 0 when the value changed (or the satellite went) since the read: that change wins.
]]
if redis.call('HGET', KEYS[1], 'outboundKey') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'outboundKey', ARGV[2])
return 1
