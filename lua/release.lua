--[[
  release: reserved -> unredeemed; the sign-up failed and the token must not be burnt.
  KEYS[1] bucket  KEYS[2] dict  KEYS[3] rs  KEYS[4] rd  KEYS[5] stats  KEYS[6] ev  KEYS[7] leases   (one hash tag {shard})
  ARGV[1] token hex  ARGV[2] reservation id
  ARGV[3] the calling satellite, which must be the one that reserved ('': any, for admin tools)  ARGV[4] the token dashed
  Reply: { code, row... }; code ok | not_found | reservation_mismatch.
  Releasing a lapsed reservation that nobody has taken since is still ok, until the lapse sweep gives the
  token back (lua/lapse.lua, LEASE_SWEEP_GRACE_MS after the lease ended): then it holds no reservation.
]]
--- @include "codec"

local keys = { rs = KEYS[3], rd = KEYS[4], stats = KEYS[5], ev = KEYS[6], leases = KEYS[7] }
local now, at = clock()
local t = load_token(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], now, ARGV[4])
if not t then return { 'not_found' } end
if t.state ~= 's' or t.reservationId ~= ARGV[2] or (ARGV[3] ~= '' and ARGV[3] ~= t.reservedBy) then return reply('reservation_mismatch', t) end
return transition(keys, t, 'u', 'released', at)
