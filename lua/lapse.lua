--[[
  lapse: give back reserved tokens whose lease lapsed (a sign-up abandoned without a release): each becomes
  unredeemed with a 'lapsed' event, and its reservation record, its lease entry and its count under
  `reserved` go. Correctness does not wait for this (every script already treats a lapsed lease as
  unredeemed, from Redis TIME): it keeps the counters, the metrics and Postgres true, and frees the records.
  A reservation is kept as it was for a grace after its lease ended, so a late complete still answers
  reservation_expired and a late release ok; given back, the token holds no reservation, and those answer
  reservation_mismatch, as after a release.
  KEYS[1] dict  KEYS[2] rs  KEYS[3] rd  KEYS[4] stats  KEYS[5] ev  KEYS[6] leases  KEYS[7..] the tokens'
    buckets   (one hash tag {shard})
  ARGV[1] grace ms  ARGV[1 + i] token hex (as read from KEYS[6] by the sweep); its bucket is KEYS[6 + i]
  Reply: { tokens given back, entries removed, entries written }. A token no longer reserved when this runs
  has its lease entry removed, and one still reserved within its grace by Redis' clock has it written at its
  stored lease: none should need either (every change into or out of `reserved` writes the entry), but an
  entry out of step (a reservation by a version before the index, during a rolling upgrade) would otherwise
  be read first by every sweep and hold up the rest of its shard. With an endless grace this only writes
  the entries: `verify --repair-leases` sends it the reserved tokens the index lacks.
]]
--- @include "codec"

local keys = { rs = KEYS[2], rd = KEYS[3], stats = KEYS[4], ev = KEYS[5], leases = KEYS[6] }
local now, at = clock()
local before = now - tonumber(ARGV[1])
local n, removed, written = 0, 0, 0
for i = 1, #ARGV - 1 do
  local hex = ARGV[1 + i]
  local t = load_token(KEYS[6 + i], KEYS[1], KEYS[2], KEYS[3], hex, now)
  if not t or t.state ~= 's' then
    redis.call('ZREM', KEYS[6], hex)
    removed = removed + 1
  elseif tonumber(t.leaseExpiresAt) <= before then
    transition(keys, t, 'u', 'lapsed', at)
    n = n + 1
  elseif redis.call('ZADD', KEYS[6], 'CH', t.leaseExpiresAt, hex) == 1 then
    written = written + 1
  end
end
return { n, removed, written }
