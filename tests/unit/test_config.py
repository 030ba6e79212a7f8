"""The config file: the shipped default, and a clear message naming each kind of mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from quotagate.config import duration_seconds, hold_ttl_seconds, load_config, parse_config
from quotagate.errors import ConfigError

BASE = "[resources]\na = 1\n[tiers.free]\ncredit_limit = 1\nmonthly_grant = 1\n"


def test_shipped_default_holds_the_guides_values() -> None:
    config = load_config()
    assert config.resources == {
        "ai_chat_message": 1, "file_upload": 2, "api_call": 1, "premium_feature": 5,
    }  # fmt: skip
    assert {n: (t.credit_limit, t.monthly_grant) for n, t in config.tiers.items()} == {
        "free": (100, 100), "pro": (1000, 1000), "enterprise": (10000, 10000),
    }  # fmt: skip
    assert config.partitions >= 64
    assert config.idempotency.ttl_seconds == 86400
    route = config.authz.route_for("post", "/API/Chat/42")
    assert route is not None and route.resource == "ai_chat_message"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("partitions = 0\n" + BASE, "partitions"),
        ("partitions = 'x'\n" + BASE, "partitions"),
        (BASE.replace("a = 1", "a = 1.5"), "resources"),
        (BASE.replace("a = 1", "a = 0"), "resources"),
        (BASE.replace("a = 1", "Bad-Name = 1"), "resources"),
        (BASE + "bogus = 1\n", "bogus"),
        (BASE + "renewal = 'sometimes'\n", "renewal"),
        (BASE + "rate_limit = { requests_per_second = 0, burst = 1 }\n", "requests_per_second"),
        ("default_tier = 'gold'\n" + BASE, "default_tier"),
        ("[resources]\n[tiers.free]\ncredit_limit = 1\nmonthly_grant = 1\n", "resources"),
        (BASE + "[holds]\nmin_ttl_seconds = 10\ndefault_ttl_seconds = 5\n", "ttl"),
        (BASE + "[[authz.routes]]\npath = '/x'\nresource = 'nope'\n", "authz.routes[0].resource"),
        (BASE + "[authz]\nfailure_mode = 'maybe'\n", "failure_mode"),
        (BASE + "[authz]\ninvalid_path_status = 500\n", "invalid_path_status"),
        (BASE + "[[authz.routes]]\npath = '/x'\nresource = 'a'\nmethod = 'G T'\n", "method"),
        ("this is not toml", "TOML"),
    ],
)
def test_mistakes_are_named(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_config(text)


def test_file_errors_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        load_config(missing)
    bad = tmp_path / "bad.toml"
    bad.write_text("partitions = -1\n" + BASE)
    with pytest.raises(ConfigError, match=r"bad\.toml.*partitions"):
        load_config(bad)


ROUTE = BASE + "[[authz.routes]]\npath = '/x'\n"


def test_reserve_routes_take_an_estimate_a_lifetime_an_overrun_and_a_policy() -> None:
    config = parse_config(
        ROUTE + "mode = 'reserve'\ncost = 40\nhold_ttl = '5m'\nmax_overrun = 10\n"
        "on_expiry = 'capture'\n"
        "[[authz.routes]]\npath = '/y'\nmode = 'reserve'\nresource = 'a'\nunits = 3\n"
    )
    fixed, priced = config.authz.routes
    assert (fixed.mode, fixed.cost, fixed.max_overrun, fixed.on_expiry) == (
        "reserve", 40, 10, "capture",
    )  # fmt: skip
    assert hold_ttl_seconds(fixed, config.holds) == 300
    assert (priced.resource, priced.units, priced.max_overrun, priced.on_expiry) == (
        "a", 3, 0, "release",
    )  # fmt: skip
    assert hold_ttl_seconds(priced, config.holds) == config.holds.default_ttl_seconds
    assert (
        parse_config(BASE + "[[authz.routes]]\npath = '/x'\nresource = 'a'\n").authz.routes[0].mode
        == "charge"
    )


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(90, 90), ("90s", 90), ("5m", 300), ("2h", 7200), ("1d", 86400)],
)
def test_hold_ttl_is_seconds_or_a_duration(value: int | str, seconds: int) -> None:
    assert duration_seconds(value) == seconds


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ("mode = 'reserve'\n", "needs its estimate: cost"),
        ("mode = 'reserve'\ncost = 5\nresource = 'a'\n", "not both"),
        ("mode = 'reserve'\ncost = 5\nunits = 2\n", r"units goes with resource"),
        ("mode = 'reserve'\ncost = 0\n", "cost"),
        ("mode = 'reserve'\ncost = 5\nhold_ttl = '5 minutes'\n", "not a duration"),
        ("mode = 'reserve'\ncost = 5\nhold_ttl = 0\n", "not a duration"),
        ("mode = 'reserve'\ncost = 5\nhold_ttl = '2d'\n", "outside holds.min_ttl_seconds"),
        ("mode = 'reserve'\ncost = 5\nmax_overrun = -1\n", "max_overrun"),
        ("mode = 'reserve'\ncost = 5\non_expiry = 'keep'\n", "on_expiry"),
        ("mode = 'later'\nresource = 'a'\n", "mode"),
        ("", "needs a resource"),
        ("resource = 'a'\ncost = 5\n", r'cost is for mode = "reserve"'),
        ("resource = 'a'\nhold_ttl = 5\n", r'hold_ttl is for mode = "reserve"'),
        ("resource = 'a'\nmax_overrun = 5\n", "max_overrun and on_expiry are for"),
        ("resource = 'a'\non_expiry = 'capture'\n", "max_overrun and on_expiry are for"),
        ("mode = 'reserve'\nresource = 'nope'\n", r"authz.routes\[0\].resource 'nope'"),
    ],
)
def test_reserve_route_mistakes_are_named(lines: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(ROUTE + lines)
