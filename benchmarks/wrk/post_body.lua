-- POST one fixed body, read once from the file named by $WRK_BODY, on every request.
-- Content type from $WRK_CONTENT_TYPE (default application/json).
-- done() prints one machine-readable line for benchmarks/serving_bench.py:
--   BENCH_JSON {"requests":..,"duration_us":..,"p50_us":..,...}
local path = os.getenv("WRK_BODY")
if path == nil then error("set WRK_BODY to the request body file") end
local f = assert(io.open(path, "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("WRK_CONTENT_TYPE") or "application/json"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors_connect":%d,"errors_read":%d,"errors_write":%d,"errors_status":%d,"errors_timeout":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
