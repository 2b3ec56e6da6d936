-- Claims an account for the writer of epoch E (design §2.5): raises cur's _e to E, or answers
-- FENCED if a newer epoch holds it. Returns {'OK', _tp, _o} (empty strings when unset).
-- KEYS: cur. ARGV: E.
local cur = KEYS[1]
local stored = redis.call('HMGET', cur, '_e', '_tp', '_o')
local e = tonumber(stored[1]) or 0
local E = tonumber(ARGV[1])
if e > E then return {'FENCED'} end
if e < E then redis.call('HSET', cur, '_e', ARGV[1]) end
return {'OK', stored[2] or '', stored[3] or ''}
