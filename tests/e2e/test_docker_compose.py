"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

The compose file must parse as YAML, pass the Compose specification (the compose-spec
package: unknown keys, wrong types and bad values are refused), refer only to things that
exist (services, volumes, files), and run only `quotagate` commands and options that exist.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml
from compose_spec import PyOptions

from quotagate.cli.main import cli
from quotagate.config import load_config

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "quotagate:local"
SHELL_SEPARATORS = {"|", "||", "&&", ";", ">", ">>", "<", "\\"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    text = (ROOT / "docker-compose.yml").read_text()
    assert isinstance(yaml.safe_load(text), dict)
    parsed = PyOptions(apply_merge=True).from_yaml(text)
    parsed.validate()
    document: dict[str, Any] = parsed.to_dict()
    return document


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def _image_command(dockerfile: list[tuple[str, str]], name: str) -> list[str]:
    (value,) = [args for instruction, args in dockerfile if instruction == name]
    parsed = json.loads(value)
    assert isinstance(parsed, list)
    return [str(part) for part in parsed]


def check_cli(args: list[str]) -> str:
    """Resolve `quotagate ARGS` to a command and parse its options, as the CLI would."""
    command: click.Command = cli
    path: list[str] = []
    rest = list(args)
    while isinstance(command, click.Group):
        assert rest, f"`quotagate {' '.join(path)}` needs a subcommand"
        name = rest.pop(0)
        assert name in command.commands, f"`quotagate {' '.join([*path, name])}` does not exist"
        command = command.commands[name]
        path.append(name)
    # Raises on an unknown option or a bad value, without running anything.
    command.make_context(" ".join(["quotagate", *path]), rest)
    return " ".join(path)


def _shell_invocations(script: str) -> list[list[str]]:
    """Every `quotagate ...` in a shell script, up to the next pipe or redirection."""
    found = []
    for line in script.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        for i, word in enumerate(words):
            if word == "quotagate":
                args = []
                for arg in words[i + 1 :]:
                    if arg in SHELL_SEPARATORS:
                        break
                    args.append(arg)
                found.append(args)
    return found


def test_the_stack_has_every_part(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {
        "redis", "postgres", "setup", "gateway", "worker", "scheduler", "app", "nginx",
        "prometheus", "grafana",
    }  # fmt: skip


def test_every_reference_resolves(compose: dict[str, Any]) -> None:
    services = compose["services"]
    declared_volumes = set(compose.get("volumes") or {})
    for name, service in services.items():
        for dependency in service.get("depends_on") or {}:
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            assert dependency != name
        for mount in service.get("volumes") or []:
            source = mount.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in declared_volumes, f"{name} uses undeclared volume {source}"
        if "build" in service:
            assert (ROOT / service["build"] / "Dockerfile").exists()


def test_every_quotagate_command_exists(
    compose: dict[str, Any], dockerfile: list[tuple[str, str]]
) -> None:
    entrypoint = _image_command(dockerfile, "ENTRYPOINT")
    assert entrypoint == ["quotagate"]
    ran = {check_cli(_image_command(dockerfile, "CMD"))}
    for name, service in compose["services"].items():
        if service.get("image") != IMAGE:
            continue
        service_entrypoint = service.get("entrypoint") or entrypoint
        command = service.get("command") or _image_command(dockerfile, "CMD")
        if service_entrypoint == ["quotagate"]:
            ran.add(check_cli(command))
        else:
            assert service_entrypoint == ["sh", "-c"], f"{name}: unexpected entrypoint"
            (script,) = command
            invocations = _shell_invocations(script)
            assert invocations, f"{name} runs no quotagate command"
            ran.update(check_cli(args) for args in invocations)
    assert ran == {"serve", "worker", "scheduler", "migrate", "keys create"}


def test_a_missing_command_or_option_would_be_caught() -> None:
    with pytest.raises(AssertionError, match="does not exist"):
        check_cli(["sever"])
    with pytest.raises(click.NoSuchOption):
        check_cli(["serve", "--prot", "8080"])
    assert _shell_invocations(
        "set -e\nquotagate keys create --name x \\\n  --scope hook | cat"
    ) == [["keys", "create", "--name", "x", "--scope", "hook"]]


def test_redis_keeps_an_append_only_file(compose: dict[str, Any]) -> None:
    command = compose["services"]["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert "/data" in " ".join(compose["services"]["redis"]["volumes"])


def test_the_services_point_at_each_other(compose: dict[str, Any]) -> None:
    services = compose["services"]
    env = services["gateway"]["environment"]
    redis_url = urlsplit(env["QUOTAGATE_REDIS_URL"])
    assert redis_url.hostname in services
    database_url = urlsplit(env["QUOTAGATE_DATABASE_URL"])
    assert database_url.hostname in services
    postgres_env = services[database_url.hostname]["environment"]
    assert database_url.username == postgres_env["POSTGRES_USER"]
    assert database_url.password == postgres_env["POSTGRES_PASSWORD"]
    assert database_url.path == f"/{postgres_env['POSTGRES_DB']}"
    for name in ("setup", "worker", "scheduler"):
        assert services[name]["environment"] == env, f"{name} sees other settings"

    nginx_env = services["nginx"]["environment"]
    host, port = nginx_env["QUOTAGATE_ADDR"].split(":")
    serve = services[host]["command"]
    assert serve[serve.index("--port") + 1] == port
    assert nginx_env["APP_ADDR"].split(":")[0] in services


def test_nginx_gets_every_placeholder_and_a_403_config(compose: dict[str, Any]) -> None:
    nginx = compose["services"]["nginx"]
    mounts = dict(m.split(":")[:2] for m in nginx["volumes"])
    template = mounts["./examples/nginx/quotagate.conf.template"]
    assert template.startswith("/etc/nginx/templates/") and template.endswith(".template")
    wanted = set(
        re.findall(
            r"\$\{([A-Z_]+)\}", (ROOT / "examples/nginx/quotagate.conf.template").read_text()
        )
    )
    given = set(nginx["environment"]) | {"QUOTAGATE_HOOK_KEY", "QUOTAGATE_SETTLE_KEY"}
    assert wanted <= given, f"nginx lacks {wanted - given}"
    entrypoint = " ".join(nginx["entrypoint"])
    assert "export QUOTAGATE_HOOK_KEY=" in entrypoint
    assert 'QUOTAGATE_SETTLE_KEY="$$(cat /var/lib/quotagate/keys/settle-key)"' in entrypoint
    assert mounts["./examples/nginx/htpasswd"] == nginx["environment"]["HTPASSWD_FILE"]

    gateway = compose["services"]["gateway"]
    config_mount = dict(m.split(":")[:2] for m in gateway["volumes"])
    (source,) = [
        s for s, t in config_mount.items() if t == gateway["environment"]["QUOTAGATE_CONFIG"]
    ]
    authz = load_config(ROOT / source).authz
    assert (authz.deny_status, authz.rate_limited_status) == (403, 403)


def test_the_dockerfile_copies_what_exists(dockerfile: list[tuple[str, str]]) -> None:
    copies = [args.split()[:-1] for instruction, args in dockerfile if instruction == "COPY"]
    assert copies
    for sources in copies:
        for source in sources:
            assert (ROOT / source).exists(), f"the Dockerfile copies missing {source}"
    exposed = [args for instruction, args in dockerfile if instruction == "EXPOSE"]
    cmd = _image_command(dockerfile, "CMD")
    assert exposed == [cmd[cmd.index("--port") + 1]]
