"""The config file: resource costs, tiers, partitions, idempotency, holds, authz routes.

Read once at start from ``QUOTAGATE_CONFIG`` (the shipped ``default_config.toml`` otherwise),
decoded straight into typed structs by msgspec, then checked as a whole. Any problem raises
:class:`~quotagate.errors.ConfigError` with a sentence naming the key.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from quotagate.errors import ConfigError

MAX_AMOUNT = 10**12
"""Largest amount or units in one request (API.md)."""

MAX_BALANCE = 10**15
"""Largest balance a bucket may reach. Lua numbers are doubles, exact to 2^53 (about 9e15);
staying below 1e15 keeps every sum of a balance and an amount exact."""

PositiveInt = Annotated[int, msgspec.Meta(ge=1, le=MAX_AMOUNT)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0, le=MAX_AMOUNT)]
Name = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,63}\Z")]


class RateLimit(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    requests_per_second: Annotated[float, msgspec.Meta(gt=0, le=1_000_000)]
    burst: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]

    @property
    def interval_us(self) -> int:
        """Microseconds between two requests at the sustained rate (GCRA emission interval)."""
        return max(1, round(1_000_000 / self.requests_per_second))


class Tier(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    credit_limit: NonNegativeInt
    monthly_grant: NonNegativeInt
    renewal: Literal["add", "reset"] = "add"
    rate_limit: RateLimit | None = None


IdempotencyTTL = Annotated[int, msgspec.Meta(ge=1, le=30 * 86400)]


class Idempotency(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    ttl_seconds: IdempotencyTTL = 86400
    """How long an API write's Idempotency-Key is remembered."""
    hook_ttl_seconds: IdempotencyTTL = 300
    """How long the hook remembers a charge's X-Request-Id. Proxies retry an auth subrequest
    within seconds, and every hook request leaves a record for this long: at 10k requests/s
    the 24 hours of the API would keep hundreds of GiB in Redis, five minutes under one."""


class Holds(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    default_ttl_seconds: Annotated[int, msgspec.Meta(ge=1)] = 300
    min_ttl_seconds: Annotated[int, msgspec.Meta(ge=1)] = 1
    max_ttl_seconds: Annotated[int, msgspec.Meta(ge=1, le=30 * 86400)] = 86400


class Route(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One row of the authz route table: first match wins."""

    path: Annotated[str, msgspec.Meta(min_length=1)]
    resource: str
    method: str = "*"
    units: PositiveInt = 1

    def matches(self, method: str, path: str) -> bool:
        return (self.method == "*" or self.method.upper() == method.upper()) and bool(
            _glob(self.path).match(path)
        )


class Authz(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    unmatched: Literal["allow", "deny"] = "allow"
    deny_status: Annotated[int, msgspec.Meta(ge=400, le=499)] = 402
    rate_limited_status: Annotated[int, msgspec.Meta(ge=400, le=499)] = 429
    timeout_ms: Annotated[int, msgspec.Meta(ge=1, le=60_000)] = 250
    failure_mode: Literal["closed", "open"] = "closed"
    routes: list[Route] = []

    def route_for(self, method: str, path: str) -> Route | None:
        path = path.split("?", 1)[0]
        return next((r for r in self.routes if r.matches(method, path)), None)


class Config(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    resources: dict[Name, PositiveInt]
    tiers: dict[Name, Tier]
    partitions: Annotated[int, msgspec.Meta(ge=1, le=16384)] = 64
    default_tier: str = "free"
    opening_grant: bool = True
    """A new account starts with its tier's monthly grant (as a "grant" transaction)."""
    idempotency: Idempotency = Idempotency()
    holds: Holds = Holds()
    authz: Authz = Authz()

    def cost_of(self, resource: str) -> int | None:
        return self.resources.get(resource)


def _glob(pattern: str) -> re.Pattern[str]:
    return _GLOB_CACHE.setdefault(pattern, re.compile(fnmatch.translate(pattern)))


_GLOB_CACHE: dict[str, re.Pattern[str]] = {}


def _check(config: Config) -> Config:
    if not config.resources:
        raise ConfigError("config: [resources] must name at least one resource")
    if not config.tiers:
        raise ConfigError("config: [tiers] must name at least one tier")
    if config.default_tier not in config.tiers:
        raise ConfigError(f"config: default_tier {config.default_tier!r} is not a tier in [tiers]")
    h = config.holds
    if not h.min_ttl_seconds <= h.default_ttl_seconds <= h.max_ttl_seconds:
        raise ConfigError(
            "config: holds must have min_ttl_seconds <= default_ttl_seconds <= max_ttl_seconds"
        )
    for i, route in enumerate(config.authz.routes):
        if route.resource not in config.resources:
            raise ConfigError(
                f"config: authz.routes[{i}].resource {route.resource!r} is not in [resources]"
            )
    return config


def parse_config(text: str, source: str = "config") -> Config:
    """Decode and check a TOML document. Raises ConfigError naming the bad key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    try:
        config = msgspec.convert(data, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    try:
        return _check(config)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("config:", f"{source}:", 1)) from None


def default_config_text() -> str:
    return (resources.files("quotagate") / "default_config.toml").read_text()


def load_config(path: str | Path | None = None) -> Config:
    """Load the config at ``path``, or the shipped default when ``path`` is None."""
    if path is None:
        return parse_config(default_config_text(), "default config")
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"QUOTAGATE_CONFIG: cannot read {p}: {exc.strerror}") from None
    return parse_config(text, str(p))
