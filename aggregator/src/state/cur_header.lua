-- Prepended to snap.lua and claim_account.lua (writer.rs): cur's header, the one layout both
-- read and write (keys::hot::encode_cur): the epoch in bytes 1-20, the offset in 22-41, each
-- right-aligned, and the writer's topic:partition from byte 43 to the newline.

-- Reads the header of cur at key, at most max bytes (keys::hot::CUR_HEADER_MAX): whether there
-- is one, the epoch (0 if none), the topic:partition ('' if none) and the offset as written
-- ('-1' if none; tostring of a number would print a large one in exponent form).
local function read_header(key, max)
    local h = redis.call('GETRANGE', key, 0, max - 1)
    if h == '' then return false, 0, '', '-1' end
    return true, tonumber(string.sub(h, 1, 20)) or 0,
        string.match(h, '^([^\n]*)\n', 43) or '',
        string.match(string.sub(h, 22, 41), '%-?%d+') or '-1'
end

-- The header's epoch field, rewritten in place by SETRANGE at byte 0.
local function epoch_field(e)
    return string.format('%20d', e)
end

-- A whole header.
local function header(e, o, tp)
    return epoch_field(e) .. ' ' .. string.format('%20d', o) .. ' ' .. tp .. '\n'
end
