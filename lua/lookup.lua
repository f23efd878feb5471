--[[
  lookup: read one token; changes nothing.
  KEYS[1] bucket  KEYS[2] dict  KEYS[3] rs  KEYS[4] rd   (one hash tag {shard})
  ARGV[1] token hex  ARGV[2] the token dashed
  Reply: { 'ok', row... } or { 'not_found' }.
]]
--- @include "codec"

local t = load_token(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], (clock()), ARGV[2])
if not t then return { 'not_found' } end
return reply('ok', t)
