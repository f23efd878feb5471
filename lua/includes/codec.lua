--[[
  Shared helpers, inlined into every script at load time (`--- @include "codec"`).

  Storage layout of one virtual shard s (every key carries the hash tag {s}, so every script
  touching one shard stays in one Redis Cluster slot):
    <p>:{s}:b:<bucket>  hash  token suffix (28 hex) -> record "<state><ref>,<camp>,<created36>,<expires36>"
                              "#<ref>"              -> owner "<satNum>:<userId>"
    <p>:{s}:dict        hash  "s\t<satId>"->n, "S<n>"->satId, "c\t<campaign>"->n, "C<n>"->campaign, "ns","nc",
                              "x\t<campaign>"->revokedAt ms: a revoked campaign, which generate refuses
    <p>:{s}:rs          hash  token suffix -> "<reservationId>\t<reservedBy>\t<leaseExpiresAt>"
    <p>:{s}:leases      zset  token hex (32 digits: names the bucket) scored by leaseExpiresAt, for every reserved
                              token: lua/lapse.lua finds the lapsed ones there, without reading the buckets
    <p>:{s}:rd          hash  token suffix -> "<redeemerSat>\t<redeemerUser>\t<redeemedAt>\t<reservationId>"
    <p>:{s}:stats       hash  "<satId>\t<state>" -> count (also "generated", and "purged": deleted by lua/purge.lua),
                              "x\t<ownerSat>\t<redeemerSat>" -> count
    <p>:{s}:intact      string written by the snapshot writer and restore only: the shard's data is whole
                              (src/snapshot/lost.ts); no script touches it
    <p>:{s}:ev          stream one entry per state change and per purged token: type, at, row (the row below, joined by tabs)
  States: u unredeemed, s reserved, r redeemed, x revoked.
]]

local STATE_NAME = { u = 'unredeemed', s = 'reserved', r = 'redeemed', x = 'revoked' }

-- Redis TIME in epoch ms, as a number and as its decimal text, made from TIME's own digits: turning a Lua
-- number into text goes through printf's float path (tostring, `..`, and redis.call's arguments alike)
local function clock()
  local t = redis.call('TIME')
  local s = t[1] .. string.sub('00000' .. t[2], -6, -4)
  return tonumber(s), s
end

-- a time as decimal text ('' for none). Whole numbers up to 2^53 (every safe JS integer) are written exactly
-- by %d; tostring's %.14g would round 1e14 and above (year 5138 in ms) to an exponent form nothing parses
-- back, and costs three times as much
local function dec(n)
  if n == nil then return '' end
  if n % 1 == 0 and n <= 9007199254740991 and n >= -9007199254740991 then return string.format('%d', n) end
  return tostring(n)
end

local B36 = '0123456789abcdefghijklmnopqrstuvwxyz'
local function b36(n)
  if n == nil or n == '' then return '' end
  n = math.floor(tonumber(n))
  if n == 0 then return '0' end
  local out = ''
  while n > 0 do
    local d = n % 36
    out = string.sub(B36, d + 1, d + 1) .. out
    n = (n - d) / 36
  end
  return out
end

-- record -> state, ref, campNum, createdAt, expiresAt|nil
local function parse_rec(rec)
  local state, ref, camp, created, expires = string.match(rec, '^(.)(%d+),(%d+),([%w]+),([%w]*)$')
  return state, ref, camp, created and tonumber(created, 36), expires and expires ~= '' and tonumber(expires, 36) or nil
end

local function fmt_rec(state, ref, camp, created, expires)
  return state .. ref .. ',' .. camp .. ',' .. b36(created) .. ',' .. b36(expires)
end

local function split_tab(s)
  local out = {}
  for part in string.gmatch(s .. '\t', '([^\t]*)\t') do out[#out + 1] = part end
  return out
end

-- dictionary of satellites ('s') and campaigns ('c'): name <-> small number, created on demand
local function intern(dict, kind, name)
  local n = redis.call('HGET', dict, kind .. '\t' .. name)
  if n then return n end
  n = tostring(redis.call('HINCRBY', dict, 'n' .. kind, 1))
  redis.call('HSET', dict, kind .. '\t' .. name, n, string.upper(kind) .. n, name)
  return n
end

-- owners are stored once per bucket under "#<ref>"; ref starts at a hash hint and probes on collision
local function find_owner(bucket, owner, hint, create)
  local ref = tonumber(hint)
  for _ = 1, 1024 do
    local got = redis.call('HGET', bucket, '#' .. ref)
    if got == owner then return tostring(ref) end
    if not got then
      if not create then return nil end
      redis.call('HSET', bucket, '#' .. ref, owner)
      return tostring(ref)
    end
    ref = ref + 1
  end
  error('owner ref space exhausted in ' .. bucket)
end

--[[ The row: the token as the outside world sees it, in this fixed order (src/store/codec.ts):
  token, state, ownerSatelliteId, ownerUserId, campaignId, createdAt, expiresAt,
  reservationId, reservedBy, leaseExpiresAt, redeemerSatelliteId, redeemerUserId, redeemedAt
  A token redeemed through reserve + complete keeps reservationId, and reservedBy is its redeemer satellite.
  A reservation whose lease has lapsed is reported as unredeemed (no sweeper needed for that).
  leaseExpiresAt and redeemedAt are kept as the text the row and the side records carry. ]]
-- loads everything about one token; nil when the bucket has no such suffix. `token` is the dashed form of
-- `hex` when the caller sends it (cheaper than five string.sub here), else it is made here.
local function load_token(bucket, dict, rs, rd, hex, now, token)
  local suffix = string.sub(hex, 5)
  local rec = redis.call('HGET', bucket, suffix)
  if not rec then return nil end
  local state, ref, camp, created, expires = parse_rec(rec)
  -- owner satellite id, owner user id and campaign id, with one read of the dictionary
  local owner = redis.call('HGET', bucket, '#' .. ref) or ':'
  local satNum, user = string.match(owner, '^(%d*):(.*)$')
  local n = redis.call('HMGET', dict, 'S' .. (satNum or ''), 'C' .. camp)
  -- made by one constructor, sized for its 11 fields (16 slots), which leaves room for what a redeem or
  -- a reserve adds without the table growing
  token = token or string.sub(hex, 1, 8) .. '-' .. string.sub(hex, 9, 12) .. '-' .. string.sub(hex, 13, 16) .. '-' ..
    string.sub(hex, 17, 20) .. '-' .. string.sub(hex, 21, 32)
  local t = { token = token, hex = hex, suffix = suffix, bucket = bucket, rec = rec, state = state, createdAt = created,
    expiresAt = expires, sat = n[1] or '', user = user or '', campaign = n[2] or '' }
  if state == 's' then
    -- the first three tab-separated fields, as split_tab would give them, without its table and iterator
    local id, by, lease = string.match(redis.call('HGET', rs, suffix) or '\t\t0', '^([^\t]*)\t([^\t]*)\t([^\t]*)')
    -- an unreadable lease (a row restored without one) counts as lapsed, rather than failing every script on the token
    lease = tonumber(lease) or 0
    t.reservationId, t.reservedBy, t.leaseExpiresAt, t.lapsed = id, by, dec(lease), lease <= now
  elseif state == 'r' then
    local r = split_tab(redis.call('HGET', rd, suffix) or '\t\t\t')
    t.redeemerSat, t.redeemerUser, t.redeemedAt, t.reservationId = r[1], r[2], dec(tonumber(r[3])), r[4]
  end
  return t
end

-- { code, row... }; the event of a state change is the same row, so it is built once for both. Small
-- helpers are written out in place here and below: every call of a script re-creates every function of
-- this file (~60 ns each)
local function reply(code, t)
  if not t then return { code } end
  local st = t.state
  if st == 's' and t.lapsed then st = 'u' end
  local reserved = st == 's'
  local redeemed = st == 'r'
  return { code, t.token, STATE_NAME[st], t.sat, t.user, t.campaign, dec(t.createdAt), dec(t.expiresAt),
    (reserved or redeemed) and t.reservationId or '',
    -- a redemption through a reservation keeps its id (a repeated complete answers ok) and was credited to
    -- the satellite that reserved (complete.lua): the row names it too, not the id alone
    reserved and t.reservedBy or (redeemed and (t.reservationId or '') ~= '' and t.redeemerSat) or '',
    reserved and t.leaseExpiresAt or '',
    redeemed and t.redeemerSat or '', redeemed and t.redeemerUser or '', redeemed and t.redeemedAt or '' }
end

-- writes t's new state (and its side records), keeping stats and emitting the event (type, time and the
-- whole row after the change, packed into one tab-separated field: ids cannot hold tabs, and one field
-- costs a third of one field per column in XADD); returns the 'ok' reply. `at` is the time as text.
local function transition(keys, t, to, kind, at)
  -- counters follow the stored state: a lapsed lease is still counted as reserved until it is touched or given
  -- back (lua/lapse.lua)
  local from = t.state
  -- only the state letter changes: the rest of the record is kept as stored
  redis.call('HSET', t.bucket, t.suffix, to .. string.sub(t.rec, 2))
  if from == 's' and to ~= 's' then
    redis.call('HDEL', keys.rs, t.suffix)
    redis.call('ZREM', keys.leases, t.hex)
  end
  if to == 's' then
    redis.call('HSET', keys.rs, t.suffix, t.reservationId .. '\t' .. t.reservedBy .. '\t' .. t.leaseExpiresAt)
    redis.call('ZADD', keys.leases, t.leaseExpiresAt, t.hex)
  elseif to == 'r' then
    redis.call('HSET', keys.rd, t.suffix,
      t.redeemerSat .. '\t' .. t.redeemerUser .. '\t' .. t.redeemedAt .. '\t' .. (t.reservationId or ''))
    redis.call('HINCRBY', keys.stats, 'x\t' .. t.sat .. '\t' .. t.redeemerSat, '1')
  end
  if from ~= to then
    redis.call('HINCRBY', keys.stats, t.sat .. '\t' .. STATE_NAME[from], '-1')
    redis.call('HINCRBY', keys.stats, t.sat .. '\t' .. STATE_NAME[to], '1')
  end
  t.state, t.lapsed = to, false
  local out = reply('ok', t)
  redis.call('XADD', keys.ev, '*', 'type', kind, 'at', at, 'row', table.concat(out, '\t', 2, 14))
  return out
end

-- common checks before a token can be reserved or redeemed; returns an error code or nil
local function unusable(t, now)
  if t.state == 'x' then return 'revoked' end
  if t.state == 'r' then return 'already_redeemed' end
  if t.state == 's' and not t.lapsed then return 'reserved' end
  if t.expiresAt and t.expiresAt <= now then return 'expired' end
  return nil
end
