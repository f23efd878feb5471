--[[
  complete: reserved -> redeemed, recording the new user (seed, redemption step 3).
  KEYS[1] bucket  KEYS[2] dict  KEYS[3] rs  KEYS[4] rd  KEYS[5] stats  KEYS[6] ev  KEYS[7] leases   (one hash tag {shard})
  ARGV[1] token hex  ARGV[2] reservation id  ARGV[3] redeemer user id
  ARGV[4] the calling satellite, which must be the one that reserved ('': any, for admin tools)  ARGV[5] the token dashed
  Reply: { code, row... }; code ok | not_found | reservation_mismatch | reservation_expired | revoked.
  Repeating a completed call (same reservation, user and satellite) answers ok again. Another satellite
  holding the reservation id is refused: the redemption is credited to the reserving satellite, so it
  would record that satellite a user it does not have.
]]
--- @include "codec"

local keys = { rs = KEYS[3], rd = KEYS[4], stats = KEYS[5], ev = KEYS[6], leases = KEYS[7] }
local now, at = clock()
local t = load_token(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], now, ARGV[5])
if not t then return { 'not_found' } end
local caller = ARGV[4] == '' or ARGV[4] == (t.state == 'r' and t.redeemerSat or t.reservedBy)
if t.state == 'r' and t.reservationId == ARGV[2] and t.redeemerUser == ARGV[3] and caller then return reply('ok', t) end
if t.state == 'x' then return reply('revoked', t) end
if t.state ~= 's' or t.reservationId ~= ARGV[2] or not caller then return reply('reservation_mismatch', t) end
if t.lapsed then return reply('reservation_expired', t) end
t.redeemerSat, t.redeemerUser, t.redeemedAt = t.reservedBy, ARGV[3], at
return transition(keys, t, 'r', 'redeemed', at)
