--[[
  resync: append to the shard's event stream, for each token given, one 'resync' event carrying the token's
  row as Redis holds it now, changing nothing else; the snapshot writer copies it to Postgres like any
  change, after every earlier event of the token (a later stream position wins there). `verify
  --repair-tokens` sends the tokens whose changes Postgres lacks (entries removed from the stream unread).
  KEYS[1] dict  KEYS[2] rs  KEYS[3] rd  KEYS[4] ev  KEYS[5..] the tokens' buckets   (one hash tag {shard})
  ARGV[2i-1] token hex, ARGV[2i] the token dashed (its bucket is KEYS[4 + i])
  Reply: number of events appended (a token no longer in Redis gets none).
]]
--- @include "codec"

local now, at = clock()
local n = 0
for i = 1, #ARGV / 2 do
  local t = load_token(KEYS[4 + i], KEYS[1], KEYS[2], KEYS[3], ARGV[2 * i - 1], now, ARGV[2 * i])
  if t then
    -- the state as stored, as verify compares it: a lease lapsing emits no event (only its give-back does,
    -- lua/lapse.lua), so Postgres keeps it reserved until then
    t.lapsed = false
    redis.call('XADD', KEYS[4], '*', 'type', 'resync', 'at', at, 'row', table.concat(reply('ok', t), '\t', 2, 14))
    n = n + 1
  end
end
return n
