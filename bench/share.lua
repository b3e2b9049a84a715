-- Counts which worker pid answered each response; prints the shares at the end.
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) counts = {} end
function response(status, headers, body)
  local pid = body:match("pid (%d+)") or "?"
  counts[pid] = (counts[pid] or 0) + 1
end
function done(summary, latency, requests)
  local total, merged = 0, {}
  for _, t in ipairs(threads) do
    for pid, n in pairs(t:get("counts")) do merged[pid] = (merged[pid] or 0) + n; total = total + n end
  end
  local parts = {}
  for pid, n in pairs(merged) do table.insert(parts, string.format("%.0f%%", 100 * n / total)) end
  table.sort(parts, function(a, b) return tonumber(a:sub(1, -2)) > tonumber(b:sub(1, -2)) end)
  io.write("SHARE " .. table.concat(parts, "/") .. "\n")
end
