--[[
  generate: store a batch of new tokens (made in Node with a CSPRNG) for many owners of one virtual shard.
  KEYS[1] dict  KEYS[2] stats  KEYS[3] ev  KEYS[4..] the owners' buckets
    (one hash tag {shard}: the caller groups owners by shard, one call per shard)
  ARGV[1] campaign id  ARGV[2] expiresAt ms or ''  ARGV[3] owner count, then per owner:
    bucket KEYS index, owner ref hint, satellite id, user id, token count n,
    the n token suffixes (hex digits 5..32), then the same n tokens as the caller sees them (dashed)
  Reply: { created, collided token hex... } (a collision is astronomically unlikely, never silent).
  Each redis.call and each new Lua string costs more than the work around it, so per owner: one HMGET
  (its first ref slot and every new suffix), one HSET (the owner record when new and every record), and
  per token only its event, whose row is the one string built here (the token arrives dashed).
]]
--- @include "codec"

local call, unpack = redis.call, unpack

-- unpack() is bounded by Lua's C stack (8,000 values) and one owner may get 10,000 tokens
local SLICE = 4000

-- HMGET of `field` and ARGV[first .. first + n - 1]
local function hmget(bucket, field, first, n)
  if n < SLICE then return call('HMGET', bucket, field, unpack(ARGV, first, first + n - 1)) end
  local out = call('HMGET', bucket, field)
  for from = first, first + n - 1, SLICE do
    local got = call('HMGET', bucket, unpack(ARGV, from, math.min(from + SLICE - 1, first + n - 1)))
    for k = 1, #got do out[#out + 1] = got[k] end
  end
  return out
end

-- fields and values alternate (SLICE is even, so a slice never splits a pair); returns the new fields
local function hset(bucket, pairs_)
  local added = 0
  for from = 1, #pairs_, SLICE do
    added = added + call('HSET', bucket, unpack(pairs_, from, math.min(from + SLICE - 1, #pairs_)))
  end
  return added
end

-- positions j in 1..n whose suffix ARGV[first + j - 1] already came earlier in the run
local function repeats(first, n)
  local seen, out = {}, {}
  for j = 1, n do
    local suffix = ARGV[first + j - 1]
    if seen[suffix] then out[j] = true end
    seen[suffix] = true
  end
  return out
end

local dict, stats, ev = KEYS[1], KEYS[2], KEYS[3]
local now, at = clock()
local campaign, expiresAt = ARGV[1], ARGV[2]
local camp = intern(dict, 'c', campaign)
-- the record after '<state><ref>' and the event row after '<token>\tunredeemed\t<sat>\t<user>'
local recTail = ',' .. camp .. ',' .. b36(now) .. ',' .. b36(tonumber(expiresAt))
local rowTail = '\t' .. campaign .. '\t' .. at .. '\t' .. expiresAt .. '\t\t\t\t\t\t'
local owners = tonumber(ARGV[3])
local sats = {}
local made = {}
local created = 0
local collided = {}
local i = 4
for _ = 1, owners do
  local bucket, hint, sat, user, n = KEYS[tonumber(ARGV[i])], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], tonumber(ARGV[i + 4])
  local first = i + 5 -- suffixes at first .. first + n - 1, the dashed tokens n further on
  i = first + 2 * n
  sats[sat] = sats[sat] or intern(dict, 's', sat)
  local owner = sats[sat] .. ':' .. user
  local got = hmget(bucket, '#' .. hint, first, n)
  local ref = hint
  local writes = {}
  if not got[1] then
    writes[1], writes[2] = '#' .. hint, owner
  elseif got[1] ~= owner then
    ref = find_owner(bucket, owner, hint, true)
  end
  local rec = 'u' .. ref .. recTail
  for j = 1, n do
    if not got[j + 1] then
      writes[#writes + 1] = ARGV[first + j - 1]
      writes[#writes + 1] = rec
    end
  end
  -- none of these fields existed, so fewer new ones means a suffix came twice in this batch
  local dup
  if #writes > 0 and hset(bucket, writes) < #writes / 2 then dup = repeats(first, n) end
  local tail = '\tunredeemed\t' .. sat .. '\t' .. user .. rowTail
  local fresh = 0
  for j = 1, n do
    local token = ARGV[first + n + j - 1]
    if got[j + 1] or (dup and dup[j]) then
      collided[#collided + 1] = string.lower((string.gsub(token, '-', '')))
    else
      call('XADD', ev, '*', 'type', 'generated', 'at', at, 'row', token .. tail)
      fresh = fresh + 1
    end
  end
  if fresh > 0 then
    created = created + fresh
    made[sat] = (made[sat] or 0) + fresh
  end
end
for sat, n in pairs(made) do
  redis.call('HINCRBY', stats, sat .. '\tgenerated', n)
  redis.call('HINCRBY', stats, sat .. '\tunredeemed', n)
end
local out = { created }
for k = 1, #collided do out[#out + 1] = collided[k] end
return out
