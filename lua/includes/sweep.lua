--[[ Walking the token records of a run of one shard's buckets with a work budget, for the scripts that
  sweep every bucket (revoke_sweep, purge); included after codec. Their calls share this shape:
    KEYS[7..] consecutive buckets of the shard, from the one to sweep first (KEYS[1..6]: dict, rs, rd, stats,
    ev, leases)
    ARGV[3] shard number  ARGV[4] buckets per shard  ARGV[5] the bucket number of KEYS[7]  ARGV[6] budget
    ARGV[7] the HSCAN cursor to go on from in KEYS[7] ('0': its start)
  and reply { 'ok', count, next, cursor }: next is the bucket number to call again from, -1 when the shard is
  done, and cursor where to go on inside it.
  A call stops after the bucket in which its work (1 a record read, 16 a token changed: their cost in µs of
  Redis time, roughly) reached the budget, so no call holds Redis long whatever the shard holds: one call per
  shard held it up to 166 ms at 1M tokens, and redeems of other clients waited behind it (bench/sweep.ts). ]]
-- take(bucket, prefix, field, state, ref, camp, created, expires, owner) is called for each token record of the
-- buckets (field: its 28-digit suffix, prefix the bucket's 4 digits; the rest as parse_rec reads the record;
-- owner(ref) gives that owner of the bucket as "<satNum>:<userId>") and returns true when it changed the token.
-- A bucket is read with HSCAN, SCAN_COUNT fields at a time: a listpack bucket (the common case) answers whole,
-- while a bucket one owner's many thousands of tokens made a hashtable is swept over several calls, each
-- going on from the cursor where the last stopped (read whole, 100k fields held Redis for over a second).
local SCAN_COUNT = 64
local FIRST = 7
local function sweep_records(take)
  local perShard, from, budget = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
  local cursor = ARGV[7]
  local first = tonumber(ARGV[3]) * perShard + from
  local count, work = 0, 0
  for k = FIRST, #KEYS do
    local bucket = KEYS[k]
    local prefix = string.format('%04x', first + k - FIRST)
    local names = {}
    local function owner(ref)
      if names[ref] == nil then names[ref] = redis.call('HGET', bucket, '#' .. ref) or false end
      return names[ref] or nil
    end
    repeat
      local page = redis.call('HSCAN', bucket, cursor, 'COUNT', SCAN_COUNT)
      cursor = page[1]
      local all = page[2]
      local changed = 0
      for i = 1, #all, 2 do
        local field = all[i]
        if string.sub(field, 1, 1) ~= '#' then
          local state, ref, camp, created, expires = parse_rec(all[i + 1])
          if take(bucket, prefix, field, state, ref, camp, created, expires, owner) then changed = changed + 1 end
        end
      end
      count = count + changed
      work = work + #all / 2 + 16 * changed
      if cursor ~= '0' and work >= budget then return { 'ok', count, from + k - FIRST, cursor } end
    until cursor == '0'
    local next = from + k - FIRST + 1
    if next >= perShard then return { 'ok', count, -1, '0' } end
    if work >= budget then return { 'ok', count, next, '0' } end
  end
  return { 'ok', count, from + #KEYS - FIRST + 1, '0' }
end
