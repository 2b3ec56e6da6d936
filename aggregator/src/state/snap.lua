-- Writes one account's snapshot (hot-state layout v2, design §2.4), all keys in its slot.
-- Runs after sliced.lua (`sliced`) and cur_header.lua (`read_header`).
-- KEYS: cur first, then cur as the hash written before it (keys::hot::HotKeys::cur_hash), then
-- every other key the ops name by index (dims, sessions, closed hashes).
-- ARGV: E, TP, O_prev (or 'force'), O_new, cur_expire_at, the most bytes cur's header takes
-- (keys::hot::CUR_HEADER_MAX), cur's whole value (its header holding E, O_new and TP:
-- keys::hot::encode_cur), then the ops, each a count followed by its items
-- (an expire_at of '' leaves the key's expiry as it is: the writer set that one already):
--   ndims,     per: key, n, field x n, expire_at          HSET field 1 (new members), EXPIREAT
--   nsessions, per: key, n, (field, value) x n, expire_at HSET (absolute), EXPIREAT
--   nmoves,    per: key, n, (field, value) x n, expire_at HSET the closed hash, EXPIREAT
--   nlate,     per: key, n, (field, delta) x n, expire_at HINCRBY the closed hash, EXPIREAT
--   nmembers,  per: set, field, count, count_field, set_expire_at
--                                                         HSETNX set field 1; when new,
--                                                         HINCRBY count count_field 1
-- The guard (the writer's epoch E, its topic:partition TP, the offset O_prev it loaded), read
-- from cur's header:
--   stored epoch > E (same TP) -> FENCED   a newer assignment of this partition owns it
--   stored offset >= O_new     -> HAVE     already stored (a repeated call)
--   stored offset ~= O_prev    -> CONFLICT not the state this writer loaded
--   otherwise                  -> OK       every op applied, and cur set whole
-- (the offset counts only when the stored TP is TP: another partition's offsets say nothing
-- about this one.)
-- The increments (late windows, late members) are not idempotent alone; the guard makes the
-- whole call land once.
local cur = KEYS[1]
local found, e, tp, o = read_header(cur, tonumber(ARGV[6]))
local so = -1
if tp == ARGV[2] then so = tonumber(o) end
local E = tonumber(ARGV[1])
-- Epochs count per partition: only a newer owner of this writer's partition fences it (an
-- account written from another partition, before a drained repartition, does not).
if e > E and tp == ARGV[2] then return 'FENCED' end
-- O_prev 'force' (rebuild-hot-state, aggregators stopped, every value absolute) skips the
-- offset guard.
if ARGV[3] ~= 'force' then
    local o_prev, o_new = tonumber(ARGV[3]), tonumber(ARGV[4])
    if so >= o_new then return 'HAVE' end
    if so ~= o_prev then return 'CONFLICT' end
end

redis.call('SET', cur, ARGV[7], 'EXAT', ARGV[5])
-- The first write since the hash layout: the hash goes (a claim moves it, and a rebuild
-- replaces it).
if not found then redis.call('DEL', KEYS[2]) end

local i = 8
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
    hset_pairs(key, tonumber(take()))
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
