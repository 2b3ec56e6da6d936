-- Claims a partition (design §2.4): raises its epoch and returns {epoch, checkpointed offset}
-- (-1 when nothing is checkpointed). KEYS: ckpt. Across owners and restarts the epoch only rises.
local e = redis.call('HINCRBY', KEYS[1], 'e', 1)
local o = redis.call('HGET', KEYS[1], 'o')
return {e, tonumber(o) or -1}
