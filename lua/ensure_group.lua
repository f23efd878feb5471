--[[
  ensure_group: one shard's event stream and the snapshot writer's consumer group on it, made if missing, and
  the group's count of entries read written as it stands. Used by the writer as it starts writing and by
  restore, on a stream it has just deleted.
  - no stream: made with the group, which has read none of it and says so (ENTRIESREAD 0). Redis otherwise has
    no count for a group until its first read, which takes everything before the stream's head as read:
    read_new.lua could not see entries removed unread before it.
  - a stream without the group (made by a generate before any writer ran, or its group lost): the group made at
    its start, with no count: what the stream lacks may have been read by a group since lost.
  - the group there: its count written (write_read_count). A group last read by a version that did not write it
    after each read has an old one on its replicas and in the AOF.
  KEYS[1] the shard's event stream <p>:{s}:ev   (one key: one slot)
  ARGV[1] group
  Reply: nil. One script, so a generate making the stream or a read between the looks and the writes cannot.
]]

--- @include "stream_group"

if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM', 'ENTRIESREAD', 0)
elseif not group_info(KEYS[1], ARGV[1]) then
  redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0')
else
  write_read_count(KEYS[1], ARGV[1])
end
