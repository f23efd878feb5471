--[[
  list_redeemed: the redeemed tokens of one owner, with who redeemed each and when: what an owner's
  satellite needs to reward a referral. Changes nothing.
  KEYS[1] bucket  KEYS[2] dict  KEYS[3] rd   (one hash tag {shard}: the owner's shard)
  ARGV[1] owner satellite id  ARGV[2] owner user id  ARGV[3] owner ref hint  ARGV[4] bucket hex prefix
  ARGV[5] HSCAN cursor ('0' to start)  ARGV[6] fields to scan (about)
  Reply: the cursor to go on from ('0': done), then a flat list of { token hex, campaignId, redeemerSatelliteId,
  redeemerUserId, redeemedAt } per token of this page (lua/includes/owner.lua).
]]
--- @include "codec"
--- @include "owner"

local tokens, cursor = owner_tokens(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[5], ARGV[6])
local out = { cursor }
local camps = {}
for _, t in ipairs(tokens) do
  local field, state, camp = t[1], t[2], t[3]
  if state == 'r' then
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
return out
