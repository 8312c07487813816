-- Loaded by bench/load.py into wrk, it sends one fixed POST request over and over. When a
-- thread has received its share of the fixed request count, it prints "BENCH-DONE" and stops,
-- and load.py then ends wrk with SIGINT. done() prints the figures as one JSON line after
-- "BENCH-JSON ". The duration runs from a thread's first request to its last response, read
-- from CLOCK_MONOTONIC, because wrk's own duration also counts the wait for that signal.
-- Script arguments: requests per thread, path of the body file, then "Name: value" headers.

local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock_id, bench_timespec *time);
]]
local CLOCK_MONOTONIC = 1

local function now_us()
  local time = ffi.new("bench_timespec")
  ffi.C.clock_gettime(CLOCK_MONOTONIC, time)
  return tonumber(time.tv_sec) * 1000000 + tonumber(time.tv_nsec) / 1000
end

-- Globals, not locals, because done() reads them from each thread with thread:get().
request_count_per_thread = 0
completed = 0
bad_status = 0
first_request_us = 0
last_response_us = 0
prepared_request = nil

function init(args)
  request_count_per_thread = tonumber(args[1])
  local body_file = io.open(args[2], "rb")
  local body = body_file:read("*a")
  body_file:close()
  local headers = { ["Content-Type"] = "application/json" }
  for index = 3, #args do
    local name, value = args[index]:match("^([^:]+):%s*(.*)$")
    headers[name] = value
  end
  prepared_request = wrk.format("POST", wrk.path, headers, body)
end

function request()
  if first_request_us == 0 then
    first_request_us = now_us()
  end
  return prepared_request
end

function response(status, headers, body)
  if completed >= request_count_per_thread then
    return
  end
  completed = completed + 1
  if status ~= 200 then
    bad_status = bad_status + 1
  end
  if completed == request_count_per_thread then
    last_response_us = now_us()
    io.write("BENCH-DONE\n")
    io.flush()
    wrk.thread:stop()
  end
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function done(summary, latency, requests)
  local counted = 0
  local non_200 = 0
  local start_us = nil
  local end_us = 0
  for _, thread in ipairs(threads) do
    counted = counted + thread:get("completed")
    non_200 = non_200 + thread:get("bad_status")
    local first = thread:get("first_request_us")
    local last = thread:get("last_response_us")
    if start_us == nil or first < start_us then
      start_us = first
    end
    if last > end_us then
      end_us = last
    end
  end
  local duration_us = summary.duration
  if end_us > 0 and start_us ~= nil then
    duration_us = end_us - start_us
  end
  local errors = summary.errors
  io.write(string.format(
    'BENCH-JSON {"requests": %d, "duration_us": %d, "non_200": %d, "socket_errors": %d, "timeouts": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    counted, duration_us, non_200,
    errors.connect + errors.read + errors.write, errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
