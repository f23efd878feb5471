--[[
  revoke: one token, or every unredeemed/reserved token of one owner.
  KEYS[1] bucket  KEYS[2] dict  KEYS[3] rs  KEYS[4] rd  KEYS[5] stats  KEYS[6] ev   (one hash tag {shard})
  ARGV[1] 'token': ARGV[2] token hex  ARGV[3] campaign id or absent: only a token of that campaign (the undo of
            a failed generate must not revoke a token its new one collided with), else not_found
          'owner': ARGV[2] owner satellite id  ARGV[3] owner user id  ARGV[4] owner ref hint  ARGV[5] bucket hex prefix
  Reply: token mode { code, row... } with code ok | not_found | already_redeemed | revoked;
         owner mode { 'ok', count }.
]]
--- @include "codec"

local keys = { rs = KEYS[3], rd = KEYS[4], stats = KEYS[5], ev = KEYS[6] }
local now, at = clock()
if ARGV[1] == 'token' then
  local t = load_token(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[2], now)
  if not t or (ARGV[3] and t.campaign ~= ARGV[3]) then return { 'not_found' } end
  if t.state == 'r' then return reply('already_redeemed', t) end
  if t.state == 'x' then return reply('revoked', t) end
  return transition(keys, t, 'x', 'revoked', at)
end

local satNum = redis.call('HGET', KEYS[2], 's\t' .. ARGV[2])
if not satNum then return { 'ok', 0 } end
local ref = find_owner(KEYS[1], satNum .. ':' .. ARGV[3], ARGV[4], false)
if not ref then return { 'ok', 0 } end
local all = redis.call('HGETALL', KEYS[1])
local count = 0
for i = 1, #all, 2 do
  local field, rec = all[i], all[i + 1]
  if string.sub(field, 1, 1) ~= '#' then
    local state, r = parse_rec(rec)
    if r == ref and (state == 'u' or state == 's') then
      local t = load_token(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[5] .. field, now)
      transition(keys, t, 'x', 'revoked', at)
      count = count + 1
    end
  end
end
return { 'ok', count }
