--[[ An owner's tokens in its bucket, page by page, for the scripts that read or sweep one owner (list, list_redeemed,
  revoke's owner mode); included after codec. Kept out of codec.lua because every call of a script
  re-creates its includes' functions, and the hot single-token scripts have no use for this one. ]]
-- One page of the owner's tokens in its bucket: those among the fields HSCAN returns from `cursor` (about
-- `count`; a listpack bucket, the common case, answers whole at once), each as { suffix, state, campaign
-- number, createdAt, expiresAt }, and the cursor to go on from ('0': done). Paged because an owner with
-- 100k tokens makes its bucket a 100k-field hash, and one script reading it whole held every other client
-- for ~0.4 s (a revoke of them for ~1.3 s). A field may come twice when the hash is resized between pages.
local function owner_tokens(bucket, dict, sat, user, hint, cursor, count)
  local satNum = redis.call('HGET', dict, 's\t' .. sat)
  if not satNum then return {}, '0' end
  local ref = find_owner(bucket, satNum .. ':' .. user, hint, false)
  if not ref then return {}, '0' end
  local page = redis.call('HSCAN', bucket, cursor, 'COUNT', count)
  local all = page[2]
  local out = {}
  for i = 1, #all, 2 do
    local field = all[i]
    if string.sub(field, 1, 1) ~= '#' then
      local state, r, camp, created, expires = parse_rec(all[i + 1])
      if r == ref then out[#out + 1] = { field, state, camp, created, expires } end
    end
  end
  return out, page[1]
end
