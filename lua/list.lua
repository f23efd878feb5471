--[[
  list: the unredeemed, unexpired tokens of one owner (Storj's GetTokens). Changes nothing.
  KEYS[1] bucket  KEYS[2] dict  KEYS[3] rs   (one hash tag {shard}: the owner's shard)
  ARGV[1] owner satellite id  ARGV[2] owner user id  ARGV[3] owner ref hint  ARGV[4] bucket hex prefix
  Reply: flat list of { token hex, campaignId, createdAt, expiresAt } per token.
]]
--- @include "codec"

local satNum = redis.call('HGET', KEYS[2], 's\t' .. ARGV[1])
if not satNum then return {} end
local ref = find_owner(KEYS[1], satNum .. ':' .. ARGV[2], ARGV[3], false)
if not ref then return {} end
local now = clock()
local all = redis.call('HGETALL', KEYS[1])
local out = {}
local camps = {}
for i = 1, #all, 2 do
  local field, rec = all[i], all[i + 1]
  if string.sub(field, 1, 1) ~= '#' then
    local state, r, camp, created, expires = parse_rec(rec)
    if r == ref and (state == 'u' or state == 's') and not (expires and expires <= now) then
      local free = state == 'u'
      if not free then
        -- only the lease, the third tab-separated field of the reservation
        local lease = string.match(redis.call('HGET', KEYS[3], field) or '\t\t0', '^[^\t]*\t[^\t]*\t([^\t]*)')
        free = tonumber(lease) <= now
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
end
return out
