"""Run an :class:`HttpLoad` through wrk, with a generated Lua script for method, body, headers.

A hot load (one account, or none) is fixed: wrk builds the request once. A spread load picks a
random account per request in a Lua ``request()`` function. ``done()`` prints one JSON line with
the counts and latency percentiles, which is all we read of wrk's output.
"""

from __future__ import annotations

import json
import subprocess
import tempfile

from quotagate.bench.load import ACCOUNT, HttpLoad, LoadResult

_MARK = "BENCHJSON "

_DONE = r"""
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d}\n',
    MARK, summary.requests, summary.duration, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""

_SPREAD = r"""
local seeds = 0
function setup(thread)
  seeds = seeds + 1
  thread:set("seed", seeds * 7919 + os.time())
end
local pieces
function init(args)
  math.randomseed(seed)
  -- The request is formatted once, with a mark as long as an account id where the id goes
  -- (so Content-Length holds), and cut at the marks: each request is then the pieces joined
  -- by a random id. Formatting every request in Lua cost wrk more CPU than the server.
  local mark = string.rep("\1", #STEM + 6)
  local function fill(s)
    if s == nil then return nil end
    return (string.gsub(s, "{account}", mark))
  end
  local h = {}
  for k, v in pairs(HEADERS) do h[k] = fill(v) end
  local req = wrk.format(METHOD, fill(PATH), h, fill(BODY))
  pieces = {}
  for piece in string.gmatch(req .. mark, "(.-)" .. mark) do pieces[#pieces + 1] = piece end
end
function request()
  return table.concat(pieces, string.format(STEM .. "%06d", math.random(0, COUNT - 1)))
end
"""


def _lua_str(value: str | None) -> str:
    return "nil" if value is None else json.dumps(value)  # JSON strings are valid Lua strings


def lua_script(load: HttpLoad) -> str:
    """The wrk script that sends ``load``."""
    headers = dict(load.headers)
    if load.body is not None:
        headers.setdefault("Content-Type", "application/json")
    head = "{" + ", ".join(f"[{_lua_str(k)}] = {_lua_str(v)}" for k, v in headers.items()) + "}"
    lines = [f"MARK = {_lua_str(_MARK)}", _DONE]
    accounts = load.accounts
    if accounts is None or accounts.hot:
        account = accounts.name(0) if accounts else ""
        lines += [
            f"wrk.method = {_lua_str(load.method)}",
            f"wrk.path = {_lua_str(load.path.replace(ACCOUNT, account))}",
            f"wrk.headers = {head.replace(ACCOUNT, account)}",
        ]
        if load.body is not None:
            lines.append(f"wrk.body = {_lua_str(load.body.replace(ACCOUNT, account))}")
    else:
        lines += [
            f"METHOD = {_lua_str(load.method)}",
            f"PATH = {_lua_str(load.path)}",
            f"BODY = {_lua_str(load.body)}",
            f"HEADERS = {head}",
            f"STEM = {_lua_str(accounts.stem)}",
            f"COUNT = {accounts.count}",
            _SPREAD,
        ]
    return "\n".join(lines) + "\n"


def run_wrk(
    load: HttpLoad,
    base_url: str,
    *,
    duration_s: float,
    concurrency: int,
    threads: int,
    warmup_s: float = 0.0,
) -> LoadResult:
    """Warm up, then measure ``duration_s`` seconds of ``load`` against ``base_url``."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="qgbench-") as script:
        script.write(lua_script(load))
        script.flush()
        if warmup_s > 0:
            _wrk(script.name, base_url, warmup_s, concurrency, threads)
        data = _wrk(script.name, base_url, duration_s, concurrency, threads)
    errors = sum(data[k] for k in ("connect", "read", "write", "status", "timeout"))
    duration = data["duration_us"] / 1e6
    return LoadResult(
        requests=max(0, data["requests"] - data["status"]),
        errors=errors,
        duration_s=duration,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        generator="wrk",
    )


def _wrk(
    script: str, base_url: str, duration_s: float, concurrency: int, threads: int
) -> dict[str, int]:
    threads = max(1, min(threads, concurrency))
    args = [
        "wrk", f"-t{threads}", f"-c{concurrency}", f"-d{max(1, round(duration_s))}s",
        "--timeout", "5s", "-s", script, base_url,
    ]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, timeout=duration_s + 60)
    for line in proc.stdout.splitlines():
        if line.startswith(_MARK):
            parsed: dict[str, int] = json.loads(line[len(_MARK) :])
            return parsed
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    raise RuntimeError(f"wrk gave no result (exit {proc.returncode}): {' | '.join(tail)}")
