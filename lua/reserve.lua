--[[
  reserve: hold a token while the new account is created (seed, redemption step 2).
  KEYS[1] bucket  KEYS[2] dict  KEYS[3] rs  KEYS[4] rd  KEYS[5] stats  KEYS[6] ev  KEYS[7] leases   (one hash tag {shard})
  ARGV[1] token hex  ARGV[2] reserving satellite id  ARGV[3] lease ms  ARGV[4] new reservation id
  ARGV[5] the token dashed
  Reply: { code, row... }; code ok | not_found | already_redeemed | reserved | revoked | expired.
  A lapsed lease counts as unredeemed: decided here from Redis TIME, so no sweeper is needed for
  correctness (lua/lapse.lua gives abandoned reservations back, for the counters).
  The same satellite repeating a reservation id the token holds gets ok again with that reservation, its
  lease unchanged: a satellite that chose the id (one per sign-up) can retry a reserve whose answer it lost.
]]
--- @include "codec"

local keys = { rs = KEYS[3], rd = KEYS[4], stats = KEYS[5], ev = KEYS[6], leases = KEYS[7] }
local now, at = clock()
local t = load_token(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], now, ARGV[5])
if not t then return { 'not_found' } end
if t.state == 's' and not t.lapsed and t.reservationId == ARGV[4] and t.reservedBy == ARGV[2] then return reply('ok', t) end
local bad = unusable(t, now)
if bad then return reply(bad, t) end
t.reservationId, t.reservedBy, t.leaseExpiresAt = ARGV[4], ARGV[2], dec(now + tonumber(ARGV[3]))
return transition(keys, t, 's', 'reserved', at)
