--[[
  restore: write tokens read back from Postgres into one virtual shard, in the layout generate and the
  state changes leave (owner records placed with the same hint and probing). Emits no events: these
  rows are history already, not new changes.
  KEYS[1] dict  KEYS[2] stats  KEYS[3] rs  KEYS[4] rd  KEYS[5..] buckets   (one hash tag {shard})
  ARGV[1] token count, then per token 15 values:
    bucket KEYS index, owner ref hint, owner satellite, owner user, token hex, state letter (u s r x),
    campaign, createdAt, expiresAt, reservationId, reservedBy, leaseExpiresAt,
    redeemerSatelliteId, redeemerUserId, redeemedAt
  Reply: number of tokens written.
]]
--- @include "codec"

local dict, stats, rs, rd = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local n = tonumber(ARGV[1])
local sats, camps = {}, {}
local i = 2
for _ = 1, n do
  local bucket, hint, sat, user, hex, state = KEYS[tonumber(ARGV[i])], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
  local campaign, created, expires = ARGV[i + 6], ARGV[i + 7], ARGV[i + 8]
  sats[sat] = sats[sat] or intern(dict, 's', sat)
  camps[campaign] = camps[campaign] or intern(dict, 'c', campaign)
  local ref = find_owner(bucket, sats[sat] .. ':' .. user, hint, true)
  local suffix = string.sub(hex, 5)
  redis.call('HSET', bucket, suffix, fmt_rec(state, ref, camps[campaign], created, expires))
  if state == 's' then
    redis.call('HSET', rs, suffix, ARGV[i + 9] .. '\t' .. ARGV[i + 10] .. '\t' .. ARGV[i + 11])
  elseif state == 'r' then
    redis.call('HSET', rd, suffix, ARGV[i + 12] .. '\t' .. ARGV[i + 13] .. '\t' .. ARGV[i + 14] .. '\t' .. ARGV[i + 9])
    redis.call('HINCRBY', stats, 'x\t' .. sat .. '\t' .. ARGV[i + 12], 1)
  end
  redis.call('HINCRBY', stats, sat .. '\tgenerated', 1)
  redis.call('HINCRBY', stats, sat .. '\t' .. STATE_NAME[state], 1)
  i = i + 15
end
return n
