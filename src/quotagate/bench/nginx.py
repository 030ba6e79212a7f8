"""What nginx users see: wrk through a real nginx whose ``auth_request`` calls the hook for every
request before proxying to a trivial upstream, against the same nginx proxying without the hook.

Both sites are ``examples/nginx/quotagate.conf.template`` filled in (basic auth, the hook's
headers, the upstream's keep-alive: what the example ships is what is measured); the one
without the hook has ``auth_request off``. The upstream is a third nginx site answering 200
from memory, so that the rows measure the proxying and the hook, not an application. One nginx
process tree (``worker_processes auto``) serves all three; the hook is `quotagate serve`.

Rows:
  nginx/alone  GET /api/x through nginx, basic auth, proxied to the upstream
  nginx/hook   the same through the site whose auth_request charges 1 credit first (nginx/alone)
CPU_US is nginx's CPU per request (and, for nginx/hook, the gateway's added: the note splits it).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import http.client
import shutil
import string
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from quotagate.bench.load import HttpLoad
from quotagate.bench.servers import ServeOptions, cpu_seconds_of_tree, free_port
from quotagate.bench.stage import HOT

if TYPE_CHECKING:
    from quotagate.bench.runner import Run

ALONE_ROW = "nginx/alone"
HOOK_ROW = "nginx/hook"
PASSWORD = "bench"

_MAIN = """
daemon off;
worker_processes $workers;
pid $work/nginx.pid;
error_log $error_log warn;
events { worker_connections $connections; }
http {
    access_log off;
    client_body_temp_path $work/client_body;
    proxy_temp_path $work/proxy;
    fastcgi_temp_path $work/fastcgi;
    uwsgi_temp_path $work/uwsgi;
    scgi_temp_path $work/scgi;
$body
}
"""


def main_conf(
    work: Path, body: str, *, workers: str = "1", error_log: str = "stderr", connections: int = 64
) -> str:
    """An nginx.conf whose pid and temp files live in ``work`` (a scratch prefix, so that
    nginx runs unprivileged), with ``body`` inside its http block."""
    return string.Template(_MAIN).substitute(
        work=work, body=body, workers=workers, error_log=error_log, connections=connections
    )


_BENCH_BODY = """
    server {
        listen 127.0.0.1:$app_port;
        keepalive_requests 1000000;
        location / { return 200 "ok\\n"; }
    }
    include $work/hook.conf;
    include $work/alone.conf;
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )


EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "nginx" / "quotagate.conf.template"
"""The shipped example site (in a checkout of the repository; a wheel does not carry it)."""


def render_site(
    template: str, *, listen: int, gateway_addr: str, app_addr: str, hook_key: str,
    htpasswd_file: Path, settle_key: str,
) -> str:  # fmt: skip
    """The example site (``template``) with its placeholders filled in."""
    return string.Template(template).safe_substitute(
        LISTEN=f"127.0.0.1:{listen}", QUOTAGATE_ADDR=gateway_addr, APP_ADDR=app_addr,
        QUOTAGATE_HOOK_KEY=hook_key, HTPASSWD_FILE=str(htpasswd_file),
        QUOTAGATE_SETTLE_KEY=settle_key,
    )  # fmt: skip


def _site(
    template: str, listen: int, gateway_addr: str, app_port: int, key: str, work: Path
) -> str:
    return render_site(
        template, listen=listen, gateway_addr=gateway_addr, app_addr=f"127.0.0.1:{app_port}",
        hook_key=key, htpasswd_file=work / "htpasswd",
        # No request of the run goes to /api/metered/, whose settles would use this key.
        settle_key="unused-by-the-benchmark",
    )  # fmt: skip


def _without_hook(site: str) -> str:
    """The same site, proxying without asking the hook (and with upstreams of its own names,
    which one http block requires)."""
    site = site.replace("auth_request /_quotagate/authz;", "auth_request off;")
    return site.replace("quotagate_gateway", "alone_gateway").replace("quotagate_app", "alone_app")


def htpasswd_line(user: str, password: str) -> str:
    """The {SHA} form of an htpasswd line, which nginx, Traefik and Envoy all read."""
    digest = base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()
    return f"{user}:{{SHA}}{digest}"


@dataclass
class Nginx:
    process: subprocess.Popen[bytes]
    hook_url: str
    alone_url: str

    def cpu_seconds(self) -> float | None:
        return cpu_seconds_of_tree(self.process.pid)


def _answers(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


@contextlib.contextmanager
def running_nginx(binary: str, gateway_addr: str, hook_key: str) -> Iterator[Nginx]:
    """nginx with the two sites and the upstream, in a scratch folder, until the block ends."""
    work = Path(tempfile.mkdtemp(prefix="qgbench-nginx-"))
    work.chmod(0o755)  # nginx's unprivileged workers read the htpasswd file
    ports = {name: free_port() for name in ("app", "hook", "alone")}
    template = EXAMPLE.read_text()
    site = _site(template, ports["hook"], gateway_addr, ports["app"], hook_key, work)
    (work / "hook.conf").write_text(site)
    alone = _site(template, ports["alone"], gateway_addr, ports["app"], hook_key, work)
    (work / "alone.conf").write_text(_without_hook(alone))
    (work / "htpasswd").write_text(htpasswd_line(HOT.stem, PASSWORD) + "\n")
    (work / "htpasswd").chmod(0o644)
    body = string.Template(_BENCH_BODY).substitute(work=work, app_port=ports["app"])
    main = main_conf(work, body, workers="auto", error_log=f"{work}/error.log", connections=4096)
    (work / "nginx.conf").write_text(main)
    args = [binary, "-p", str(work), "-c", str(work / "nginx.conf"), "-e", str(work / "error.log")]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not _answers(ports["app"]):
            if process.poll() is not None or time.monotonic() > deadline:
                log = (work / "error.log").read_text() if (work / "error.log").exists() else ""
                raise RuntimeError(f"nginx did not start: {log.strip()[-300:]}")
            time.sleep(0.1)
        yield Nginx(
            process, f"http://127.0.0.1:{ports['hook']}", f"http://127.0.0.1:{ports['alone']}"
        )
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(work, ignore_errors=True)


@dataclass
class _Measured:
    """What Run.http measures: a base URL, and the CPU of the processes that serve it."""

    base_url: str
    cpu: Callable[[], float | None]

    def cpu_seconds(self) -> float | None:
        return self.cpu()


def _load() -> HttpLoad:
    token = base64.b64encode(f"{HOT.stem}:{PASSWORD}".encode()).decode()
    return HttpLoad("GET", "/api/x", {"Authorization": f"Basic {token}"})


async def measure(run: Run, progress: Callable[[str], None]) -> None:
    """Both rows, nginx alone first; skipped (with a word) when nginx is not installed."""
    from quotagate.bench import gateway

    binary = nginx_binary()
    if binary is None or not EXAMPLE.exists():
        progress("nginx or examples/nginx is not here: no nginx rows")
        return
    keys = await asyncio.to_thread(gateway.prepare, run.stage)
    serve = ServeOptions(run.options.workers)
    with (
        gateway.serving_gateway(run.stage, serve) as app,
        running_nginx(binary, app.base_url.removeprefix("http://"), keys.hook) as nginx,
    ):
        progress(f"measuring {ALONE_ROW}")
        alone = _Measured(nginx.alone_url, nginx.cpu_seconds)
        await asyncio.to_thread(run.http, ALONE_ROW, _load(), alone, None)
        progress(f"measuring {HOOK_ROW}")
        snapshots: list[tuple[float, float]] = []

        def both() -> float | None:
            nginx_s, gateway_s = nginx.cpu_seconds(), app.cpu_seconds()
            if nginx_s is None or gateway_s is None:
                return None
            snapshots.append((nginx_s, gateway_s))
            return nginx_s + gateway_s

        row = await asyncio.to_thread(
            run.http, HOOK_ROW, _load(), _Measured(nginx.hook_url, both), ALONE_ROW
        )
        if len(snapshots) >= 2 and row.count:
            (nginx_0, gateway_0), (nginx_1, gateway_1) = snapshots[-2], snapshots[-1]
            row.note = (
                f"CPU per request: nginx {(nginx_1 - nginx_0) / row.count * 1e6:.0f} us, "
                f"gateway {(gateway_1 - gateway_0) / row.count * 1e6:.0f} us"
            )
    await run.stage.clear_outboxes()
