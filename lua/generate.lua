--[[
  generate: store a batch of new tokens (made in Node with a CSPRNG) for many owners of one virtual shard.
  KEYS[1] dict  KEYS[2] stats  KEYS[3] ev  KEYS[4..] the owners' buckets
    (one hash tag {shard}: the caller groups owners by shard, one call per shard)
  ARGV[1] campaign id  ARGV[2] expiresAt ms or ''  ARGV[3] owner count, then per owner:
    bucket KEYS index, owner ref hint, satellite id, user id, token count n,
    the n tokens as 32 hex digits each, joined, then the same n tokens dashed (36 characters each), joined
    (two arguments an owner, not two a token: each argument costs the caller more than a string.sub costs here)
  Reply: { created, collided token hex... } (a collision is astronomically unlikely, never silent): the
  collided tokens existed before this call and are left as they were, so the caller, undoing its call, must
  not revoke them; a token repeated inside the call is stored and counted once, so created falls short, or
  { 'campaign_revoked' } with nothing written when the campaign was revoked (revoke_sweep's campaign mark).
  Each redis.call and each new Lua string costs more than the work around it, so per owner: one HMGET
  (its first ref slot and every new suffix), one HSET (the owner record when new and every record), and
  per token only its event, whose row is the one string built here (the token arrives dashed).
]]
--- @include "codec"

local call, unpack = redis.call, unpack

-- unpack() is bounded by Lua's C stack (8,000 values) and one owner may get 10,000 tokens
local SLICE = 4000

-- HMGET of `field` and every name in `names`
local function hmget(bucket, field, names)
  local n = #names
  if n < SLICE then return call('HMGET', bucket, field, unpack(names)) end
  local out = call('HMGET', bucket, field)
  for from = 1, n, SLICE do
    local got = call('HMGET', bucket, unpack(names, from, math.min(from + SLICE - 1, n)))
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

-- positions j whose suffix already came earlier in the run
local function repeats(suffixes)
  local seen, out = {}, {}
  for j = 1, #suffixes do
    local suffix = suffixes[j]
    if seen[suffix] then out[j] = true end
    seen[suffix] = true
  end
  return out
end

local dict, stats, ev = KEYS[1], KEYS[2], KEYS[3]
local now, at = clock()
local campaign, expiresAt = ARGV[1], ARGV[2]
-- a revoked campaign stays revoked: revoke_sweep marks the shard in the script that sweeps it, so a
-- generate here either ran before the sweep (its tokens were swept) or sees the mark
if call('HEXISTS', dict, 'x\t' .. campaign) == 1 then return { 'campaign_revoked' } end
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
-- a failing redis.call (a key of the wrong type) stops the script, but what it wrote stays (no rollback):
-- the loop runs under pcall so the counters of the owners already written are kept before the error goes on
local ok, err = pcall(function()
  for _ = 1, owners do
    local bucket, hint, sat, user, n = KEYS[tonumber(ARGV[i])], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], tonumber(ARGV[i + 4])
    local hex, dashed = ARGV[i + 5], ARGV[i + 6]
    i = i + 7
    -- the bucket's field is the suffix after the 4 hex digits the bucket's name already holds
    local suffixes = {}
    for j = 1, n do
      local o = j * 32
      suffixes[j] = string.sub(hex, o - 27, o)
    end
    sats[sat] = sats[sat] or intern(dict, 's', sat)
    local owner = sats[sat] .. ':' .. user
    local got = hmget(bucket, '#' .. hint, suffixes)
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
        writes[#writes + 1] = suffixes[j]
        writes[#writes + 1] = rec
      end
    end
    -- none of these fields existed, so fewer new ones means a suffix came twice in this batch
    local dup
    if #writes > 0 and hset(bucket, writes) < #writes / 2 then dup = repeats(suffixes) end
    local tail = '\tunredeemed\t' .. sat .. '\t' .. user .. rowTail
    local fresh = 0
    for j = 1, n do
      if got[j + 1] then
        collided[#collided + 1] = string.sub(hex, j * 32 - 31, j * 32)
      elseif not (dup and dup[j]) then
        call('XADD', ev, '*', 'type', 'generated', 'at', at, 'row', string.sub(dashed, j * 36 - 35, j * 36) .. tail)
        fresh = fresh + 1
      end
    end
    if fresh > 0 then
      created = created + fresh
      made[sat] = (made[sat] or 0) + fresh
    end
  end
end)
for sat, n in pairs(made) do
  redis.call('HINCRBY', stats, sat .. '\tgenerated', n)
  redis.call('HINCRBY', stats, sat .. '\tunredeemed', n)
end
if not ok then error(err) end
local out = { created }
for k = 1, #collided do out[#out + 1] = collided[k] end
return out
