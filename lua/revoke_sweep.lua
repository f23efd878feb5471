--[[
  revoke_sweep: revoke every unredeemed/reserved token of one campaign, or of one satellite's users, in one
  virtual shard, a run of buckets a call (lua/includes/sweep.lua: budget, reply, and why).
  KEYS[1] dict  KEYS[2] rs  KEYS[3] rd  KEYS[4] stats  KEYS[5] ev  KEYS[6] leases  KEYS[7..] consecutive buckets of the shard,
    starting at the one to sweep first (one hash tag {shard})
  ARGV[1] 'campaign' | 'satellite'  ARGV[2] campaign id | owner satellite id  ARGV[3] shard number
  ARGV[4] buckets per shard  ARGV[5] the bucket number of KEYS[7]  ARGV[6] budget  ARGV[7] HSCAN cursor in KEYS[7]
  ARGV[8] campaign mode: the revocation time (ms) revocation_record returned
  Reply: { 'ok', count, next, cursor }: next is the bucket number to call again from, -1 when the shard is done.
  Campaign mode first marks the campaign revoked in the shard's dict (kept, also when the shard has none of its
  tokens yet): generate refuses a marked campaign, so no token of it can be made on this shard after the first
  call's mark, and every later call sweeps after it (each sets it, whichever runs first).
  Satellite mode marks nothing: it takes the tokens the satellite's users hold now (a removed satellite gets no
  new ones from a campaign), and stops at once when the shard's counters say none of them is open.
]]
--- @include "codec"
--- @include "sweep"

local keys = { rs = KEYS[2], rd = KEYS[3], stats = KEYS[4], ev = KEYS[5], leases = KEYS[6] }
local now, at = clock()
local campaign = ARGV[1] == 'campaign'
local wanted
if campaign then
  redis.call('HSETNX', KEYS[1], 'x\t' .. ARGV[2], ARGV[8])
  wanted = redis.call('HGET', KEYS[1], 'c\t' .. ARGV[2])
else
  local open = redis.call('HMGET', KEYS[4], ARGV[2] .. '\tunredeemed', ARGV[2] .. '\treserved')
  if tonumber(open[1] or '0') + tonumber(open[2] or '0') > 0 then wanted = redis.call('HGET', KEYS[1], 's\t' .. ARGV[2]) end
end
if not wanted then return { 'ok', 0, -1, '0' } end
local ownerPrefix = wanted .. ':'

return sweep_records(function(bucket, prefix, field, state, ref, camp, _, _, owner)
  if state ~= 'u' and state ~= 's' then return false end
  -- satellite mode: the record's owner ("<satNum>:<userId>") is one of that satellite's users
  if campaign and camp ~= wanted or not campaign and string.sub(owner(ref) or '', 1, #ownerPrefix) ~= ownerPrefix then return false end
  transition(keys, load_token(bucket, KEYS[1], KEYS[2], KEYS[3], prefix .. field, now), 'x', 'revoked', at)
  return true
end)
