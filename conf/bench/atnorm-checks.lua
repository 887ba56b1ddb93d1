-- atnorm's envelope checks as a Fluent Bit Lua filter: the baseline of `atnorm bench`'s
-- Fluent Bit row (conf/bench/fluent-bit-lua.conf), what a user could run instead of atnorm.
--
-- The checks are the two enforced rules of schemas/generated/envelope.json, on the record
-- as atnorm sees it after its normalizer (stray spaces trimmed, outcome and severity case-
-- folded, eventTime in any form atnorm reads, "200" / "true" / a JSON object text taken as
-- the integer, boolean or object they spell):
--   envelope.required: action (service.object.verb, 3 to 5 parts), initiator.id and
--     target.id (non-empty strings in objects), eventTime (a real date and time),
--     outcome (failure, pending, success or unknown);
--   envelope.types: the documented type of each optional field that is present.
-- A record with fewer than two of action, initiator and target is not an audit event and
-- goes on untouched, as in atnorm. The per-service action tables are not checked.
--
-- Where it differs from atnorm: Fluent Bit hands a null value to Lua as nil, so a field
-- set to null reads as absent; an empty array reads as an empty object; a JSON `log`
-- string is not unwrapped; spaces, case and digits are ASCII only.
--
-- A failing record gets `atnorm_failed` = "<JSON pointer> <rule>" (the first failure);
-- the rewrite_tag filter after this one sends those under <tag>.rejected.

local OUTCOMES = { failure = true, pending = true, success = true, unknown = true }
local SEVERITIES = { critical = true, normal = true, warning = true }
local BOOLEAN_TEXT = { ["true"] = true, ["True"] = true, ["TRUE"] = true, ["yes"] = true,
                       ["false"] = true, ["False"] = true, ["FALSE"] = true, ["no"] = true }
local DAYS_IN_MONTH = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }
-- Epoch seconds atnorm turns into a date: years 1 to 9999.
local FIRST_SECOND, LAST_SECOND = -62135596800, 253402300799

local function trim(text)
    return (text:gsub("^%s+", ""):gsub("%s+$", ""))
end

-- Fluent Bit gives a msgpack map and an array both as a table; an array has [1].
local function is_object(value)
    return type(value) == "table" and value[1] == nil
end

local function is_text(value)
    return type(value) == "string"
end

local function is_integer(value)
    if type(value) == "string" then
        local digits = trim(value)
        return #digits >= 1 and #digits <= 18 and digits:find("^%d+$") ~= nil
    end
    return type(value) == "number" and value == math.floor(value)
end

local function is_boolean(value)
    return type(value) == "boolean" or (type(value) == "string" and BOOLEAN_TEXT[trim(value)] == true)
end

local function is_object_or_null(value)
    if type(value) == "string" then
        local text = trim(value)
        return text:sub(1, 1) == "{" and text:sub(-1) == "}"
    end
    return value == nil or is_object(value)
end

local function is_severity(value)
    return type(value) == "string" and SEVERITIES[trim(value):lower()] == true
end

local function is_action(value)
    if type(value) ~= "string" then
        return false
    end
    local parts = 0
    for part in (trim(value) .. "."):gmatch("([^.]*)%.") do
        if not part:find("^[A-Za-z0-9][A-Za-z0-9_%-]*$") then
            return false
        end
        parts = parts + 1
    end
    return parts >= 3 and parts <= 5
end

local function is_date(year, month, day)
    if year < 1 or month < 1 or month > 12 or day < 1 then
        return false
    end
    if month == 2 and year % 4 == 0 and (year % 100 ~= 0 or year % 400 == 0) then
        return day <= 29
    end
    return day <= DAYS_IN_MONTH[month]
end

-- YYYY-MM-DD[T ]hh:mm:ss[.fraction][ ][Z | UTC | +hh | +hh:mm | +hhmm], or epoch seconds
-- (milliseconds when too large to be seconds).
local function is_event_time(value)
    if type(value) == "number" then
        local seconds = math.abs(value) > 1e11 and value / 1000 or value
        return seconds >= FIRST_SECOND and seconds <= LAST_SECOND
    end
    if type(value) ~= "string" then
        return false
    end
    local year, month, day, hour, minute, rest =
        trim(value):match("^(%d%d%d%d)%-(%d%d)%-(%d%d)[Tt ](%d%d):(%d%d):%d%d(.*)$")
    if not year then
        return false
    end
    rest = rest:gsub("^[.,]%d+", "", 1):gsub("^%s+", "", 1)
    local zone_ok = rest == "" or rest == "Z" or rest == "z" or rest == "UTC"
        or rest:find("^[+-]%d%d$") ~= nil or rest:find("^[+-]%d%d:?%d%d$") ~= nil
    return zone_ok and tonumber(hour) <= 23 and tonumber(minute) <= 59
        and is_date(tonumber(year), tonumber(month), tonumber(day))
end

local function has_id(value)
    return is_object(value) and type(value.id) == "string" and trim(value.id) ~= ""
end

-- envelope.types: the fields checked when present, by the object that holds them.
local TYPES = {
    { {}, { correlationId = is_text, dataEvent = is_boolean, id = is_text, initiator = is_object,
            logSourceCRN = is_text, message = is_text, observer = is_object, reason = is_object,
            requestData = is_object_or_null, responseData = is_object_or_null,
            saveServiceCopy = is_boolean, severity = is_severity, target = is_object } },
    { { "initiator" }, { authnId = is_text, authnName = is_text, credential = is_object,
                         host = is_object, name = is_text, typeURI = is_text } },
    { { "initiator", "credential" }, { type = is_text } },
    { { "initiator", "host" }, { address = is_text, addressType = is_text, agent = is_text } },
    { { "observer" }, { name = is_text } },
    { { "reason" }, { reasonCode = is_integer, reasonForFailure = is_text, reasonType = is_text } },
    { { "target" }, { alias = is_text, name = is_text, resourceGroupId = is_text, typeURI = is_text } },
}

local function first_failure(record)
    if not is_action(record.action) then
        return "/action envelope.required"
    end
    if not has_id(record.initiator) then
        return "/initiator envelope.required"
    end
    if not has_id(record.target) then
        return "/target envelope.required"
    end
    if not is_event_time(record.eventTime) then
        return "/eventTime envelope.required"
    end
    if type(record.outcome) ~= "string" or not OUTCOMES[trim(record.outcome):lower()] then
        return "/outcome envelope.required"
    end
    for _, group in ipairs(TYPES) do
        local node, pointer = record, ""
        for _, key in ipairs(group[1]) do
            node = is_object(node) and node[key] or nil
            pointer = pointer .. "/" .. key
        end
        if is_object(node) then
            for key, check in pairs(group[2]) do
                local value = node[key]
                if value ~= nil and not check(value) then
                    return pointer .. "/" .. key .. " envelope.types"
                end
            end
        end
    end
    return nil
end

function atnorm_check(tag, timestamp, record)
    local markers = (record.action ~= nil and 1 or 0) + (record.initiator ~= nil and 1 or 0)
        + (record.target ~= nil and 1 or 0)
    if markers < 2 then
        return 0, timestamp, record
    end
    local failure = first_failure(record)
    if failure == nil then
        return 0, timestamp, record
    end
    record.atnorm_failed = failure
    return 1, timestamp, record
end
