--[[
  Shared helpers, inlined into every script at load time (`--- @include "codec"`).

  Storage layout of one virtual shard s (every key carries the hash tag {s}, so every script
  touching one shard stays in one Redis Cluster slot):
    <p>:{s}:b:<bucket>  hash  token suffix (28 hex) -> record "<state><ref>,<camp>,<created36>,<expires36>"
                              "#<ref>"              -> owner "<satNum>:<userId>"
    <p>:{s}:dict        hash  "s\t<satId>"->n, "S<n>"->satId, "c\t<campaign>"->n, "C<n>"->campaign, "ns","nc"
    <p>:{s}:rs          hash  token suffix -> "<reservationId>\t<reservedBy>\t<leaseExpiresAt>"
    <p>:{s}:rd          hash  token suffix -> "<redeemerSat>\t<redeemerUser>\t<redeemedAt>\t<reservationId>"
    <p>:{s}:stats       hash  "<satId>\t<state>" -> count, "x\t<ownerSat>\t<redeemerSat>" -> count
    <p>:{s}:ev          stream one entry per state change: type, at, row (the row below, joined by tabs)
  States: u unredeemed, s reserved, r redeemed, x revoked.
]]

local STATE_NAME = { u = 'unredeemed', s = 'reserved', r = 'redeemed', x = 'revoked' }

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
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

local function unb36(s)
  if s == nil or s == '' then return nil end
  return tonumber(s, 36)
end

-- record -> state, ref, campNum, createdAt, expiresAt|nil
local function parse_rec(rec)
  local state = string.sub(rec, 1, 1)
  local ref, camp, created, expires = string.match(rec, '^.(%d+),(%d+),([%w]+),([%w]*)$')
  return state, ref, camp, unb36(created), unb36(expires)
end

local function fmt_rec(state, ref, camp, created, expires)
  return state .. ref .. ',' .. camp .. ',' .. b36(created) .. ',' .. b36(expires)
end

local function hex_of(token)
  return string.lower(string.gsub(token, '-', ''))
end

local function dashed(hex)
  return string.sub(hex, 1, 8) .. '-' .. string.sub(hex, 9, 12) .. '-' .. string.sub(hex, 13, 16) .. '-' ..
    string.sub(hex, 17, 20) .. '-' .. string.sub(hex, 21, 32)
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

local function lookup_num(dict, kind, name)
  return redis.call('HGET', dict, kind .. '\t' .. name)
end

local function name_of(dict, kind, n)
  return redis.call('HGET', dict, string.upper(kind) .. n) or ''
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

-- owner satellite id, owner user id and campaign id of a record, with one read of the dictionary
local function names_of(bucket, dict, ref, camp)
  local owner = redis.call('HGET', bucket, '#' .. ref) or ':'
  local satNum, user = string.match(owner, '^(%d*):(.*)$')
  local n = redis.call('HMGET', dict, 'S' .. (satNum or ''), 'C' .. camp)
  return n[1] or '', user or '', n[2] or ''
end

local function stat(stats, key, delta)
  redis.call('HINCRBY', stats, key, delta)
end

local function move_stat(stats, sat, from, to)
  if from == to then return end
  if from then stat(stats, sat .. '\t' .. STATE_NAME[from], -1) end
  stat(stats, sat .. '\t' .. STATE_NAME[to], 1)
end

--[[ The row: the token as the outside world sees it, in this fixed order (src/store/codec.ts):
  token, state, ownerSatelliteId, ownerUserId, campaignId, createdAt, expiresAt,
  reservationId, reservedBy, leaseExpiresAt, redeemerSatelliteId, redeemerUserId, redeemedAt
  A reservation whose lease has lapsed is reported as unredeemed (no sweeper needed). ]]
-- loads everything about one token; nil when the bucket has no such suffix
local function load_token(bucket, dict, rs, rd, hex, now)
  local suffix = string.sub(hex, 5)
  local rec = redis.call('HGET', bucket, suffix)
  if not rec then return nil end
  local t = { hex = hex, suffix = suffix, bucket = bucket }
  t.state, t.ref, t.camp, t.createdAt, t.expiresAt = parse_rec(rec)
  t.sat, t.user, t.campaign = names_of(bucket, dict, t.ref, t.camp)
  if t.state == 's' then
    local r = split_tab(redis.call('HGET', rs, suffix) or '\t\t0')
    t.reservationId, t.reservedBy, t.leaseExpiresAt = r[1], r[2], tonumber(r[3])
    t.lapsed = t.leaseExpiresAt <= now
  elseif t.state == 'r' then
    local r = split_tab(redis.call('HGET', rd, suffix) or '\t\t\t')
    t.redeemerSat, t.redeemerUser, t.redeemedAt, t.reservationId = r[1], r[2], tonumber(r[3]), r[4]
  end
  return t
end

local function effective_state(t)
  if t.state == 's' and t.lapsed then return 'u' end
  return t.state
end

local function str(v)
  if v == nil then return '' end
  return tostring(v)
end

local function row(t)
  local st = effective_state(t)
  local reserved = st == 's'
  local redeemed = st == 'r'
  return { dashed(t.hex), STATE_NAME[st], t.sat, t.user, t.campaign, str(t.createdAt), str(t.expiresAt),
    reserved and t.reservationId or (redeemed and str(t.reservationId) or ''),
    reserved and t.reservedBy or '', reserved and str(t.leaseExpiresAt) or '',
    redeemed and t.redeemerSat or '', redeemed and t.redeemerUser or '', redeemed and str(t.redeemedAt) or '' }
end

-- one stream entry per state change: type, time and the whole row after the change, packed into one
-- tab-separated field (ids cannot hold tabs): a third of the cost of one field per column in XADD
local function emit(events, kind, now, r)
  redis.call('XADD', events, '*', 'type', kind, 'at', now, 'row', table.concat(r, '\t'))
end

-- writes t's new state (and its side records), keeping stats and emitting the event
local function transition(keys, t, to, kind, now)
  -- counters follow the stored state: a lapsed lease is still counted as reserved until it is touched
  local from = t.state
  redis.call('HSET', t.bucket, t.suffix, fmt_rec(to, t.ref, t.camp, t.createdAt, t.expiresAt))
  if t.state == 's' and to ~= 's' then redis.call('HDEL', keys.rs, t.suffix) end
  if to == 's' then
    redis.call('HSET', keys.rs, t.suffix, t.reservationId .. '\t' .. t.reservedBy .. '\t' .. t.leaseExpiresAt)
  elseif to == 'r' then
    redis.call('HSET', keys.rd, t.suffix,
      t.redeemerSat .. '\t' .. t.redeemerUser .. '\t' .. t.redeemedAt .. '\t' .. str(t.reservationId))
    stat(keys.stats, 'x\t' .. t.sat .. '\t' .. t.redeemerSat, 1)
  end
  move_stat(keys.stats, t.sat, from, to)
  t.state, t.lapsed = to, false
  local r = row(t)
  emit(keys.ev, kind, now, r)
  return r
end

-- { code, row... }; pass the row when transition already built it
local function reply(code, t, r)
  local out = { code }
  if t then
    r = r or row(t)
    for i = 1, #r do out[#out + 1] = r[i] end
  end
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
