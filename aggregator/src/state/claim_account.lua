-- Claims an account for the writer of epoch E (design §2.5), and with LOAD = 1 reads it back in
-- the same call (design §3.2 step 4).
-- KEYS: cur. ARGV: E, TP, LOAD.
-- FENCED if a newer epoch holds the account; otherwise raises cur's _e to E and returns
--   {'OK', _tp, _o, cur, sessions, dims} (empty strings and tables where unset), where, when
--   LOAD = 1 and _tp is TP:
--   cur      = cur's fields and values, flat, without _e _tp _o;
--   sessions = {{session, its hash flat}, ...} for every s:<session> mark in cur;
--   dims     = {{YYYYMM, the month's dims fields}, ...} for every month with fields in cur.
-- Session and dims keys are built from cur's name (<p>u:{<a>}:cur), so they share its slot.
local cur = KEYS[1]
local stored = redis.call('HMGET', cur, '_e', '_tp', '_o')
local e = tonumber(stored[1]) or 0
local E = tonumber(ARGV[1])
-- Epochs count per partition (see snap.lua): another partition's epoch is replaced.
if e > E and stored[2] == ARGV[2] then return {'FENCED', '', '', {}, {}, {}} end
if e ~= E then redis.call('HSET', cur, '_e', ARGV[1]) end
local tp, o = stored[2] or '', stored[3] or ''
if ARGV[3] ~= '1' or tp ~= ARGV[2] then return {'OK', tp, o, {}, {}, {}} end

local base = string.sub(cur, 1, #cur - 3)
local all = redis.call('HGETALL', cur)
local fields, sessions, dims, months = {}, {}, {}, {}
for i = 1, #all, 2 do
    local f = all[i]
    if string.sub(f, 1, 1) ~= '_' then
        fields[#fields + 1] = f; fields[#fields + 1] = all[i + 1]
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
return {'OK', tp, o, fields, sessions, dims}
