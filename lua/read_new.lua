--[[
  read_new: the snapshot writer's read of one shard's new stream entries, with where the consumer group stood
  before the read moved it (src/snapshot/streams.ts: a group found behind what was delivered went back in time
  with Redis). One script so both happen on the node holding the key, in this order: ioredis finds no key in
  XINFO, and on a Cluster sent it to any master, whose MOVED got it answered after the read.
  KEYS[1] the shard's event stream <p>:{s}:ev   (one key: one slot)
  ARGV[1] group  ARGV[2] consumer  ARGV[3] most entries
  Reply: { the group's last-delivered-id before the read ('' when it cannot say), the entries as XREADGROUP
  gives them ({} when none) }. A stream or group gone fails with XREADGROUP's NOGROUP, which the writer acts on.
]]

local at = ''
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if ok then
  for _, g in ipairs(groups) do
    local name, last
    for i = 1, #g, 2 do
      if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'last-delivered-id' then last = g[i + 1] end
    end
    if name == ARGV[1] then at = last end
  end
end
local got = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3], 'STREAMS', KEYS[1], '>')
return { at, got and got[1][2] or {} }
