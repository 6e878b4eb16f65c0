-- wrk script: POST a transcript callback, a new conversation id each time
-- so the worker does real work when it runs alongside.
local n = 0
local body_tpl = '{"conversation_id":"bench-%d-%d","event_type":"application.transcription_ready","message_type":"application","timestamp":"2025-05-01T12:00:00Z","properties":{"transcript":[{"role":"user","content":"hello there"},{"role":"assistant","content":"hi, how can I help?"}]}}'
local tid = 0
function setup(thread)
  tid = tid + 1
  thread:set("tid", tid)
end
function request()
  n = n + 1
  local body = string.format(body_tpl, tid, n)
  return wrk.format("POST", wrk.path, {["Content-Type"] = "application/json"}, body)
end
