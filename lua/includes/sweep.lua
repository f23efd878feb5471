--[[ Walking a run of one shard's buckets with a work budget, for the scripts that sweep every bucket
  (revoke_sweep, purge); included after codec. Their calls share this shape:
    KEYS[6..] consecutive buckets of the shard, from the one to sweep first
    ARGV[3] shard number  ARGV[4] buckets per shard  ARGV[5] the bucket number of KEYS[6]  ARGV[6] budget
  and reply { 'ok', count, next }: next is the bucket number to call again from, -1 when the shard is done.
  A call stops after the bucket in which its work (1 a record read, 16 a token changed: their cost in µs of
  Redis time, roughly) reached the budget, so no call holds Redis long whatever the shard holds: one call per
  shard held it up to 166 ms at 1M tokens, and redeems of other clients waited behind it (bench/sweep.ts). ]]
-- visit(bucket, prefix, fields) is called per bucket with its HGETALL (field, value, ...) and returns how many
-- tokens it changed
local function sweep_buckets(visit)
  local perShard, from, budget = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
  local first = tonumber(ARGV[3]) * perShard + from
  local count, work = 0, 0
  for k = 6, #KEYS do
    local all = redis.call('HGETALL', KEYS[k])
    local changed = visit(KEYS[k], string.format('%04x', first + k - 6), all)
    count = count + changed
    work = work + #all / 2 + 16 * changed
    local next = from + k - 5
    if next >= perShard then return { 'ok', count, -1 } end
    if work >= budget then return { 'ok', count, next } end
  end
  return { 'ok', count, from + #KEYS - 5 }
end
