--[[ Walking the token records of a run of one shard's buckets with a work budget, for the scripts that
  sweep every bucket (revoke_sweep, purge); included after codec. Their calls share this shape:
    KEYS[6..] consecutive buckets of the shard, from the one to sweep first
    ARGV[3] shard number  ARGV[4] buckets per shard  ARGV[5] the bucket number of KEYS[6]  ARGV[6] budget
  and reply { 'ok', count, next }: next is the bucket number to call again from, -1 when the shard is done.
  A call stops after the bucket in which its work (1 a record read, 16 a token changed: their cost in µs of
  Redis time, roughly) reached the budget, so no call holds Redis long whatever the shard holds: one call per
  shard held it up to 166 ms at 1M tokens, and redeems of other clients waited behind it (bench/sweep.ts). ]]
-- take(bucket, prefix, field, state, ref, camp, created, expires, owners) is called for each token record of the
-- buckets (field: its 28-digit suffix, prefix the bucket's 4 digits; the rest as parse_rec reads the record) and
-- returns true when it changed the token. `owners` (the bucket's ref -> "<satNum>:<userId>") is read only when
-- `withOwners` is given, else it is nil.
local function sweep_records(take, withOwners)
  local perShard, from, budget = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
  local first = tonumber(ARGV[3]) * perShard + from
  local count, work = 0, 0
  for k = 6, #KEYS do
    local bucket = KEYS[k]
    local prefix = string.format('%04x', first + k - 6)
    local all = redis.call('HGETALL', bucket)
    local owners
    if withOwners then
      owners = {}
      for i = 1, #all, 2 do
        if string.sub(all[i], 1, 1) == '#' then owners[string.sub(all[i], 2)] = all[i + 1] end
      end
    end
    local changed = 0
    for i = 1, #all, 2 do
      local field = all[i]
      if string.sub(field, 1, 1) ~= '#' then
        local state, ref, camp, created, expires = parse_rec(all[i + 1])
        if take(bucket, prefix, field, state, ref, camp, created, expires, owners) then changed = changed + 1 end
      end
    end
    count = count + changed
    work = work + #all / 2 + 16 * changed
    local next = from + k - 5
    if next >= perShard then return { 'ok', count, -1 } end
    if work >= budget then return { 'ok', count, next } end
  end
  return { 'ok', count, from + #KEYS - 5 }
end
