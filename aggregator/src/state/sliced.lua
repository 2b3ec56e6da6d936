-- Prepended to snap.lua and ckpt.lua (writer.rs), which both write lists of any length.
-- A command on key over list[from..to], in slices of at most 1,000 values: Lua's unpack takes a
-- few thousand values at most. The list is ARGV itself wherever the values are there as they
-- go to Redis, so that they are not copied into a table first.
local function sliced(cmd, key, list, from, to)
    while from <= to do
        local last = math.min(from + 999, to)
        redis.call(cmd, key, unpack(list, from, last))
        from = last + 1
    end
end
