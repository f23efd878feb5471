--[[
  copied_removed: how many entries were removed from a shard's stream after its consumer group read them
  (src/snapshot/gone-from-postgres.ts: a writer whose start made the snapshot's tables anew, the database dropped
  or another DATABASE_URL, asks: the writer removes only what it committed, so those went into another database).
  One script so XINFO runs on the node holding the key (ioredis sends a bare XINFO to any master).
  KEYS[1] the shard's event stream <p>:{s}:ev   (one key: one slot)
  ARGV[1] group
  Reply: { the stream's first entry (its last one when emptied), how many entries read were removed }, or
  { '', 0 } when none were, or Redis cannot say (no stream or group, no counts: Redis older than 7). A trim
  removes the oldest entries first, so those are the first that many the group read. XTRIM leaves
  max-deleted-entry-id as it was: the counts tell a removal.
]]

--- @include "stream_group"

local ok, info = pcall(redis.call, 'XINFO', 'STREAM', KEYS[1])
if not ok then return { '', 0 } end
local f = {}
for i = 1, #info, 2 do f[info[i]] = info[i + 1] end
local added, length = tonumber(f['entries-added']), tonumber(f['length'])
if not added or not length or added <= length then return { '', 0 } end
local group = group_info(KEYS[1], ARGV[1])
local read = group and tonumber(group['entries-read'])
if not read or read == 0 then return { '', 0 } end
-- the rest were removed before the group read them: the read (read_new.lua) says and counts those
local removed = math.min(read, added - length)
if length == 0 then return { f['last-generated-id'], removed } end
return { f['recorded-first-entry-id'] or '', removed }
