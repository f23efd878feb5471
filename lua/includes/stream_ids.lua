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
