--[[
  restore: write tokens read back from Postgres into one virtual shard, in the layout generate and the
  state changes leave (owner records placed with the same hint and probing). Emits no events: these
  rows are history already, not new changes.
  KEYS[1] dict  KEYS[2] stats  KEYS[3] rs  KEYS[4] rd  KEYS[5] leases  KEYS[6..] buckets   (one hash tag {shard})
  ARGV one per token, 15 values joined by tabs (no id holds a control character, src/tokens/validate.ts):
    bucket KEYS index, owner ref hint, owner satellite, owner user, token hex, state letter (u s r x, or p:
    purged, lua/purge.lua: only counted, as generated and purged, not written),
    campaign, createdAt, expiresAt, reservationId, reservedBy, leaseExpiresAt,
    redeemerSatelliteId, redeemerUserId, redeemedAt
    (one argument a token, not 15: the client's cost is per argument, and it was most of a restore's CPU)
  A token already in the bucket is left as it is (verify --repair-redis brings back tokens a live Redis lost,
  while satellites may change others).
  Reply: number of tokens written (purged ones and those already there not included).
]]
--- @include "codec"

local dict, stats, rs, rd, leases = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local sats, camps = {}, {}
-- the stats counters, summed here and written once each at the end
local counts = {}
local function count(field)
  counts[field] = (counts[field] or 0) + 1
end
local written = 0
for a = 1, #ARGV do
  local v = split_tab(ARGV[a])
  local bucket, hint, sat, user, hex, state = KEYS[tonumber(v[1])], v[2], v[3], v[4], v[5], v[6]
  local campaign = v[7]
  local suffix = string.sub(hex, 5)
  if state == 'p' then
    count(sat .. '\tgenerated')
    count(sat .. '\tpurged')
  elseif redis.call('HEXISTS', bucket, suffix) == 0 then
    count(sat .. '\tgenerated')
    sats[sat] = sats[sat] or intern(dict, 's', sat)
    camps[campaign] = camps[campaign] or intern(dict, 'c', campaign)
    local ref = find_owner(bucket, sats[sat] .. ':' .. user, hint, true)
    redis.call('HSET', bucket, suffix, fmt_rec(state, ref, camps[campaign], v[8], v[9]))
    if state == 's' then
      redis.call('HSET', rs, suffix, v[10] .. '\t' .. v[11] .. '\t' .. v[12])
      redis.call('ZADD', leases, v[12] ~= '' and v[12] or '0', hex)
    elseif state == 'r' then
      redis.call('HSET', rd, suffix, v[13] .. '\t' .. v[14] .. '\t' .. v[15] .. '\t' .. v[10])
      count('x\t' .. sat .. '\t' .. v[13])
    end
    count(sat .. '\t' .. STATE_NAME[state])
    written = written + 1
  end
end
for field, n in pairs(counts) do redis.call('HINCRBY', stats, field, n) end
return written
