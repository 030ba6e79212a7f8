"""docs/configuration.md lists every setting with the default in effect: every environment
variable the code reads, every key of the config file that has a default, and the shipped
config file repeats those defaults rather than setting others."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec
import pytest

from quotagate import config
from quotagate.bench import pgdesign
from quotagate.settings import Settings, default_workers

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "configuration.md"

ROW = re.compile(r"^\| `([^`]+)` \| (.+?) \| .+ \|$")
VARIABLE = re.compile(r"[\"'](QUOTAGATE_[A-Z_]+)[\"']")

# Variables in the code that are no settings of quotagate's.
NOT_SETTINGS = {
    # What `quotagate env` prints for calling the gateway; quotagate itself never reads them.
    "QUOTAGATE_URL",
    "QUOTAGATE_ADMIN_KEY",
    "QUOTAGATE_SERVICE_KEY",
    "QUOTAGATE_HOOK_KEY",
    # Set by `quotagate bench` for the comparison app it starts, from its own database.
    "QUOTAGATE_BENCH_PG_URL",
}

# Defaults the table describes in words: the words, and the value they stand for.
DESCRIBED: dict[str, tuple[str, Callable[[Settings], bool]]] = {
    "QUOTAGATE_QUEUE_URL": ("`QUOTAGATE_REDIS_URL`", lambda s: s.queue_url == s.redis_url),
    "QUOTAGATE_CONFIG": ("the shipped default", lambda s: s.config_path is None),
    "QUOTAGATE_WORKERS": ("one per core", lambda s: s.workers == default_workers()),
    "QUOTAGATE_DATA_DIR": (
        "`~/.local/share/quotagate` (root: `/var/lib/quotagate`)",
        lambda s: s.data_dir is None,
    ),
    "QUOTAGATE_JWT_SECRET": ("unset", lambda s: s.jwt_secret is None),
    "QUOTAGATE_LOG_FORMAT": ("the config file's `[logs] format`", lambda s: s.log_format is None),
    "QUOTAGATE_LOG_LEVEL": ("the config file's `[logs] level`", lambda s: s.log_level is None),
}

# Variables read outside the settings, with their defaults.
ELSEWHERE = {
    "QUOTAGATE_FLUSH_PAUSE": "unset",
    "QUOTAGATE_ALLOW_EVICTION": "unset",
    "QUOTAGATE_BENCH_PG_POOL": f"`{pgdesign.DEFAULT_POOL_SIZE}`",
}


def table(heading: str) -> dict[str, str]:
    """The rows of the table under ``heading``: first cell (a code span) to default."""
    text = PAGE.read_text()
    section = text[text.index(heading) :]
    rows: dict[str, str] = {}
    for line in section.splitlines()[1:]:
        if line.startswith("## "):
            break
        if match := ROW.match(line):
            assert match[1] not in rows, f"listed twice: {match[1]}"
            rows[match[1]] = match[2]
    return rows


def variables_in_code() -> set[str]:
    found = set()
    for path in (ROOT / "src" / "quotagate").rglob("*.py"):
        found |= set(VARIABLE.findall(path.read_text()))
    return found - NOT_SETTINGS


def settings_variables() -> dict[str, str]:
    """QUOTAGATE_* variable to Settings field, from each field's docstring."""
    source = (ROOT / "src" / "quotagate" / "settings.py").read_text()
    fields = re.findall(r'^    (\w+): .+\n    """(QUOTAGATE_[A-Z_]+):', source, re.MULTILINE)
    return {var: name for name, var in fields}


def test_every_variable_the_code_reads_is_listed_and_nothing_else() -> None:
    listed = set(table("## Environment"))
    assert variables_in_code() - listed == set()
    assert listed - variables_in_code() == set()


def test_each_variable_shows_its_default_in_effect() -> None:
    rows = table("## Environment")
    defaults = Settings.from_env({})
    fields = settings_variables()
    assert set(fields) | set(ELSEWHERE) == set(rows)
    wrong = []
    for var, name in fields.items():
        if var in DESCRIBED:
            words, holds = DESCRIBED[var]
            if rows[var] != words or not holds(defaults):
                wrong.append(f"{var}: {rows[var]}")
        elif rows[var] != f"`{getattr(defaults, name)}`":
            wrong.append(f"{var}: {rows[var]} but {getattr(defaults, name)!r}")
    wrong += [f"{var}: {rows[var]}" for var, words in ELSEWHERE.items() if rows[var] != words]
    assert wrong == []


def _toml(value: Any) -> str:
    """A value as the config file spells it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


# The tables of the config file and the struct each decodes into.
SECTIONS: dict[str, type[msgspec.Struct]] = {
    "": config.Config,
    "[tiers.NAME]": config.Tier,
    "[idempotency]": config.Idempotency,
    "[holds]": config.Holds,
    "[authz]": config.Authz,
    "[[authz.routes]]": config.Route,
    "[identity]": config.Identity,
    "[identity.jwt]": config.JwtIdentity,
    "[logs]": config.Logs,
}


def struct_defaults() -> dict[str, str]:
    """``[section] key`` to its default as TOML, for every key that has a plain default."""
    out = {}
    for section, struct in SECTIONS.items():
        for info in msgspec.structs.fields(struct):
            default = info.default
            if default is msgspec.NODEFAULT and info.default_factory is not msgspec.NODEFAULT:
                default = info.default_factory()
            if default is msgspec.NODEFAULT or isinstance(default, msgspec.Struct | type(None)):
                continue
            if isinstance(default, list) and not default:
                continue  # an empty table, such as [[authz.routes]]: nothing to show
            out[f"{section} {info.encode_name}".strip()] = _toml(default)
    return out


def test_each_config_key_with_a_default_shows_it() -> None:
    rows = table("## The config file")
    wrong = {
        key: (rows.get(key), f"`{value}`")
        for key, value in struct_defaults().items()
        if rows.get(key) != f"`{value}`"
    }
    assert wrong == {}


def _shipped() -> dict[str, Any]:
    text = resources.files("quotagate").joinpath("default_config.toml").read_text()
    return tomllib.loads(text)


def test_the_shipped_file_repeats_the_defaults() -> None:
    shipped = _shipped()
    tables = {
        "": shipped,
        **{f"[{name}]": shipped[name] for name in ("idempotency", "holds", "authz", "logs")},
    }
    differing = []
    for key, value in struct_defaults().items():
        section, _, name = key.rpartition(" ")
        here = tables.get(section)
        if here is not None and name in here and _toml(here[name]) != value:
            differing.append(f"{key}: {_toml(here[name])} in the file, {value} in the code")
    assert differing == []


def test_the_shipped_resources_are_the_listed_ones() -> None:
    shipped = _shipped()["resources"]
    listed = ", ".join(f"`{name} = {cost}`" for name, cost in shipped.items())
    assert table("## The config file")["[resources]"] == listed


@pytest.mark.parametrize(
    ("value", "spelled"),
    [(True, "true"), ("free", '"free"'), (["RS256"], '["RS256"]'), (300, "300")],
)
def test_values_are_spelled_as_in_toml(value: Any, spelled: str) -> None:
    assert _toml(value) == spelled
    assert tomllib.loads(f"x = {spelled}")["x"] == value


def test_an_empty_environment_gives_the_field_defaults() -> None:
    """``from_env`` takes its defaults from the fields: nothing set, nothing differs."""
    assert Settings.from_env({}) == Settings()
