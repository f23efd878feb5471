--[[
  revoke_campaign: revoke every unredeemed/reserved token of one campaign within one virtual shard.
  KEYS[1] dict  KEYS[2] rs  KEYS[3] rd  KEYS[4] stats  KEYS[5] ev  KEYS[6..] every bucket of the shard
    (one hash tag {shard}; the caller runs this once per shard)
  ARGV[1] campaign id  ARGV[2] shard number  ARGV[3] buckets per shard  ARGV[4] the revocation time (ms)
    revocation_record returned
  Reply: { 'ok', count }.
  It first marks the campaign revoked in the shard's dict (kept, also when the shard has none of its tokens
  yet): generate refuses a marked campaign, so no token of it can be made on this shard after the sweep.
]]
--- @include "codec"

local keys = { rs = KEYS[2], rd = KEYS[3], stats = KEYS[4], ev = KEYS[5] }
local now, at = clock()
redis.call('HSETNX', KEYS[1], 'x\t' .. ARGV[1], ARGV[4])
local camp = redis.call('HGET', KEYS[1], 'c\t' .. ARGV[1])
if not camp then return { 'ok', 0 } end
local shard, perShard = tonumber(ARGV[2]), tonumber(ARGV[3])
local count = 0
for k = 6, #KEYS do
  local bucket = KEYS[k]
  local prefix = string.format('%04x', shard * perShard + (k - 6))
  local all = redis.call('HGETALL', bucket)
  for i = 1, #all, 2 do
    local field, rec = all[i], all[i + 1]
    if string.sub(field, 1, 1) ~= '#' then
      local state, _, c = parse_rec(rec)
      if c == camp and (state == 'u' or state == 's') then
        local t = load_token(bucket, KEYS[1], KEYS[2], KEYS[3], prefix .. field, now)
        transition(keys, t, 'x', 'revoked', at)
        count = count + 1
      end
    end
  end
end
return { 'ok', count }
