--[[
  list: the unredeemed, unexpired tokens of one owner (Storj's GetTokens). Changes nothing.
  KEYS[1] bucket  KEYS[2] dict  KEYS[3] rs   (one hash tag {shard}: the owner's shard)
  ARGV[1] owner satellite id  ARGV[2] owner user id  ARGV[3] owner ref hint  ARGV[4] bucket hex prefix
  ARGV[5] HSCAN cursor ('0' to start)  ARGV[6] fields to scan (about)
  Reply: the cursor to go on from ('0': done), then a flat list of { token hex, campaignId, createdAt, expiresAt }
  per token of this page (lua/includes/owner.lua).
]]
--- @include "codec"
--- @include "owner"

local now = clock()
local tokens, cursor = owner_tokens(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[5], ARGV[6])
local out = { cursor }
local camps = {}
for _, t in ipairs(tokens) do
  local field, state, camp, created, expires = t[1], t[2], t[3], t[4], t[5]
  if (state == 'u' or state == 's') and not (expires and expires <= now) then
    local free = state == 'u'
    if not free then
      -- only the lease, the third tab-separated field of the reservation
      local lease = string.match(redis.call('HGET', KEYS[3], field) or '\t\t0', '^[^\t]*\t[^\t]*\t([^\t]*)')
      -- an unreadable lease counts as lapsed, as load_token (codec.lua) and so lookup say
      free = (tonumber(lease) or 0) <= now
    end
    if free then
      camps[camp] = camps[camp] or (redis.call('HGET', KEYS[2], 'C' .. camp) or '')
      out[#out + 1] = ARGV[4] .. field
      out[#out + 1] = camps[camp]
      out[#out + 1] = dec(created)
      out[#out + 1] = dec(expires)
    end
  end
end
return out
