--[[
  sync_read_count: writes one shard's consumer group count of entries read as it stands, so replicas and the
  AOF have it (lua/includes/stream_ids.lua, write_read_count). read_new.lua does so after every read; the
  writer also does it once per group as it starts writing (ensureGroups), for groups last read by a version before that
  (their replicas and AOF kept an old count until the group's next read that delivers entries).
  KEYS[1] the shard's event stream <p>:{s}:ev   (one key: one slot)
  ARGV[1] group
  Reply: nil. A read between the count's reading and its writing cannot happen: one script.
]]

--- @include "stream_ids"

write_read_count(KEYS[1], ARGV[1])
