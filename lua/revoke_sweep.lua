--[[
  revoke_sweep: revoke every unredeemed/reserved token of one campaign, or of one satellite's users, in one
  virtual shard, a piece at a time.
  KEYS[1] dict  KEYS[2] rs  KEYS[3] rd  KEYS[4] stats  KEYS[5] ev  KEYS[6..] consecutive buckets of the shard,
    starting at the one to sweep first (one hash tag {shard})
  ARGV[1] 'campaign' | 'satellite'  ARGV[2] campaign id | owner satellite id  ARGV[3] shard number
  ARGV[4] buckets per shard  ARGV[5] the bucket number of KEYS[6]  ARGV[6] budget
  ARGV[7] campaign mode: the revocation time (ms) revocation_record returned
  Reply: { 'ok', count, next }: next is the bucket number to call again from, -1 when the shard is done.
  A call stops after the bucket in which its work (1 a record read, 16 a token revoked: their measured cost
  in µs, roughly) reached the budget, so no call holds Redis long whatever the shard holds; one call per shard
  held it up to 166 ms at 1M tokens (bench/sweep.ts).
  Campaign mode first marks the campaign revoked in the shard's dict (kept, also when the shard has none of its
  tokens yet): generate refuses a marked campaign, so no token of it can be made on this shard after the first
  call's mark, and every later call sweeps after it (each sets it, whichever runs first).
  Satellite mode marks nothing: it takes the tokens the satellite's users hold now (a removed satellite gets no
  new ones from a campaign), and stops at once when the shard's counters say none of them is open.
]]
--- @include "codec"

local keys = { rs = KEYS[2], rd = KEYS[3], stats = KEYS[4], ev = KEYS[5] }
local now, at = clock()
local campaign = ARGV[1] == 'campaign'
local wanted
if campaign then
  redis.call('HSETNX', KEYS[1], 'x\t' .. ARGV[2], ARGV[7])
  wanted = redis.call('HGET', KEYS[1], 'c\t' .. ARGV[2])
else
  local open = redis.call('HMGET', KEYS[4], ARGV[2] .. '\tunredeemed', ARGV[2] .. '\treserved')
  if tonumber(open[1] or '0') + tonumber(open[2] or '0') > 0 then wanted = redis.call('HGET', KEYS[1], 's\t' .. ARGV[2]) end
end
if not wanted then return { 'ok', 0, -1 } end
local perShard, from, budget = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local first = tonumber(ARGV[3]) * perShard + from
local ownerPrefix = wanted .. ':'
local count, work = 0, 0
for k = 6, #KEYS do
  local bucket = KEYS[k]
  local prefix = string.format('%04x', first + k - 6)
  local all = redis.call('HGETALL', bucket)
  local before = count
  -- satellite mode: the refs of this bucket's owners on that satellite ("#<ref>" -> "<satNum>:<userId>")
  local refs = {}
  if not campaign then
    for i = 1, #all, 2 do
      if string.sub(all[i], 1, 1) == '#' and string.sub(all[i + 1], 1, #ownerPrefix) == ownerPrefix then
        refs[string.sub(all[i], 2)] = true
      end
    end
  end
  for i = 1, #all, 2 do
    local field, rec = all[i], all[i + 1]
    if string.sub(field, 1, 1) ~= '#' then
      local state, ref, c = parse_rec(rec)
      if (state == 'u' or state == 's') and (campaign and c == wanted or not campaign and refs[ref]) then
        local t = load_token(bucket, KEYS[1], KEYS[2], KEYS[3], prefix .. field, now)
        transition(keys, t, 'x', 'revoked', at)
        count = count + 1
      end
    end
  end
  work = work + #all / 2 + 16 * (count - before)
  local next = from + k - 5
  if next >= perShard then return { 'ok', count, -1 } end
  if work >= budget then return { 'ok', count, next } end
end
return { 'ok', count, from + #KEYS - 5 }
