-- Writes one account's snapshot (hot-state layout v2, design §2.4), all keys in its slot.
-- KEYS: cur, then `ndims` dims hashes, then `nsessions` session hashes.
-- ARGV: E, TP, O_prev, O_new, cur_expire_at, ncur, (field, value) x ncur,
--       ndims, then per dims hash: n, field x n, expire_at,
--       nsessions, then per session: n, (field, value) x n, expire_at.
-- The guard (the writer's epoch E, its topic:partition TP, the offset O_prev it loaded):
--   stored _e > E            -> FENCED   a newer assignment owns this account
--   stored _o >= O_new       -> HAVE     already stored (a repeated call)
--   stored _o ~= O_prev      -> CONFLICT not the state this writer loaded
--   otherwise                -> OK       every value written, absolute, with _e, _tp, _o
-- (_o counts only when _tp is TP: another partition's offsets say nothing about this one.)
local cur = KEYS[1]
local stored = redis.call('HMGET', cur, '_e', '_tp', '_o')
local e = tonumber(stored[1]) or 0
local E = tonumber(ARGV[1])
if e > E then return 'FENCED' end
local so = -1
if stored[2] == ARGV[2] then so = tonumber(stored[3]) or -1 end
local o_prev, o_new = tonumber(ARGV[3]), tonumber(ARGV[4])
if so >= o_new then return 'HAVE' end
if so ~= o_prev then return 'CONFLICT' end

local i = 6
local ncur = tonumber(ARGV[i]); i = i + 1
local fields = {'_e', ARGV[1], '_tp', ARGV[2], '_o', ARGV[4]}
for _ = 1, ncur do
    fields[#fields + 1] = ARGV[i]; fields[#fields + 1] = ARGV[i + 1]; i = i + 2
end
redis.call('HSET', cur, unpack(fields))
redis.call('EXPIREAT', cur, ARGV[5])

local k = 2
local ndims = tonumber(ARGV[i]); i = i + 1
for _ = 1, ndims do
    local n = tonumber(ARGV[i]); i = i + 1
    local members = {}
    for _ = 1, n do
        members[#members + 1] = ARGV[i]; members[#members + 1] = '1'; i = i + 1
    end
    if n > 0 then redis.call('HSET', KEYS[k], unpack(members)) end
    redis.call('EXPIREAT', KEYS[k], ARGV[i]); i = i + 1
    k = k + 1
end

local nsessions = tonumber(ARGV[i]); i = i + 1
for _ = 1, nsessions do
    local n = tonumber(ARGV[i]); i = i + 1
    local pairs_ = {}
    for _ = 1, n do
        pairs_[#pairs_ + 1] = ARGV[i]; pairs_[#pairs_ + 1] = ARGV[i + 1]; i = i + 2
    end
    if n > 0 then redis.call('HSET', KEYS[k], unpack(pairs_)) end
    redis.call('EXPIREAT', KEYS[k], ARGV[i]); i = i + 1
    k = k + 1
end
return 'OK'
