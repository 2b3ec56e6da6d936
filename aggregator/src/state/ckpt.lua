-- Checkpoints a partition (design §2.4), all keys in its slot {pt:N}.
-- Runs after sliced.lua (`sliced`).
-- KEYS: ckpt, dirty, accounts, then `nseen` counted-ids lists (one per day).
-- ARGV: E, O_new, ndirty, id x ndirty, naccounts, id x naccounts,
--       nseen, then per day: the day's ids as one value (state/seen.rs), expire_at.
-- FENCED unless the partition's epoch is still E; otherwise adds the members, appends each
-- day's ids to its list and sets o = O_new, so the counted ids and the offset change together.
-- (A repeated call appends the same ids again, which deduplication reads as once; the rebuild
-- checkpoints several lots of ids at one offset, so the offset cannot tell a repeat.)
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
    redis.call('RPUSH', key, ARGV[i]); i = i + 1
    redis.call('EXPIREAT', key, ARGV[i], 'NX'); i = i + 1
end
redis.call('HSET', KEYS[1], 'o', ARGV[2])
return 'OK'
