--! include session_end_one
-- A session ends (waitingroom/sessions.py).
-- KEYS: session(id)   ARGV: how prefix request_id
return end_session(ARGV[3], ARGV[1], ARGV[2])
