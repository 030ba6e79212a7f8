"""The config file: resource costs, tiers, partitions, idempotency, holds, authz routes, and
where the hook takes the caller's account from.

Read once at start from ``QUOTAGATE_CONFIG`` (the shipped ``default_config.toml`` otherwise),
decoded straight into typed structs by msgspec, then checked as a whole. Any problem raises
:class:`~quotagate.errors.ConfigError` with a sentence naming the key.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
import unicodedata
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import msgspec

from quotagate.errors import ConfigError
from quotagate.logs import DEFAULT_LOG_FORMAT, DEFAULT_LOG_LEVEL, LogFormat, LogLevel

MAX_AMOUNT = 10**12
"""Largest amount or units in one request (the HTTP API's bound)."""

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
    shadow: bool = False
    """Shadow mode for every charge of the tier's accounts: decided and recorded as it would
    be charged, nothing charged, always allowed (a new tier, watched before it charges)."""


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


class Batch(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Batch charges (``POST /v1/charges``)."""

    max_charges: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1000
    """Most charges one request may carry: bounds the time one request holds the gateway's
    event loop and the size of its answer."""
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024, le=256 * 1024 * 1024)] = 4 * 1024 * 1024
    """Largest body of a batch request. 1,000 charges with a few hundred bytes of metadata
    each fit several times over; a single charge's body stays capped at 16 KiB."""


Method = Annotated[str, msgspec.Meta(pattern=r"^(\*|[A-Za-z]{1,32})\Z")]


class Route(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One row of the authz route table: first match wins.

    ``path`` is a glob matched against the normalised path (see
    :mod:`quotagate.api.priced_path`), regardless of case unless ``case_sensitive``: a request
    must not dodge its price by spelling ``/API/Premium/x``. A ``GET`` route also prices
    ``HEAD``, which upstreams answer with their GET handler."""

    path: Annotated[str, msgspec.Meta(min_length=1)]
    resource: str | None = None
    """What the request charges (``units`` of it); a reserve route may name a ``cost``
    instead."""
    method: Method = "*"
    units: PositiveInt = 1
    case_sensitive: bool = False
    shadow: bool = False
    """Price this route's requests as a charge would, record the decision, charge nothing
    and allow (see ``quotagate shadow report``): a new price, watched before it charges."""
    mode: Literal["charge", "reserve"] = "charge"
    """``charge``: the hook charges the price. ``reserve``: it holds the estimate, and the
    upstream settles the actual cost by hold id after its answer."""
    cost: PositiveInt | None = None
    """A reserve route's estimate in credits, when it is not priced by a resource."""
    hold_ttl: int | str | None = None
    """How long a reserve route's hold lives unsettled: seconds, or a duration such as
    ``"90s"``, ``"5m"``, ``"2h"``, ``"1d"`` (default: ``holds.default_ttl_seconds``)."""
    max_overrun: NonNegativeInt = 0
    """Credits a settle may charge above the estimate, while the balance allows."""
    on_expiry: Literal["release", "capture"] = "release"
    """What an unsettled hold comes to at its deadline: freed, or charged the estimate."""

    def matches(self, method: str, path: str) -> bool:
        """Whether this route prices ``method`` (upper case) on ``path`` (normalised)."""
        wanted = self.method.upper()
        return (
            wanted == "*" or wanted == method or (method == "HEAD" and wanted == "GET")
        ) and bool(_glob(self.path, self.case_sensitive).match(path))


class Authz(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    unmatched: Literal["allow", "deny"] = "allow"
    deny_status: Annotated[int, msgspec.Meta(ge=400, le=499)] = 402
    rate_limited_status: Annotated[int, msgspec.Meta(ge=400, le=499)] = 429
    invalid_path_status: Annotated[int, msgspec.Meta(ge=400, le=499)] = 400
    """The status of a path the hook refuses to price; nginx setups use 403 (see deny_status)."""
    timeout_ms: Annotated[int, msgspec.Meta(ge=1, le=60_000)] = 250
    failure_mode: Literal["closed", "open"] = "closed"
    routes: list[Route] = []

    def route_for(self, method: str, path: str) -> Route | None:
        """The first route pricing ``method`` on the normalised ``path``, or on it without its
        trailing slash: most upstreams serve ``/api/files/`` as ``/api/files``."""
        method = method.upper()
        bare = path[:-1] if path[-1:] == "/" and len(path) > 1 else None
        for route in self.routes:
            if route.matches(method, path) or (bare is not None and route.matches(method, bare)):
                return route
        return None


HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
"""Signed with a shared secret, which comes from the environment (QUOTAGATE_JWT_SECRET)."""
PUBLIC_KEY_ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)  # fmt: skip
"""Signed with a private key, checked with a public key (a PEM file or a JWKS)."""
Algorithm = Literal[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
    "ES256", "ES384", "ES512", "EdDSA",
]  # fmt: skip
"""The algorithms a token may be signed with: "none" is not one of them."""
Seconds = Annotated[int, msgspec.Meta(ge=0, le=300)]


class JwtIdentity(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """How the account is read from the client's own token (``[identity.jwt]``)."""

    issuer: Annotated[str, msgspec.Meta(min_length=1)]
    audience: Annotated[str, msgspec.Meta(min_length=1)]
    algorithms: Annotated[list[Algorithm], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["RS256"]
    )
    jwks_url: str | None = None
    public_key_file: str | None = None
    token_header: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9-]{1,64}\Z")] = "Authorization"
    """The header that carries the token; in ``Authorization`` it follows ``Bearer``."""
    account_claim: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] = "sub"
    leeway_seconds: Seconds = 30
    """Clock difference allowed between the token's issuer and this machine (exp, nbf, iat)."""
    jwks_timeout_ms: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 1000

    @property
    def uses_secret(self) -> bool:
        return self.algorithms[0] in HMAC_ALGORITHMS


class Identity(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Where the hook and ``/v1/me`` take the caller's account from (``[identity]``):
    ``header``, the ``X-Account-Id`` the proxy sets; ``jwt``, a verified token of the client."""

    mode: Literal["header", "jwt"] = "header"
    jwt: JwtIdentity | None = None


class BalanceThreshold(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``[[alerts.balance]]``: fire once when an account's balance goes below ``below``
    credits, or below ``below_percent`` of its tier's monthly grant; re-armed when it is back
    at or above. For every account of ``tier``, or for one ``account`` (else every account)."""

    below: NonNegativeInt | None = None
    below_percent: Annotated[float, msgspec.Meta(gt=0, le=100)] | None = None
    tier: str | None = None
    account: str | None = None

    @property
    def name(self) -> str:
        level = f"{self.below}" if self.below is not None else f"{self.below_percent}%"
        scope = f"account={self.account}" if self.account else f"tier={self.tier or '*'}"
        return f"balance:{scope}:below={level}"


class Consumption(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``[[alerts.consumption]]``: an account's spend over the last ``window_hours`` UTC hours
    (the current one included) above ``multiple`` times its usual rate (an exponentially
    weighted average, weight ``alpha``, of the ``baseline_windows`` windows before), or above
    ``ceiling``; never below ``min_credits``. Once per episode: re-armed when a check finds
    consumption back to usual."""

    tier: str | None = None
    window_hours: Annotated[int, msgspec.Meta(ge=1, le=168)] = 1
    baseline_windows: Annotated[int, msgspec.Meta(ge=1, le=720)] = 24
    multiple: Annotated[float, msgspec.Meta(gt=1)] | None = 5.0
    ceiling: PositiveInt | None = None
    min_credits: NonNegativeInt = 100
    alpha: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.3

    @property
    def name(self) -> str:
        return (
            f"consumption:tier={self.tier or '*'}:window={self.window_hours}h:"
            f"multiple={self.multiple}:ceiling={self.ceiling}"
        )


class Expiry(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``[alerts.expiry]``: for tiers with ``renewal = "reset"``, warn ``warn_hours_before``
    the end of the month, once per account and month, when unused monthly credits remain; and
    ``warn_hours_before`` an explicit grant's expiry, once per grant, when it still holds some."""

    warn_hours_before: Annotated[int, msgspec.Meta(ge=1, le=27 * 24)] = 72


class Webhooks(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``[alerts.webhooks]``: how deliveries are tried (endpoints are set over the API)."""

    timeout_ms: Annotated[int, msgspec.Meta(ge=1, le=60_000)] = 3000
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=50)] = 8
    backoff_seconds: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 5.0
    """The wait after the first failure; doubled after each further one."""
    max_backoff_seconds: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 3600.0


class Alerts(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``[alerts]``: what the flush watches for (nothing, unless configured)."""

    balance: list[BalanceThreshold] = []
    consumption: list[Consumption] = []
    expiry: Expiry | None = None
    webhooks: Webhooks = Webhooks()

    @property
    def any(self) -> bool:
        return bool(self.balance or self.consumption or self.expiry)


class Shadow(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Shadow mode beyond the hook's routes (``authz.routes[].shadow``)."""

    resources: list[str] = []
    """Every charge of these resources, by the hook or the API, is a shadow charge: decided
    and recorded as it would be charged, nothing charged, always allowed."""


class Logs(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``[logs]``: how the long-running processes log (docs/logs.md). QUOTAGATE_LOG_FORMAT and
    QUOTAGATE_LOG_LEVEL, when set, win over these."""

    format: LogFormat = DEFAULT_LOG_FORMAT
    level: LogLevel = DEFAULT_LOG_LEVEL
    """``info`` writes an access line per request; ``warning`` leaves them out."""


class Config(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    resources: dict[Name, PositiveInt]
    tiers: dict[Name, Tier]
    partitions: Annotated[int, msgspec.Meta(ge=1, le=16384)] = 64
    default_tier: str = "free"
    opening_grant: bool = True
    """A new account starts with its tier's monthly grant (as a "grant" transaction)."""
    idempotency: Idempotency = Idempotency()
    holds: Holds = Holds()
    batch: Batch = Batch()
    authz: Authz = Authz()
    identity: Identity = Identity()
    alerts: Alerts = Alerts()
    shadow: Shadow = Shadow()
    logs: Logs = Logs()

    def cost_of(self, resource: str) -> int | None:
        return self.resources.get(resource)


_DURATION = re.compile(r"^([1-9][0-9]{0,9})(s|m|h|d)\Z")
_DURATION_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_seconds(value: int | str) -> int | None:
    """Seconds of a duration (an integer of seconds, or ``"90s"``, ``"5m"``, ``"2h"``,
    ``"1d"``), or None when it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 1 else None
    match = _DURATION.match(value)
    return int(match[1]) * _DURATION_SECONDS[match[2]] if match else None


def hold_ttl_seconds(route: Route, holds: Holds) -> int:
    """The lifetime of the holds a reserve route makes (the config checked it at start)."""
    if route.hold_ttl is None:
        return holds.default_ttl_seconds
    seconds = duration_seconds(route.hold_ttl)
    assert seconds is not None  # _check_route refused any other value
    return seconds


def _glob(pattern: str, case_sensitive: bool) -> re.Pattern[str]:
    key = (pattern, case_sensitive)
    compiled = _GLOB_CACHE.get(key)
    if compiled is None:
        # IGNORECASE folds as upstreams that ignore case do, ASCII lookalikes included
        # (K, the Kelvin sign, is k; ı and İ are i; ſ is s).
        flags = 0 if case_sensitive else re.IGNORECASE
        regex = fnmatch.translate(unicodedata.normalize("NFKC", pattern))
        compiled = _GLOB_CACHE[key] = re.compile(regex, flags)
    return compiled


_GLOB_CACHE: dict[tuple[str, bool], re.Pattern[str]] = {}


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
        _check_route(f"authz.routes[{i}]", route, config)
    for name in config.shadow.resources:
        if name not in config.resources:
            raise ConfigError(f"config: shadow.resources names {name!r}, not in [resources]")
    _check_identity(config.identity)
    _check_alerts(config)
    return config


def _check_route(name: str, route: Route, config: Config) -> None:
    if route.resource is not None and route.resource not in config.resources:
        raise ConfigError(f"config: {name}.resource {route.resource!r} is not in [resources]")
    if route.mode == "charge":
        if route.resource is None:
            raise ConfigError(f"config: {name} needs a resource (what the request charges)")
        for key, value in (("cost", route.cost), ("hold_ttl", route.hold_ttl)):
            if value is not None:
                raise ConfigError(f'config: {name}.{key} is for mode = "reserve" routes')
        if route.max_overrun or route.on_expiry != "release":
            raise ConfigError(
                f'config: {name}.max_overrun and on_expiry are for mode = "reserve" routes'
            )
        return
    if route.shadow:
        raise ConfigError(f'config: {name}.shadow is for mode = "charge" routes')
    if route.resource is not None and route.resource in config.shadow.resources:
        raise ConfigError(
            f"config: {name} reserves {route.resource!r}, a resource of [shadow] resources: "
            "a shadow resource is charged nothing, so it is never held"
        )
    if (route.cost is None) == (route.resource is None):
        raise ConfigError(
            f"config: {name} (reserve) needs its estimate: cost (credits) or resource "
            "(with units), not both"
        )
    if route.cost is not None and route.units != 1:
        raise ConfigError(f"config: {name}.units goes with resource, not with cost")
    if route.hold_ttl is not None:
        seconds = duration_seconds(route.hold_ttl)
        h = config.holds
        if seconds is None:
            raise ConfigError(
                f"config: {name}.hold_ttl {route.hold_ttl!r} is not a duration "
                '(seconds, or a number with s, m, h or d: "90s", "5m")'
            )
        if not h.min_ttl_seconds <= seconds <= h.max_ttl_seconds:
            raise ConfigError(
                f"config: {name}.hold_ttl is {seconds} s, outside holds.min_ttl_seconds "
                f"({h.min_ttl_seconds}) to holds.max_ttl_seconds ({h.max_ttl_seconds})"
            )


def _check_alerts(config: Config) -> None:
    tiers = [("balance", r.tier) for r in config.alerts.balance]
    tiers += [("consumption", r.tier) for r in config.alerts.consumption]
    for kind, tier in tiers:
        if tier is not None and tier not in config.tiers:
            raise ConfigError(f"config: alerts.{kind} tier {tier!r} is not a tier in [tiers]")
    for threshold in config.alerts.balance:
        if (threshold.below is None) == (threshold.below_percent is None):
            raise ConfigError("config: each [[alerts.balance]] needs one of below or below_percent")
        if threshold.tier and threshold.account:
            raise ConfigError("config: an [[alerts.balance]] names a tier or an account, not both")
    for rule in config.alerts.consumption:
        if rule.multiple is None and rule.ceiling is None:
            raise ConfigError("config: each [[alerts.consumption]] needs multiple or ceiling")


def _check_identity(identity: Identity) -> None:
    jwt = identity.jwt
    if identity.mode == "header":
        return
    if jwt is None:
        raise ConfigError('config: identity.mode = "jwt" needs an [identity.jwt] table')
    # One family of algorithms, so that a key can never be read as the other kind: a public
    # key taken for an HMAC secret would let anyone who has it sign tokens.
    if len({a in HMAC_ALGORITHMS for a in jwt.algorithms}) > 1:
        raise ConfigError(
            "config: identity.jwt.algorithms mixes HMAC (HS*) and public-key algorithms"
        )
    sources = [name for name in ("jwks_url", "public_key_file") if getattr(jwt, name)]
    if jwt.uses_secret and sources:
        raise ConfigError(
            f"config: identity.jwt.{sources[0]} is a public key, but the algorithms are HMAC "
            "(HS*), whose secret comes from QUOTAGATE_JWT_SECRET"
        )
    if not jwt.uses_secret and len(sources) != 1:
        raise ConfigError(
            "config: identity.jwt needs exactly one of jwks_url or public_key_file "
            "for public-key algorithms"
        )
    if jwt.jwks_url is not None:
        _check_jwks_url(jwt.jwks_url)


def _check_jwks_url(url: str) -> None:
    parts = urlsplit(url)
    loopback = parts.hostname in ("127.0.0.1", "::1", "localhost")
    allowed = parts.scheme == "https" or (parts.scheme == "http" and loopback)
    if not parts.hostname or not allowed:
        raise ConfigError(
            f"config: identity.jwt.jwks_url {url!r} must be an https:// URL "
            "(http:// only on a loopback address): the keys decide who may spend"
        )


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
