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
  the entries still there after its position, when the stream's head is past that position. The writer's own
  trims stay below the group's position (trim_below.lua), so they never count; a trim or delete by hand of
  entries not yet read left no trace before (the read below moves the group past the gap). Once counted, the
  group's count of entries read is set to include them: a read counts only what it delivers, so the lag kept
  the gap, and every later trim past the group (or every poll of an emptied stream) said it again. Redis gives
  no lag or no count (older than 7, a group made on a stream already there and not read yet, an XDEL inside
  the stream): not judged.
]]

--- @include "stream_group"

local group = group_info(KEYS[1], ARGV[1])
local at = group and group['last-delivered-id'] or ''
local lag = group and tonumber(group['lag'])
local read = group and tonumber(group['entries-read'])
local unread = 0
if at ~= '' and lag and read and lag > 0 then
  local head = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
  if not head then
    unread = lag
  elseif id_after(head[1], at) then
    unread = lag - redis.call('XLEN', KEYS[1])
  end
end
if unread > 0 then
  -- said once: a read past the gap counts only what it delivers, so the lag would keep the gap (and an empty
  -- stream, which a read does not move, would say it at every poll); the group's count is set to what it is
  redis.call('XGROUP', 'SETID', KEYS[1], ARGV[1], at, 'ENTRIESREAD', read + unread)
end
local got = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3], 'STREAMS', KEYS[1], '>')
-- the count goes with the read to replicas and the AOF
if got then write_read_count(KEYS[1], ARGV[1]) end
return { at, got and got[1][2] or {}, unread }
