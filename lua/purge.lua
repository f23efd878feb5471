--[[
  purge: delete from Redis the tokens of one virtual shard that can no longer change and that no satellite
  call needs: revoked ones, and unredeemed ones past their expiresAt (also those still stored as reserved
  whose lease lapsed: a sign-up abandoned), made before a given time (and of one campaign, if given).
  Postgres keeps them: each leaves a 'purged' event carrying its last row, and the snapshot marks its row
  purged. Redeemed tokens stay (the owner's redemptions list and an idempotent retry read them), so do
  reserved ones whose lease holds. A run of buckets a call (lua/includes/sweep.lua: budget, reply, and why).
  KEYS[1] dict  KEYS[2] rs  KEYS[3] rd  KEYS[4] stats  KEYS[5] ev  KEYS[6] leases  KEYS[7..] consecutive buckets of the shard,
    starting at the one to sweep first (one hash tag {shard})
  ARGV[1] made before (ms)  ARGV[2] campaign id or ''  ARGV[3] shard number  ARGV[4] buckets per shard
  ARGV[5] the bucket number of KEYS[7]  ARGV[6] budget  ARGV[7] HSCAN cursor in KEYS[7]
  ARGV[8] 'dry': count them, change nothing
  Reply: { 'ok', count, next, cursor }.
  Counters: the token's state count goes down and "<sat>\tpurged" up ("generated" keeps counting it).
  Owner records stay, also one left with no token: owners are found by probing from a hint, and a gap
  would hide the owners placed after it.
]]
--- @include "codec"
--- @include "sweep"

local now, at = clock()
local before = tonumber(ARGV[1])
local dry = ARGV[8] == 'dry'
local camp
if ARGV[2] ~= '' then
  camp = redis.call('HGET', KEYS[1], 'c\t' .. ARGV[2])
  if not camp then return { 'ok', 0, -1, '0' } end
end

return sweep_records(function(bucket, prefix, field, state, _, c, created, expires)
  if not (created < before and (not camp or c == camp)) then return false end
  local expired = expires and expires <= now
  if not (state == 'x' or ((state == 'u' or state == 's') and expired)) then return false end
  -- a reservation whose lease lapsed on an expired token: nothing can redeem, reserve or complete it any more;
  -- whether it lapsed is load_token's to say (an unreadable lease counts as lapsed there)
  local t = state == 's' and load_token(bucket, KEYS[1], KEYS[2], KEYS[3], prefix .. field, now)
  if t and not t.lapsed then return false end
  if not dry then
    t = t or load_token(bucket, KEYS[1], KEYS[2], KEYS[3], prefix .. field, now)
    local row = reply('ok', t)
    redis.call('HDEL', bucket, field)
    if state == 's' then
      redis.call('HDEL', KEYS[2], field)
      redis.call('ZREM', KEYS[6], prefix .. field)
    end
    -- the stored state's count: the row reports a lapsed reservation as unredeemed
    redis.call('HINCRBY', KEYS[4], t.sat .. '\t' .. STATE_NAME[state], '-1')
    redis.call('HINCRBY', KEYS[4], t.sat .. '\tpurged', '1')
    redis.call('XADD', KEYS[5], '*', 'type', 'purged', 'at', at, 'row', table.concat(row, '\t', 2, 14))
  end
  return true
end)
