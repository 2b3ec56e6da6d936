-- Checkpoints a partition (design §2.4), all keys in its slot {pt:N}.
-- Runs after sliced.lua (`sliced`).
-- KEYS: ckpt, dirty, accounts, then `nseen` counted-ids hashes (one per day).
-- ARGV: E, O_new, ndirty, id x ndirty, naccounts, id x naccounts,
--       nseen, then per day: the day's ids as one value (state/seen.rs), expire_at.
-- FENCED unless the partition's epoch is still E; otherwise adds the members, stores each day's
-- ids under the field E:O_new (a repeated call writes the same value) and sets o = O_new, so
-- the counted ids and the offset change together.
local e = tonumber(redis.call('HGET', KEYS[1], 'e')) or 0
if e ~= tonumber(ARGV[1]) then return 'FENCED' end
local i = 3
for k = 2, 3 do
    local n = tonumber(ARGV[i]); i = i + 1
    sliced('SADD', KEYS[k], ARGV, i, i + n - 1)
    i = i + n
end
local nseen = tonumber(ARGV[i]); i = i + 1
local field = ARGV[1] .. ':' .. ARGV[2]
for s = 1, nseen do
    local key = KEYS[3 + s]
    redis.call('HSET', key, field, ARGV[i]); i = i + 1
    redis.call('EXPIREAT', key, ARGV[i], 'NX'); i = i + 1
end
redis.call('HSET', KEYS[1], 'o', ARGV[2])
return 'OK'
