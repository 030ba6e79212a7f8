"""Each proxy started from its example's configuration, filled in for one test.

``identity="basic"``: the proxy checks the test's users (USERS) by basic auth and names the
account itself, as the examples ship. ``identity="jwt"``: no basic auth; the client's Bearer
token goes to the hook, as docs/identity.md says.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import yaml
from tests.e2e.harness import EXAMPLES, USERS, Upstream, binary, proxy, sha_htpasswd_line
from tests.support.servers import free_port

from quotagate.bench.nginx import main_conf, render_site

NGINX, TRAEFIK, ENVOY = binary("nginx"), binary("traefik"), binary("envoy")

Identity = Literal["basic", "jwt"]

NGINX_SITE = EXAMPLES / "nginx" / "quotagate.conf.template"


@contextlib.contextmanager
def nginx_in_front(
    work: Path, *, gateway_url: str, upstream: Upstream, hook_key: str,
    settle_key: str = "unused", site_template: str | None = None,
) -> Iterator[str]:  # fmt: skip
    """nginx with a site (the example's, unless ``site_template``) filled in; its base URL."""
    assert NGINX is not None
    listen = free_port()
    site = render_site(
        NGINX_SITE.read_text() if site_template is None else site_template,
        listen=listen, gateway_addr=gateway_url.removeprefix("http://"),
        app_addr=upstream.address, hook_key=hook_key, htpasswd_file=work / "htpasswd",
        settle_key=settle_key,
    )  # fmt: skip
    assert not re.search(r"\$\{[A-Z_]+\}", site), "a placeholder was left unfilled"
    (work / "quotagate.conf").write_text(site)
    (work / "htpasswd").write_text("".join(sha_htpasswd_line(u) + "\n" for u in USERS))
    (work / "nginx.conf").write_text(main_conf(work, f"    include {work}/quotagate.conf;"))
    args = [NGINX, "-p", str(work), "-c", str(work / "nginx.conf"), "-e", "stderr"]
    with proxy("nginx", args, listen=listen, cwd=work) as base:
        yield base


@contextlib.contextmanager
def traefik_in_front(
    work: Path, *, gateway_url: str, upstream: Upstream, hook_key: str,
    identity: Identity = "basic",
) -> Iterator[str]:  # fmt: skip
    """Traefik with the example's configuration filled in; its base URL."""
    assert TRAEFIK is not None
    listen = free_port()
    static = yaml.safe_load((EXAMPLES / "traefik" / "traefik.yml").read_text())
    static["entryPoints"]["web"]["address"] = f"127.0.0.1:{listen}"
    static["providers"]["file"]["filename"] = str(work / "dynamic.yml")
    dynamic = yaml.safe_load((EXAMPLES / "traefik" / "dynamic.yml").read_text())
    if identity == "basic":
        # The example's demo users, plus the test's rate-limited and unknown ones.
        users = dynamic["http"]["middlewares"]["demo-users"]["basicAuth"]
        users["users"] = [sha_htpasswd_line(u) for u in USERS]
    else:
        for router in dynamic["http"]["routers"].values():
            router["middlewares"].remove("demo-users")
        del dynamic["http"]["middlewares"]["demo-users"]
        forward = dynamic["http"]["middlewares"]["quotagate"]["forwardAuth"]
        forward["authRequestHeaders"] = ["X-Quotagate-Key", "Authorization"]
    (work / "traefik.yml").write_text(yaml.safe_dump(static))
    (work / "dynamic.yml").write_text(yaml.safe_dump(dynamic))
    env = {
        "QUOTAGATE_URL": gateway_url,
        "APP_URL": f"http://{upstream.address}",
        "QUOTAGATE_HOOK_KEY": hook_key,
    }
    args = [TRAEFIK, f"--configFile={work / 'traefik.yml'}"]
    with proxy("traefik", args, listen=listen, cwd=work, env=env) as base:
        yield base


def _http_filters(bootstrap: dict[str, Any]) -> list[dict[str, Any]]:
    manager = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    filters: list[dict[str, Any]] = manager["typed_config"]["http_filters"]
    return filters


def _set_cluster_port(bootstrap: dict[str, Any], name: str, port: int) -> None:
    (cluster,) = [c for c in bootstrap["static_resources"]["clusters"] if c["name"] == name]
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    endpoint["address"]["socket_address"]["port_value"] = port


@contextlib.contextmanager
def envoy_in_front(
    work: Path, *, gateway_url: str, upstream: Upstream, hook_key: str,
    identity: Identity = "basic",
) -> Iterator[str]:  # fmt: skip
    """Envoy with the example's bootstrap filled in; its base URL."""
    assert ENVOY is not None
    listen = free_port()
    text = (EXAMPLES / "envoy" / "envoy.yaml").read_text()
    assert text.count("value: REPLACE_WITH_HOOK_KEY") == 2
    bootstrap = yaml.safe_load(text.replace("REPLACE_WITH_HOOK_KEY", hook_key))
    listener = bootstrap["static_resources"]["listeners"][0]
    listener["address"]["socket_address"]["port_value"] = listen
    _set_cluster_port(bootstrap, "quotagate", int(gateway_url.rsplit(":", 1)[1]))
    _set_cluster_port(bootstrap, "app", upstream.port)
    filters = _http_filters(bootstrap)
    named = {f["name"]: f["typed_config"] for f in filters}
    named["envoy.filters.http.ext_authz"]["http_service"]["server_uri"]["uri"] = gateway_url
    if identity == "basic":
        # The example's demo users, plus the test's rate-limited and unknown ones.
        users = "\n".join(sha_htpasswd_line(u) for u in USERS)
        named["envoy.filters.http.basic_auth"]["users"]["inline_string"] = users
    else:
        # ext_authz passes the client's Authorization to the hook by itself.
        filters[:] = [f for f in filters if f["name"] != "envoy.filters.http.basic_auth"]
    (work / "envoy.yaml").write_text(yaml.safe_dump(bootstrap))
    args = [
        ENVOY, "-c", str(work / "envoy.yaml"), "--disable-hot-restart",
        "--concurrency", "1", "--log-level", "warn",
    ]  # fmt: skip
    with proxy("envoy", args, listen=listen, cwd=work) as base:
        yield base
