--[[
  revoke: one token, or every unredeemed/reserved token of one owner.
  KEYS[1] bucket  KEYS[2] dict  KEYS[3] rs  KEYS[4] rd  KEYS[5] stats  KEYS[6] ev  KEYS[7] leases   (one hash tag {shard})
  ARGV[1] 'token': ARGV[2] token hex  ARGV[3] campaign id or absent: only a token of that campaign (the undo of
            a failed generate must not revoke a token its new one collided with), else not_found
          'owner': ARGV[2] owner satellite id  ARGV[3] owner user id  ARGV[4] owner ref hint  ARGV[5] bucket hex prefix
            ARGV[6] HSCAN cursor ('0' to start)  ARGV[7] fields to scan (about): one page (lua/includes/owner.lua)
  Reply: token mode { code, row... } with code ok | not_found | already_redeemed | revoked;
         owner mode { cursor to go on from ('0': done), count revoked in this page }.
]]
--- @include "codec"
--- @include "owner"

local keys = { rs = KEYS[3], rd = KEYS[4], stats = KEYS[5], ev = KEYS[6], leases = KEYS[7] }
local now, at = clock()
if ARGV[1] == 'token' then
  local t = load_token(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[2], now)
  if not t or (ARGV[3] and t.campaign ~= ARGV[3]) then return { 'not_found' } end
  if t.state == 'r' then return reply('already_redeemed', t) end
  if t.state == 'x' then return reply('revoked', t) end
  return transition(keys, t, 'x', 'revoked', at)
end

local tokens, cursor = owner_tokens(KEYS[1], KEYS[2], ARGV[2], ARGV[3], ARGV[4], ARGV[6], ARGV[7])
local count = 0
for _, t in ipairs(tokens) do
  -- a token a resize showed twice is revoked already the second time
  if t[2] == 'u' or t[2] == 's' then
    transition(keys, load_token(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[5] .. t[1], now), 'x', 'revoked', at)
    count = count + 1
  end
end
return { cursor, count }
