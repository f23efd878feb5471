--[[ An owner's tokens in its bucket, for the scripts that read or sweep one owner (list, list_redeemed,
  revoke's owner mode); included after codec. Kept out of codec.lua because every call of a script
  re-creates its includes' functions, and the hot single-token scripts have no use for this one. ]]
-- each of the owner's tokens as { suffix, state, campaign number, createdAt, expiresAt }; {} when the
-- owner has none in `bucket`
local function owner_tokens(bucket, dict, sat, user, hint)
  local satNum = redis.call('HGET', dict, 's\t' .. sat)
  if not satNum then return {} end
  local ref = find_owner(bucket, satNum .. ':' .. user, hint, false)
  if not ref then return {} end
  local all = redis.call('HGETALL', bucket)
  local out = {}
  for i = 1, #all, 2 do
    local field = all[i]
    if string.sub(field, 1, 1) ~= '#' then
      local state, r, camp, created, expires = parse_rec(all[i + 1])
      if r == ref then out[#out + 1] = { field, state, camp, created, expires } end
    end
  end
  return out
end
