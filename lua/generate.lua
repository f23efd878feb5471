--[[
  generate: store a batch of new tokens (made in Node with a CSPRNG) for many owners of one virtual shard.
  KEYS[1] dict  KEYS[2] stats  KEYS[3] ev  KEYS[4..] the owners' buckets
    (one hash tag {shard}: the caller groups owners by shard, one call per shard)
  ARGV[1] campaign id  ARGV[2] expiresAt ms or ''  ARGV[3] owner count, then per owner:
    bucket KEYS index, owner ref hint, satellite id, user id, token count n, n token hexes
  Reply: { created, collided token hex... } (a collision is astronomically unlikely, never silent).
]]
--- @include "codec"

local dict, stats, ev = KEYS[1], KEYS[2], KEYS[3]
local now = now_ms()
local camp = intern(dict, 'c', ARGV[1])
local expires = tonumber(ARGV[2])
local owners = tonumber(ARGV[3])
local sats = {}
local made = {}
local created = 0
local collided = {}
local i = 4
for _ = 1, owners do
  local bucket, hint, sat, user, n = KEYS[tonumber(ARGV[i])], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], tonumber(ARGV[i + 4])
  i = i + 5
  sats[sat] = sats[sat] or intern(dict, 's', sat)
  local ref = find_owner(bucket, sats[sat] .. ':' .. user, hint, true)
  local rec = fmt_rec('u', ref, camp, now, expires)
  for j = i, i + n - 1 do
    local hex = ARGV[j]
    if redis.call('HSETNX', bucket, string.sub(hex, 5), rec) == 1 then
      redis.call('XADD', ev, '*', 'type', 'generated', 'at', now, 'row', dashed(hex) .. '\tunredeemed\t' .. sat ..
        '\t' .. user .. '\t' .. ARGV[1] .. '\t' .. now .. '\t' .. ARGV[2] .. '\t\t\t\t\t\t')
      created = created + 1
      made[sat] = (made[sat] or 0) + 1
    else
      collided[#collided + 1] = hex
    end
  end
  i = i + n
end
for sat, n in pairs(made) do
  stat(stats, sat .. '\tgenerated', n)
  stat(stats, sat .. '\tunredeemed', n)
end
local out = { created }
for k = 1, #collided do out[#out + 1] = collided[k] end
return out
