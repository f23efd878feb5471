--[[
  trim_below: the snapshot writer's trim of one shard's event stream once a batch is committed: entries below
  the newest one committed go (XTRIM MINID ~), but never one still pending (delivered to a writer that has not
  committed it: its own next round, or a paused ex-holder's read) nor one the consumer group has not delivered.
  The group is behind what was committed only when Redis went back in time (an older RDB or AOF file, a lagging
  replica promoted) under a batch in flight: trimmed there, entries the group has yet to deliver again would be
  taken by read_new.lua for entries removed unread, though Postgres holds them.
  KEYS[1] the shard's event stream <p>:{s}:ev   (one key: one slot)
  ARGV[1] group  ARGV[2] the newest id committed
  Reply: the entries removed.
]]

--- @include "stream_group"

local below = ARGV[2]
local pending = redis.call('XPENDING', KEYS[1], ARGV[1])
if pending[1] > 0 and id_after(below, pending[2]) then below = pending[2] end
-- the group is there: XPENDING fails with NOGROUP otherwise
local group = group_info(KEYS[1], ARGV[1])
if id_after(below, group['last-delivered-id']) then below = group['last-delivered-id'] end
return redis.call('XTRIM', KEYS[1], 'MINID', '~', below)
