"""Shadow mode through the gateway: a shadow route of the hook and a shadow resource of the
API decide and record as they would charge, answer 200 and charge nothing; replayed with
shadow off, the same requests charge and deny what the shadow report says."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from tests.api.helpers import account, balance, bearer, create_account
from tests.support.gateway import GatewayServer, gateway_settings, running_gateway

from quotagate.api import access
from quotagate.config import Config, parse_config
from quotagate.engine import CreditEngine
from quotagate.errors import ConfigError
from quotagate.ledger import Ledger, flush_all
from quotagate.ledger.shadow import shadow_report

CONFIG = """
partitions = 4
default_tier = "trial"
opening_grant = true
[resources]
api = 1
export = 3
[tiers.trial]
credit_limit = 30
monthly_grant = 30
[tiers.team]
credit_limit = 10
monthly_grant = 10
shadow = true
[shadow]
resources = ["export"]
[[authz.routes]]
path = "/s/small"
resource = "api"
units = 2
shadow = true
[[authz.routes]]
path = "/s/big"
resource = "api"
units = 7
shadow = true
[[authz.routes]]
path = "/r/small"
resource = "api"
units = 2
[[authz.routes]]
path = "/r/big"
resource = "api"
units = 7
"""


@pytest.fixture(scope="module")
def config() -> Config:
    return parse_config(CONFIG)


@pytest.fixture(scope="module")
def shadow_gateway(
    redis_url: str, migrated_database_url: str, gateway_prefix: str, config: Config
) -> Iterator[GatewayServer]:
    settings = gateway_settings(redis_url, migrated_database_url, gateway_prefix + ":sh")
    with running_gateway(settings, config) as server:
        yield server


def _hook(api_keys: dict[str, str], account: str, uri: str) -> dict[str, str]:
    return {"X-Quotagate-Key": api_keys["hook"], "X-Account-Id": account, "X-Original-URI": uri}


def test_a_shadow_route_answers_200_records_and_charges_nothing(
    shadow_gateway: GatewayServer, api_keys: dict[str, str]
) -> None:
    with httpx.Client(base_url=shadow_gateway.url) as http:
        acct = create_account(http, api_keys["admin"], tier="trial")
        answers = [http.get("/v1/authz", headers=_hook(api_keys, acct, "/s/big")) for _ in range(6)]
        assert [r.status_code for r in answers] == [200] * 6
        assert [r.headers["x-quota-shadow"] for r in answers] == (
            ["charged"] * 4 + ["insufficient_credits"] * 2
        )
        assert [r.headers["x-quota-remaining"] for r in answers] == ["23", "16", "9", "2", "2", "2"]
        assert balance(http, api_keys["admin"], acct) == 30
        real = http.get("/v1/authz", headers=_hook(api_keys, acct, "/r/big"))
        assert real.status_code == 200 and "x-quota-shadow" not in real.headers
        assert balance(http, api_keys["admin"], acct) == 23
        metrics = http.get("/metrics").text
        assert 'quotagate_shadow_decisions_total{decision="charged",source="hook"}' in metrics


def test_a_shadow_resource_of_the_api_answers_its_decision_and_charges_nothing(
    shadow_gateway: GatewayServer, api_keys: dict[str, str]
) -> None:
    with httpx.Client(base_url=shadow_gateway.url) as http:
        acct = create_account(http, api_keys["admin"], tier="trial")
        service = bearer(api_keys["service"])
        body = {"resource": "export", "units": 6}  # 18 credits
        first = http.post(f"/v1/accounts/{acct}/consume", json=body, headers=service)
        second = http.post(f"/v1/accounts/{acct}/consume", json=body, headers=service)
        assert (first.status_code, second.status_code) == (200, 200)
        assert first.json()["shadow"] == "charged" and first.json()["remaining"] == 12
        assert second.json()["shadow"] == "insufficient_credits"
        assert second.headers["x-quota-shadow"] == "insufficient_credits"
        plain = http.post(
            f"/v1/accounts/{acct}/consume", json={"resource": "api"}, headers=service
        ).json()
        assert "shadow" not in plain and plain["remaining"] == 29
        batch = http.post("/v1/charges", json={"charges": [{"account_id": acct, **body}]},
                          headers=service).json()  # fmt: skip
        assert batch["results"][0]["shadow"] == "insufficient_credits"
        bad = http.post(f"/v1/accounts/{acct}/consume", json={**body, "units": 0}, headers=service)
        assert bad.status_code == 422
        assert balance(http, api_keys["admin"], acct) == 29


PAIRS = 12
REQUESTS = 30


async def _drive(
    url: str, api_keys: dict[str, str], plan: dict[str, list[str]]
) -> dict[str, list[int]]:
    """Each account's requests in order, the accounts at once: each answer's status and cost."""
    out: dict[str, list[int]] = {}
    async with httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_connections=PAIRS)) as http:

        async def one(account: str, uris: list[str]) -> None:
            for uri in uris:
                r = await http.get("/v1/authz", headers=_hook(api_keys, account, uri))
                cost = int(r.headers.get("x-quota-cost", "0"))
                charged = (
                    r.status_code == 200 and r.headers.get("x-quota-shadow", "charged") == "charged"
                )
                out.setdefault(account, []).append(cost if charged else -1)
                assert r.status_code in (200, 402), r.text

        await asyncio.gather(*(one(a, uris) for a, uris in plan.items()))
    return out


def test_the_shadow_report_equals_what_the_same_requests_charge_and_deny(
    shadow_gateway: GatewayServer,
    api_keys: dict[str, str],
    config: Config,
    redis_url: str,
    migrated_database_url: str,
    gateway_prefix: str,
) -> None:
    rng = random.Random(2026)
    with httpx.Client(base_url=shadow_gateway.url) as http:
        pairs = [
            (create_account(http, api_keys["admin"], tier="trial"),
             create_account(http, api_keys["admin"], tier="trial"))
            for _ in range(PAIRS)
        ]  # fmt: skip
    paths = {a: [rng.choice(["small", "big"]) for _ in range(REQUESTS)] for a, _ in pairs}
    shadow_plan = {a: [f"/s/{p}" for p in paths[a]] for a, _ in pairs}
    real_plan = {twin: [f"/r/{p}" for p in paths[a]] for a, twin in pairs}

    shadowed = asyncio.run(_drive(shadow_gateway.url, api_keys, shadow_plan))
    real = asyncio.run(_drive(shadow_gateway.url, api_keys, real_plan))

    async def report() -> dict[str, tuple[int, int, int, int]]:
        engine = CreditEngine.from_url(redis_url, config, prefix=gateway_prefix + ":sh")
        ledger = await Ledger.connect(migrated_database_url)
        try:
            await flush_all(engine, ledger)
            totals = {}
            for a, _ in pairs:
                [t] = await shadow_report(ledger, *_today(), account_id=a)
                totals[a] = (t.charged, t.charged_credits, t.denied, t.denied_credits)
            return totals
        finally:
            await ledger.aclose()
            await engine.aclose()

    totals = asyncio.run(report())
    with httpx.Client(base_url=shadow_gateway.url) as http:
        for a, twin in pairs:
            costs = real[twin]
            denied_credits = sum(
                7 if p == "big" else 2 for p, c in zip(paths[a], costs, strict=True) if c < 0
            )
            expected = (sum(c >= 0 for c in costs), sum(c for c in costs if c >= 0),
                        sum(c < 0 for c in costs), denied_credits)  # fmt: skip
            assert totals[a] == expected
            assert [c >= 0 for c in shadowed[a]] == [c >= 0 for c in costs]
            assert balance(http, api_keys["admin"], a) == 30  # shadow: nothing charged
            assert balance(http, api_keys["admin"], twin) == 30 - expected[1]
    assert any(t[2] for t in totals.values())  # the balances ran out: some were denied


def _today() -> tuple[datetime, datetime]:
    now = datetime.now(UTC)
    return now - timedelta(hours=1), now + timedelta(hours=1)


def test_the_access_line_says_a_charge_was_a_shadow_one(
    shadow_gateway: GatewayServer, api_keys: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=access.ACCESS_LOGGER.name)
    with httpx.Client(base_url=shadow_gateway.url) as http:
        acct = create_account(http, api_keys["admin"], tier="trial")
        caplog.clear()
        http.get("/v1/authz", headers=_hook(api_keys, acct, "/s/big"))
        http.post(f"/v1/accounts/{acct}/consume", json={"resource": "export", "units": 9},
                  headers=bearer(api_keys["service"]))  # fmt: skip
    records = [r.__dict__ for r in caplog.records if r.name == access.ACCESS_LOGGER.name]
    lines = [(r["decision"], r["cost"]) for r in records]
    assert lines == [("shadow_charged", 7), ("shadow_insufficient_credits", 27)]


def test_a_tier_in_shadow_mode_is_allowed_through_the_hook_and_the_api(
    shadow_gateway: GatewayServer, api_keys: dict[str, str]
) -> None:
    with httpx.Client(base_url=shadow_gateway.url) as http:
        acct = create_account(http, api_keys["admin"], tier="team")
        hooked = [http.get("/v1/authz", headers=_hook(api_keys, acct, "/r/big")) for _ in range(2)]
        assert [r.status_code for r in hooked] == [200, 200]
        assert [r.headers["x-quota-shadow"] for r in hooked] == ["charged", "insufficient_credits"]
        consumed = http.post(
            f"/v1/accounts/{acct}/consume", json={"resource": "api", "units": 3},
            headers=bearer(api_keys["service"]),
        )  # fmt: skip
        assert consumed.status_code == 200 and consumed.json()["shadow"] == "charged"
        assert balance(http, api_keys["admin"], acct) == 10


def test_a_proxy_asking_to_reserve_on_a_shadow_route_gets_a_shadow_charge(
    shadow_gateway: GatewayServer, api_keys: dict[str, str]
) -> None:
    """Shadow means nothing charged: no hold (which a settle would charge) on a shadow route
    or of a shadow resource, whatever X-Quota-Mode says."""
    with httpx.Client(base_url=shadow_gateway.url) as http:
        acct = create_account(http, api_keys["admin"], tier="trial")
        on_route = http.get(
            "/v1/authz", headers={**_hook(api_keys, acct, "/s/big"), "X-Quota-Mode": "reserve"}
        )
        of_resource = http.get("/v1/authz", headers={
            **_hook(api_keys, acct, "/x"), "X-Quota-Mode": "reserve",
            "X-Quota-Resource": "export", "X-Quota-Units": "2",
        })  # fmt: skip
        for r in (on_route, of_resource):
            assert r.status_code == 200 and r.headers["x-quota-shadow"] == "charged", r.headers
            assert "x-quota-hold-id" not in r.headers
        assert account(http, api_keys["admin"], acct)["reserved"] == 0


def test_a_reserve_route_of_a_shadow_resource_is_refused() -> None:
    with pytest.raises(ConfigError, match="never held"):
        parse_config(
            CONFIG + '[[authz.routes]]\npath = "/e"\nresource = "export"\nmode = "reserve"\n'
        )
