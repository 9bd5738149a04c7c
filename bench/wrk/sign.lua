-- wrk script for clave's signing workloads (and anvil's eth_signTransaction baseline).
--
--   wrk -t2 -c64 -d10s --latency -s bench/wrk/sign.lua http://127.0.0.1:8550/ -- KIND ADDRESSES_FILE CHAIN_ID
--
-- KIND: tx (account_signTransaction, EIP-1559) | sign (eth_sign) | typed (eth_signTypedData_v4)
--       | anvil_tx (eth_signTransaction, same type-2 fields).
-- ADDRESSES_FILE: one EIP-55 address per line; requests rotate over them.
-- Every request differs: its nonce (tx), data (sign) or message nonce (typed) is a per-thread counter,
-- offset by the thread number so no two threads send the same request.
-- A reply counts as ok when it is HTTP 200 and carries "result" and no "error"; done() prints one line
-- "BENCH_JSON {...}" with throughput, latency percentiles (microseconds) and the ok/bad counts.
-- (wrk cannot check signatures; the Python generator checks every reply of the same workloads.)

local threads = {}

function setup(thread)
  thread:set("thread_index", #threads)
  table.insert(threads, thread)
end

local kind, addresses, chain_hex, counter, base
-- globals, so that done() can read them from each thread with thread:get()
ok, bad, bad_sample = 0, 0, ""

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
  return wrk.format(nil, nil, nil, body)
end

response = function(status, headers, body)
  if status == 200 and string.find(body, '"result"', 1, true) and not string.find(body, '"error"', 1, true) then
    ok = ok + 1
  else
    bad = bad + 1
    if #bad_sample == 0 then bad_sample = string.sub(tostring(status) .. " " .. body, 1, 200) end
  end
end

function done(summary, latency, requests)
  local ok_total, bad_total, sample = 0, 0, ""
  for _, t in ipairs(threads) do
    ok_total = ok_total + (t:get("ok") or 0)
    bad_total = bad_total + (t:get("bad") or 0)
    local s = t:get("bad_sample")
    if s and #s > 0 and #sample == 0 then sample = s end
  end
  local e = summary.errors
  sample = string.gsub(sample, '[%c"\\]', "?")
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"mean_us":%.1f,"ok":%d,"bad":%d,"bad_sample":"%s","errors":{"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, ok_total, bad_total, sample,
    e.connect, e.read, e.write, e.status, e.timeout))
end
