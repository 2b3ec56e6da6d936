-- Claims an account for the writer of epoch E (design §2.5), and with LOAD = 1 reads it back in
-- the same call (design §3.2 step 4). Runs after cur_header.lua (`read_header`, `header`,
-- `epoch_field`).
-- KEYS: cur, then cur as the hash written before it (keys::hot::HotKeys::cur_hash).
-- ARGV: E, TP, LOAD, the most bytes cur's header takes (keys::hot::CUR_HEADER_MAX).
-- cur is one value: its header (cur_header.lua), then a line `<field> <value>` per field
-- (keys::hot::encode_cur).
-- FENCED if a newer epoch holds the account; otherwise raises cur's epoch to E and returns
--   {'OK', tp, o, cur, sessions, dims} (empty strings and tables where unset), where, when
--   LOAD = 1 and tp is TP:
--   cur      = cur's fields and values, flat;
--   sessions = {{session, its hash flat}, ...} for every s:<session> mark in cur;
--   dims     = {{YYYYMM, the month's dims fields}, ...} for every month with fields in cur.
-- Session and dims keys are built from cur's name (<p>u:{<a>}:live), so they share its slot.
local cur, hash = KEYS[1], KEYS[2]
local E, max = tonumber(ARGV[1]), tonumber(ARGV[4])
local found, e, tp, o = read_header(cur, max)

-- An account last written as a hash (before 2026-12-05) moves into one value first, with the
-- hash's guard fields as its header and the hash's expiry.
if not found and redis.call('EXISTS', hash) == 1 then
    local all = redis.call('HGETALL', hash)
    local guard, lines = {}, {}
    for i = 1, #all, 2 do
        local f = all[i]
        if string.sub(f, 1, 1) == '_' then
            guard[f] = all[i + 1]
        else
            lines[#lines + 1] = f .. ' ' .. all[i + 1] .. '\n'
        end
    end
    local moved = header(tonumber(guard['_e']) or 0, tonumber(guard['_o']) or -1,
        guard['_tp'] or '') .. table.concat(lines)
    local at = redis.call('EXPIRETIME', hash)
    if at > 0 then
        redis.call('SET', cur, moved, 'EXAT', at)
    else
        redis.call('SET', cur, moved)
    end
    redis.call('DEL', hash)
    found, e, tp, o = read_header(cur, max)
end

-- Epochs count per partition (see snap.lua): another partition's epoch is replaced.
if e > E and tp == ARGV[2] then return {'FENCED', '', '', {}, {}, {}} end
if not found then
    -- Never written: a header alone, naming this writer's partition, so that an older owner of
    -- it is fenced here as well.
    redis.call('SET', cur, header(E, -1, ARGV[2]))
    return {'OK', ARGV[2], '-1', {}, {}, {}}
end
if e ~= E then redis.call('SETRANGE', cur, 0, epoch_field(E)) end
if ARGV[3] ~= '1' or tp ~= ARGV[2] then return {'OK', tp, o, {}, {}, {}} end

local base = string.sub(cur, 1, #cur - 4)
local fields, sessions, dims, months = {}, {}, {}, {}
local all = redis.call('GET', cur)
local first = true
for line in string.gmatch(all, '[^\n]+') do
    if first then
        first = false
    else
        local f, v = string.match(line, '^(.*) (%S+)$')
        if f then
            fields[#fields + 1] = f; fields[#fields + 1] = v
            if string.sub(f, 1, 2) == 's:' then
                local sid = string.sub(f, 3)
                sessions[#sessions + 1] = {sid, redis.call('HGETALL', base .. 's:' .. sid)}
            elseif string.sub(f, 1, 2) == 'M:' then
                local month = string.sub(f, 3, 8)
                if not months[month] then
                    months[month] = true
                    dims[#dims + 1] = {month, redis.call('HKEYS', base .. 'M:' .. month .. ':dims')}
                end
            end
        end
    end
end
return {'OK', tp, o, fields, sessions, dims}
