--[[ The snapshot writer's consumer group on a shard's event stream, for the scripts that read, trim or make it
  (read_new, trim_below, ensure_group); included, so it runs on the caller's keys: the stream the caller
  names in its KEYS, nothing else. id_after compares stream ids; group_info reads the group's XINFO fields;
  write_read_count writes the group's count of entries read back to replicas and the AOF (Redis before 7.2.4
  leaves it out of what it propagates for a read, redis/redis#12898). ]]
-- Stream ids ('ms-seq') compared as numbers: as text '9-0' sorts after '10-0'.
local function id_after(a, b)
  local am, as = a:match('^(%d+)-(%d+)$')
  local bm, bs = b:match('^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am > bm or (am == bm and as > bs)
end

-- The consumer group `name`'s XINFO GROUPS fields on `stream` (nil when it has none, or the stream is gone).
local function group_info(stream, name)
  local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', stream)
  if not ok then return nil end
  for _, g in ipairs(groups) do
    local fields = {}
    for i = 1, #g, 2 do fields[g[i]] = g[i + 1] end
    if fields['name'] == name then return fields end
  end
  return nil
end

-- Writes the group's count of entries read as it stands (XGROUP SETID ... ENTRIESREAD). Redis before 7.2.4
-- sends a read to replicas and the AOF (XCLAIM ... LASTID) without it: a promoted replica or an AOF replay kept
-- an old count (or none), and its lag took everything read since for unread (redis/redis#12898).
local function write_read_count(stream, name)
  local g = group_info(stream, name)
  if g and g['entries-read'] then redis.call('XGROUP', 'SETID', stream, name, g['last-delivered-id'], 'ENTRIESREAD', g['entries-read']) end
end
