-- Writes one account's snapshot (hot-state layout v2, design §2.4), all keys in its slot.
-- Runs after sliced.lua (`sliced`).
-- KEYS: cur first, then every other key the ops name by index (dims, sessions, closed hashes).
-- ARGV: E, TP, O_prev (or 'force'), O_new, cur_expire_at, then the ops, each a count followed by its items
-- (an expire_at of '' leaves the key's expiry as it is: the writer set that one already):
--   ncur,      (field, value) x ncur                      HSET cur (absolute)
--   ngone,     field x ngone                              HDEL cur (sessions past their day)
--   ndims,     per: key, n, field x n, expire_at          HSET field 1 (new members), EXPIREAT
--   nsessions, per: key, n, (field, value) x n, expire_at HSET (absolute), EXPIREAT
--   nmoves,    per: key, stamp, n, (field, value) x n, expire_at
--                                                         HSET the closed hash, EXPIREAT, and
--                                                         HDEL stamp:field from cur
--   nlate,     per: key, n, (field, delta) x n, expire_at HINCRBY the closed hash, EXPIREAT
--   nmembers,  per: set, field, count, count_field, set_expire_at
--                                                         HSETNX set field 1; when new,
--                                                         HINCRBY count count_field 1
-- The guard (the writer's epoch E, its topic:partition TP, the offset O_prev it loaded):
--   stored _e > E (same TP)  -> FENCED   a newer assignment of this partition owns it
--   stored _o >= O_new       -> HAVE     already stored (a repeated call)
--   stored _o ~= O_prev      -> CONFLICT not the state this writer loaded
--   otherwise                -> OK       every op applied, with _e, _tp, _o set in cur
-- (_o counts only when _tp is TP: another partition's offsets say nothing about this one.)
-- The increments (late windows, late members) are not idempotent alone; the guard makes the
-- whole call land once.
local cur = KEYS[1]
local stored = redis.call('HMGET', cur, '_e', '_tp', '_o')
local e = tonumber(stored[1]) or 0
local E = tonumber(ARGV[1])
-- Epochs count per partition: only a newer owner of this writer's partition fences it (an
-- account written from another partition, before a drained repartition, does not).
if e > E and stored[2] == ARGV[2] then return 'FENCED' end
local so = -1
if stored[2] == ARGV[2] then so = tonumber(stored[3]) or -1 end
-- O_prev 'force' (rebuild-hot-state, aggregators stopped, every value absolute) skips the
-- offset guard.
if ARGV[3] ~= 'force' then
    local o_prev, o_new = tonumber(ARGV[3]), tonumber(ARGV[4])
    if so >= o_new then return 'HAVE' end
    if so ~= o_prev then return 'CONFLICT' end
end

local i = 6
local function take()
    local v = ARGV[i]; i = i + 1; return v
end
-- The next n (field, value) pairs of ARGV, written to key.
local function hset_pairs(key, n)
    sliced('HSET', key, ARGV, i, i + 2 * n - 1)
    i = i + 2 * n
end
local function expire(key, at)
    if at ~= '' then redis.call('EXPIREAT', key, at) end
end

-- cur's guard fields go in the same HSET as the first slice of its own fields (994 values, so
-- that with the guard's six the call stays within 1,000).
local ncur = 2 * tonumber(take())
local head = math.min(ncur, 994)
redis.call('HSET', cur, '_e', ARGV[1], '_tp', ARGV[2], '_o', ARGV[4], unpack(ARGV, i, i + head - 1))
sliced('HSET', cur, ARGV, i + head, i + ncur - 1)
i = i + ncur
expire(cur, ARGV[5])

local ngone = tonumber(take())
sliced('HDEL', cur, ARGV, i, i + ngone - 1)
i = i + ngone

for _ = 1, tonumber(take()) do
    local key = KEYS[tonumber(take())]
    local n = tonumber(take())
    local members = {}
    for _ = 1, n do members[#members + 1] = take(); members[#members + 1] = '1' end
    sliced('HSET', key, members, 1, #members)
    expire(key, take())
end

for _ = 1, tonumber(take()) do
    local key = KEYS[tonumber(take())]
    hset_pairs(key, tonumber(take()))
    expire(key, take())
end

for _ = 1, tonumber(take()) do
    local key = KEYS[tonumber(take())]
    local stamp = take()
    local n = tonumber(take())
    if n > 0 then
        local from = i
        hset_pairs(key, n)
        local gone = {}
        for j = from, from + 2 * n - 1, 2 do gone[#gone + 1] = stamp .. ':' .. ARGV[j] end
        sliced('HDEL', cur, gone, 1, #gone)
    end
    redis.call('EXPIREAT', key, take())
end

for _ = 1, tonumber(take()) do
    local key = KEYS[tonumber(take())]
    local n = tonumber(take())
    for j = i, i + 2 * n - 1, 2 do redis.call('HINCRBY', key, ARGV[j], ARGV[j + 1]) end
    i = i + 2 * n
    redis.call('EXPIREAT', key, take())
end

for _ = 1, tonumber(take()) do
    local set = KEYS[tonumber(take())]
    local field = take()
    local count = KEYS[tonumber(take())]
    local count_field = take()
    if redis.call('HSETNX', set, field, '1') == 1 then
        redis.call('HINCRBY', count, count_field, 1)
    end
    redis.call('EXPIREAT', set, take())
end
return 'OK'
