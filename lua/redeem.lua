--[[
  redeem: check-and-redeem one token in one step (Storj's RedeemToken).
  KEYS[1] bucket  KEYS[2] dict  KEYS[3] rs  KEYS[4] rd  KEYS[5] stats  KEYS[6] ev  KEYS[7] leases
    all of one virtual shard: they share the hash tag {shard} taken from the token's first bits.
  ARGV[1] token hex (32, no dashes)  ARGV[2] redeemer satellite id  ARGV[3] redeemer user id
  ARGV[4] the token dashed (for the reply and the event row)
  Reply: { code, row... }; code ok | not_found | already_redeemed | reserved | revoked | expired.
  The same redeemer (satellite and user) repeating gets ok again: satellites retry on timeouts.
]]
--- @include "codec"

local keys = { rs = KEYS[3], rd = KEYS[4], stats = KEYS[5], ev = KEYS[6], leases = KEYS[7] }
local now, at = clock()
local t = load_token(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], now, ARGV[4])
if not t then return { 'not_found' } end
if t.state == 'r' and t.redeemerSat == ARGV[2] and t.redeemerUser == ARGV[3] then return reply('ok', t) end
local bad = unusable(t, now)
if bad then return reply(bad, t) end
t.redeemerSat, t.redeemerUser, t.redeemedAt, t.reservationId = ARGV[2], ARGV[3], at, ''
return transition(keys, t, 'r', 'redeemed', at)
