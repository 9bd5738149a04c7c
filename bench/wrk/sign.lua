-- wrk script for clave's signing workloads (and anvil's eth_signTransaction baseline).
--
--   wrk -t2 -c64 -d10s --latency -s bench/wrk/sign.lua http://127.0.0.1:8550/ -- KIND ADDRESSES_FILE CHAIN_ID [RATE_PER_THREAD]
--
-- KIND: tx (account_signTransaction, EIP-1559) | sign (eth_sign) | typed (eth_signTypedData_v4)
--       | anvil_tx (eth_signTransaction, same type-2 fields).
-- ADDRESSES_FILE: one EIP-55 address per line; requests rotate over them.
-- Every request differs: its nonce (tx), data (sign) or message nonce (typed) is a per-thread counter,
-- offset by the thread number so no two threads send the same request.
-- A reply counts as ok when it is HTTP 200 and carries "result" and no "error"; done() prints one line
-- "BENCH_JSON {...}" with throughput, latency percentiles (microseconds) and the ok/bad counts.
-- (wrk cannot check signatures; the Python generator checks every reply of the same workloads.)
--
-- Loaded through paced.lua, with RATE_PER_THREAD (requests/s), it is an open-loop generator, which wrk
-- itself is not (a delay() function, even one that returns 0, would slow the closed loop): the k-th
-- request of a thread is due at start + k / RATE_PER_THREAD; delay() holds a free connection until the
-- next due time (rounded up to wrk's millisecond timer, so never early), and each reply's latency counts
-- from its request's due time, found by the JSON-RPC id the reply echoes. When every connection is busy,
-- due requests wait and that wait is counted, so a slow server cannot hide behind a slowed generator.
-- The clock is CLOCK_MONOTONIC through LuaJIT's FFI (Debian's wrk is built with LuaJIT).

local threads = {}

function setup(thread)
  thread:set("thread_index", #threads)
  table.insert(threads, thread)
end

local kind, addresses, chain_hex, counter, base
-- globals, so that done() can read them from each thread with thread:get()
ok, bad, bad_sample = 0, 0, ""
due_latencies = {}  -- microseconds from due time to reply (paced mode only)

local ffi = require("ffi")
ffi.cdef[[
  typedef struct { long tv_sec; long tv_nsec; } clave_timespec;
  int clock_gettime(int clk_id, clave_timespec *tp);
]]
local timespec = ffi.new("clave_timespec[1]")
local function now_us()
  ffi.C.clock_gettime(1, timespec)  -- CLOCK_MONOTONIC
  return tonumber(timespec[0].tv_sec) * 1000000 + tonumber(timespec[0].tv_nsec) / 1000
end

local interval_us, start_us, slots = nil, nil, 0
local due_queue, due_head, due_tail = {}, 1, 0  -- due times handed out by delay(), oldest first
local due_by_id = {}

local methods = {
  tx = "account_signTransaction",
  sign = "eth_sign",
  typed = "eth_signTypedData_v4",
  anvil_tx = "eth_signTransaction",
}

function init(args)
  kind = args[1] or "tx"
  local path = args[2]
  chain_hex = string.format("0x%x", tonumber(args[3] or "1"))
  addresses = {}
  for line in io.lines(path) do
    if #line > 0 then table.insert(addresses, line) end
  end
  counter = 0
  -- 2^40 per thread keeps nonces distinct across threads and under 2^64.
  base = (thread_index + 1) * 1099511627776
  ok, bad, bad_sample = 0, 0, ""
  local rate = tonumber(args[4] or "")
  if rate and rate > 0 then
    interval_us = 1000000 / rate
  end
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

local function tx_params(from, seq)
  return string.format(
    '[{"from":"%s","to":"0x000000000000000000000000000000000000dEaD","gas":"0x5208",' ..
    '"maxFeePerGas":"0x77359400","maxPriorityFeePerGas":"0x3b9aca00","value":"0x1",' ..
    '"nonce":"0x%x","input":"0x","chainId":"%s"}]', from, seq, chain_hex)
end

local typed_head = '{"types":{"EIP712Domain":[{"name":"name","type":"string"},{"name":"version","type":"string"},' ..
  '{"name":"chainId","type":"uint256"},{"name":"verifyingContract","type":"address"}],' ..
  '"Person":[{"name":"name","type":"string"},{"name":"wallet","type":"address"}],' ..
  '"Mail":[{"name":"from","type":"Person"},{"name":"to","type":"Person"},{"name":"contents","type":"string"},' ..
  '{"name":"nonce","type":"uint256"}]},"primaryType":"Mail","domain":{"name":"clave bench","version":"1",' ..
  '"chainId":%d,"verifyingContract":"0xCcCCccccCCCCcCCCCCCcCcCccCcCCCcCcccccccC"},"message":{' ..
  '"from":{"name":"Cow","wallet":"0xCD2a3d9F938E13CD947Ec05AbC7FE734Df8DD826"},' ..
  '"to":{"name":"Bob","wallet":"0xbBbBBBBbbBBBbbbBbbBbbbbBBbBbbbbBbBbbBBbB"},"contents":"Hello, Bob!","nonce":%d}}'

request = function()
  counter = counter + 1
  local seq = base + counter
  local from = addresses[(seq % #addresses) + 1]
  local params
  if kind == "tx" or kind == "anvil_tx" then
    params = tx_params(from, seq)
  elseif kind == "sign" then
    params = string.format('["%s","0x%016x"]', from, seq)
  else
    params = string.format('["%s",' .. typed_head .. ']', from, tonumber(chain_hex), seq)
  end
  local body = string.format('{"jsonrpc":"2.0","id":%d,"method":"%s","params":%s}', counter, methods[kind], params)
  if interval_us then
    -- wrk sends on the connection whose timer fired first, i.e. the one holding the oldest due time.
    -- A request that no delay() preceded (wrk reconnecting, say) is due now.
    if due_head <= due_tail then
      due_by_id[counter] = due_queue[due_head]
      due_queue[due_head] = nil
      due_head = due_head + 1
    else
      due_by_id[counter] = now_us()
    end
  end
  return wrk.format(nil, nil, nil, body)
end

function paced_delay()
  if not interval_us then return 0 end
  local now = now_us()
  if not start_us then start_us = now end
  local due = start_us + slots * interval_us
  slots = slots + 1
  due_tail = due_tail + 1
  due_queue[due_tail] = due
  if due <= now then return 0 end
  return math.ceil((due - now) / 1000)
end

response = function(status, headers, body)
  if interval_us then
    local id = tonumber(string.match(body, '"id":(%d+)'))
    local due = id and due_by_id[id]
    if due then
      due_by_id[id] = nil
      due_latencies[#due_latencies + 1] = math.floor(now_us() - due)
    end
  end
  if status == 200 and string.find(body, '"result"', 1, true) and not string.find(body, '"error"', 1, true) then
    ok = ok + 1
  else
    bad = bad + 1
    if #bad_sample == 0 then bad_sample = string.sub(tostring(status) .. " " .. body, 1, 200) end
  end
end

function done(summary, latency, requests)
  local ok_total, bad_total, sample = 0, 0, ""
  local due = {}
  for _, t in ipairs(threads) do
    ok_total = ok_total + (t:get("ok") or 0)
    bad_total = bad_total + (t:get("bad") or 0)
    local s = t:get("bad_sample")
    if s and #s > 0 and #sample == 0 then sample = s end
    for _, v in ipairs(t:get("due_latencies") or {}) do due[#due + 1] = v end
  end
  table.sort(due)
  local function pct(p)
    if #due == 0 then return -1 end
    return due[math.max(1, math.ceil(#due * p / 100))]
  end
  local e = summary.errors
  sample = string.gsub(sample, '[%c"\\]', "?")
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"mean_us":%.1f,"ok":%d,"bad":%d,"bad_sample":"%s","errors":{"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d},"due":{"count":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, ok_total, bad_total, sample,
    e.connect, e.read, e.write, e.status, e.timeout, #due, pct(50), pct(90), pct(99), pct(100)))
end
