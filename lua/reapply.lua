--[[
  reapply: gives a token back the final state (redeemed or revoked) Postgres holds of it, where Redis holds it
  open (unredeemed or reserved): a change Redis lost when it went back in time (an older RDB or AOF file, a
  lagging replica promoted). A token never leaves a final state, so only a lost change explains the pair.
  KEYS[1] bucket  KEYS[2] dict  KEYS[3] rs  KEYS[4] rd  KEYS[5] stats  KEYS[6] ev  KEYS[7] leases   (one hash tag {shard})
  ARGV[1] token hex  ARGV[2] the token dashed  ARGV[3] 'redeemed' | 'revoked'
  ARGV[4] redeemer satellite id  ARGV[5] redeemer user id  ARGV[6] redeemedAt  ARGV[7] reservation id   (redeemed)
  Reply: { code, row... }; code ok (reapplied, with a 'reapplied' event: Postgres keeps the state at a newer
  position) | not_found | changed (no longer open: a change made since the comparison stands).
]]
--- @include "codec"

local keys = { rs = KEYS[3], rd = KEYS[4], stats = KEYS[5], ev = KEYS[6], leases = KEYS[7] }
local now, at = clock()
local t = load_token(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], now, ARGV[2])
if not t then return { 'not_found' } end
if t.state ~= 'u' and t.state ~= 's' then return reply('changed', t) end
if ARGV[3] == 'revoked' then return transition(keys, t, 'x', 'reapplied', at) end
t.redeemerSat, t.redeemerUser, t.redeemedAt, t.reservationId = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
return transition(keys, t, 'r', 'reapplied', at)
