-- sign.lua as an open-loop generator at a fixed rate (see there):
--   wrk -t2 -c64 -d10s -s bench/wrk/paced.lua URL -- KIND ADDRESSES_FILE CHAIN_ID RATE_PER_THREAD
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "sign.lua")
delay = paced_delay
