--[[
  list_redeemed: the redeemed tokens of one owner, with who redeemed each and when: what an owner's
  satellite needs to reward a referral. Changes nothing.
  KEYS[1] bucket  KEYS[2] dict  KEYS[3] rd   (one hash tag {shard}: the owner's shard)
  ARGV[1] owner satellite id  ARGV[2] owner user id  ARGV[3] owner ref hint  ARGV[4] bucket hex prefix
  Reply: flat list of { token hex, campaignId, redeemerSatelliteId, redeemerUserId, redeemedAt } per token.
]]
--- @include "codec"

local satNum = redis.call('HGET', KEYS[2], 's\t' .. ARGV[1])
if not satNum then return {} end
local ref = find_owner(KEYS[1], satNum .. ':' .. ARGV[2], ARGV[3], false)
if not ref then return {} end
local all = redis.call('HGETALL', KEYS[1])
local out = {}
local camps = {}
for i = 1, #all, 2 do
  local field, rec = all[i], all[i + 1]
  if string.sub(field, 1, 1) ~= '#' then
    local state, r, camp = parse_rec(rec)
    if r == ref and state == 'r' then
      -- the redemption details: redeemer satellite, redeemer user, redeemedAt, reservationId
      local sat, user, at = string.match(redis.call('HGET', KEYS[3], field) or '\t\t', '^([^\t]*)\t([^\t]*)\t([^\t]*)')
      camps[camp] = camps[camp] or (redis.call('HGET', KEYS[2], 'C' .. camp) or '')
      out[#out + 1] = ARGV[4] .. field
      out[#out + 1] = camps[camp]
      out[#out + 1] = sat
      out[#out + 1] = user
      out[#out + 1] = at
    end
  end
end
return out
