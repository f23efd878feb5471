--[[
  read_new: the snapshot writer's read of one shard's new stream entries, with where the consumer group stood
  before the read moved it (src/snapshot/streams.ts: a group found behind what was delivered went back in time
  with Redis). One script so both happen on the node holding the key, in this order: ioredis finds no key in
  XINFO, and on a Cluster sent it to any master, whose MOVED got it answered after the read.
  KEYS[1] the shard's event stream <p>:{s}:ev   (one key: one slot)
  ARGV[1] group  ARGV[2] consumer  ARGV[3] most entries
  Reply: { the group's last-delivered-id before the read ('' when it cannot say), the entries as XREADGROUP
  gives them ({} when none), how many entries after that id were removed unread (0 when none or unknown) }.
  A stream or group gone fails with XREADGROUP's NOGROUP, which the writer acts on.
  Removed unread: the group's lag (entries added minus entries read, which Redis 7 counts past any trim) minus
  the entries still there after its position, when the stream's head is past that position. The writer trims
  only below what it committed, so its own trims never count; a trim or delete by hand of entries not yet
  read left no trace before (the read below moves the group past the gap). Redis gives no lag (older than 7,
  a group set without its count, an XDEL inside the stream): not judged.
]]

-- stream ids compared as numbers: 'ms-seq'
local function after(a, b)
  local am, as = a:match('^(%d+)-(%d+)$')
  local bm, bs = b:match('^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am > bm or (am == bm and as > bs)
end

local at, lag = '', nil
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if ok then
  for _, g in ipairs(groups) do
    local fields = {}
    for i = 1, #g, 2 do fields[g[i]] = g[i + 1] end
    if fields['name'] == ARGV[1] then
      at = fields['last-delivered-id']
      lag = tonumber(fields['lag'])
    end
  end
end
local unread = 0
if at ~= '' and lag and lag > 0 then
  local head = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
  if not head then
    unread = lag
  elseif after(head[1], at) then
    unread = lag - redis.call('XLEN', KEYS[1])
  end
end
local got = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3], 'STREAMS', KEYS[1], '>')
return { at, got and got[1][2] or {}, unread }
