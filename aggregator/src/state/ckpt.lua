-- Checkpoints a partition (design §2.4), all keys in its slot {pt:N}.
-- Runs after sliced.lua (`sliced`).
-- KEYS: ckpt, dirty, accounts, then `nseen` seen-day sets.
-- ARGV: E, O_new, ndirty, id x ndirty, naccounts, id x naccounts,
--       nseen, then per seen set: n, id x n, expire_at.
-- FENCED unless the partition's epoch is still E; otherwise adds the members and sets o = O_new,
-- so the seen ids and the offset change together.
local e = tonumber(redis.call('HGET', KEYS[1], 'e')) or 0
if e ~= tonumber(ARGV[1]) then return 'FENCED' end
local i = 3
for k = 2, 3 do
    local n = tonumber(ARGV[i]); i = i + 1
    sliced('SADD', KEYS[k], ARGV, i, i + n - 1)
    i = i + n
end
local nseen = tonumber(ARGV[i]); i = i + 1
for s = 1, nseen do
    local key = KEYS[3 + s]
    local n = tonumber(ARGV[i]); i = i + 1
    sliced('SADD', key, ARGV, i, i + n - 1)
    i = i + n
    redis.call('EXPIREAT', key, ARGV[i], 'NX'); i = i + 1
end
redis.call('HSET', KEYS[1], 'o', ARGV[2])
return 'OK'
