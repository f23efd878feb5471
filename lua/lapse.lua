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
  ARGV[1] grace ms  ARGV[1 + i] token hex as read from KEYS[6] by the caller; its bucket is KEYS[6 + i]
  Reply: { tokens given back, lease entries removed }. A token no longer reserved when this runs has its
  lease entry removed (none should be left: every change out of `reserved` removes it, but one left behind
  would be read again by every sweep); one reserved again meanwhile, or within its grace by Redis' clock,
  is left alone.
]]
--- @include "codec"

local keys = { rs = KEYS[2], rd = KEYS[3], stats = KEYS[4], ev = KEYS[5], leases = KEYS[6] }
local now, at = clock()
local before = now - tonumber(ARGV[1])
local n, removed = 0, 0
for i = 1, #ARGV - 1 do
  local hex = ARGV[1 + i]
  local t = load_token(KEYS[6 + i], KEYS[1], KEYS[2], KEYS[3], hex, now)
  if not t or t.state ~= 's' then
    redis.call('ZREM', KEYS[6], hex)
    removed = removed + 1
  elseif tonumber(t.leaseExpiresAt) <= before then
    transition(keys, t, 'u', 'lapsed', at)
    n = n + 1
  end
end
return { n, removed }
