"""The operator page in a real headless browser (Debian's chromium) against the running
gateway with real data: the chart and the tables show what the API says, a missing, wrong or
non-admin key is refused, and a screenshot is saved."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import uuid
from html.parser import HTMLParser
from pathlib import Path

import asyncpg
import httpx
import pytest
from tests.api.helpers import bearer, create_account
from tests.api.test_transactions import flush
from tests.support.gateway import GatewayServer

from quotagate.alerts.store import NewAlert, insert_alerts

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
SCREENSHOT = Path(__file__).resolve().parents[2] / ".artifacts" / "operator-page.png"


def _browser(url: str, *extra: str) -> str:
    assert CHROMIUM is not None
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--virtual-time-budget=15000", "--window-size=1100,1700", *extra, url],
        capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class _Page(HTMLParser):
    """What the test reads of the dumped page: element text by id, table rows, chart bars."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.loaded: str | None = None
        self.bars: list[tuple[str, int]] = []
        self.fields: dict[str, str] = {}
        self.tables: dict[str, list[list[str]]] = {}
        self.texts: dict[str, str] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._field: str | None = None
        self._id: str | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "body":
            self.loaded = a.get("data-loaded")
        if tag == "rect":
            self.bars.append((a["data-hour"] or "", int(a["data-spent"] or 0)))
        table_id = a.get("id")
        if tag == "table" and table_id:
            self._table = table_id
            self.tables[table_id] = []
        if tag == "tr" and self._table:
            self.tables[self._table].append([])
        if tag == "td":
            self._cell, self._field = [], a.get("data-field")
        text_id = a.get("id")
        if tag in ("p", "span") and text_id:
            self._id = text_id
            self.texts[text_id] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None and self._table:
            text = "".join(self._cell)
            self.tables[self._table][-1].append(text)
            if self._field:
                self.fields[self._field] = text
            self._cell = None
        if tag == "table":
            self._table = None
        if tag in ("p", "span"):
            self._id = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        elif self._id:
            self.texts[self._id] += data


def _alert(database_url: str, account: str) -> None:
    async def write() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            async with conn.transaction():
                new = NewAlert("balance_below", account, "ui-test", f"ui-test|{uuid.uuid4()}",
                               {"balance": 7, "threshold": 10})  # fmt: skip
                await insert_alerts(conn, [new])
        finally:
            await conn.close()

    asyncio.run(write())


def test_the_page_shows_what_the_api_says_and_refuses_bad_keys(
    gateway: GatewayServer, http: httpx.Client, api_keys: dict[str, str],
    redis_url: str, migrated_database_url: str,
) -> None:  # fmt: skip
    admin, service = api_keys["admin"], bearer(api_keys["service"])
    acct = create_account(http, admin, tier="pro")
    for _ in range(6):
        http.post(f"/v1/accounts/{acct}/consume", json={"resource": "api_call"}, headers=service)
    http.post(f"/v1/accounts/{acct}/consume", json={"resource": "premium_feature", "units": 3},
              headers=service)  # fmt: skip
    flush(gateway, redis_url, migrated_database_url)
    http.post(f"/v1/accounts/{acct}/consume", json={"resource": "file_upload"}, headers=service)
    _alert(migrated_database_url, acct)
    # Purchased credits, beside the monthly ones; and two holds, of an amount and of a resource.
    grant = {"amount": 40, "type": "grant"}
    http.post(f"/v1/accounts/{acct}/credits", json=grant, headers=bearer(admin))
    # And an explicit grant that is spent first and expires in a week.
    promo = {"amount": 25, "priority": 10, "expires_in_seconds": 7 * 86400}
    granted = http.post(f"/v1/accounts/{acct}/grants", json=promo, headers=bearer(admin))
    assert granted.status_code == 201, granted.text
    for hold in ({"amount": 12, "ttl_seconds": 600}, {"resource": "premium_feature", "units": 2}):
        made = http.post(f"/v1/accounts/{acct}/holds", json=hold, headers=service)
        assert made.status_code == 201, made.text

    page = _Page(_browser(f"{gateway.url}/ui#key={admin}&account={acct}", "--dump-dom"))
    assert page.loaded == "ok", page.texts.get("status")
    view = http.get(f"/v1/accounts/{acct}", headers=bearer(admin)).json()
    assert (page.fields["balance"], page.fields["available"]) == (
        str(view["balance"]),
        str(view["available"]),
    )
    assert view["balance"] == 1000 - 6 - 15 - 2 + 40 + 25
    assert len(page.tables["transactions"]) - 1 == len(view["recent_transactions"]) == 10
    buckets = view["buckets"]
    assert page.tables["buckets"][1:] == [
        ["monthly", str(buckets["monthly"])], ["purchased", str(buckets["purchased"])],
    ]  # fmt: skip
    assert buckets["monthly"] + buckets["purchased"] + 25 == view["balance"]
    grants = [[g["id"], g["source"], str(g["priority"]), str(g["remaining"]), str(g["amount"]),
               g["expires_at"] or "never"] for g in view["grants"]]  # fmt: skip
    assert page.tables["grants"][1:] == grants
    assert [g[0] for g in grants] == [granted.json()["grant_id"], "monthly", "purchased"]
    assert sum(g["remaining"] for g in view["grants"]) == view["balance"]
    assert page.texts["next-expiry"] == (
        f"3 grants, {view['balance']} credits; next expiry: {view['next_expiry']}"
    )
    assert buckets["purchased"] >= 40
    holds = [[h["hold_id"], str(h["amount"]), h["expires_at"], h["resource"] or "-",
              "-" if h["units"] is None else str(h["units"])] for h in view["holds"]]  # fmt: skip
    assert page.tables["holds"][1:] == holds
    assert sorted(int(h[1]) for h in holds) == [10, 12] and view["reserved"] == 22
    assert page.texts["holds-total"] == "2 open, 22 credits held"
    usage = http.get(f"/v1/accounts/{acct}/usage", params={"window": "hour"}, headers=bearer(admin))
    spent_by_hour: dict[str, int] = {}
    for row in usage.json()["rows"]:
        hour = row["window_start"].replace("+00:00", "Z")
        spent_by_hour[hour] = spent_by_hour.get(hour, 0) + row["spent"]
    assert {h: s for h, s in page.bars if s} == spent_by_hour
    assert sum(spent_by_hour.values()) == 23
    assert page.texts["usage-total"] == "23 credits spent"
    top = {row[0]: int(row[1]) for row in page.tables["top"][1:]}
    assert top.get(acct, 23) == 23  # listed with its spend, if among the day's ten
    assert [acct, "balance_below"] in [[r[2], r[1]] for r in page.tables["alerts"][1:]]
    assert re.fullmatch(r"\d+ entries waiting", page.texts["backlog-total"])

    near = admin[:-1] + ("A" if admin[-1] != "A" else "B")
    for key, status in (("", "401"), (near, "401"), (api_keys["read"], "403")):
        refused = _Page(_browser(f"{gateway.url}/ui#key={key}&account={acct}", "--dump-dom"))
        assert refused.loaded == "refused"
        assert refused.texts["status"].startswith(f"refused: {status}")
        assert refused.bars == [] and refused.fields == {}
        assert refused.tables["holds"] == refused.tables["buckets"] == [[]]  # headers only
        assert refused.tables["grants"] == [[]]

    SCREENSHOT.parent.mkdir(exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)
    _browser(f"{gateway.url}/ui#key={admin}&account={acct}", f"--screenshot={SCREENSHOT}")
    assert SCREENSHOT.stat().st_size > 10_000


def test_the_page_shows_a_members_pool_and_limit(
    gateway: GatewayServer, http: httpx.Client, api_keys: dict[str, str]
) -> None:
    admin = api_keys["admin"]
    pool = create_account(http, admin, tier="pro")
    member = f"{pool}~ann"
    made = http.put(f"/v1/accounts/{member}", json={"tier": "free", "member_limit": 40},
                    headers=bearer(admin))  # fmt: skip
    assert made.status_code == 201, made.text
    charged = http.post(f"/v1/accounts/{member}/consume", json={"resource": "api_call", "units": 3},
                        headers=bearer(api_keys["service"]))  # fmt: skip
    assert charged.status_code == 200, charged.text
    page = _Page(_browser(f"{gateway.url}/ui#key={admin}&account={member}", "--dump-dom"))
    assert page.loaded == "ok", page.texts.get("status")
    shown = {k: page.fields[k] for k in ("pool", "member_limit", "pool_paid_this_period",
                                          "own_credits_first")}  # fmt: skip
    assert shown == {"pool": pool, "member_limit": "40", "pool_paid_this_period": "3",
                     "own_credits_first": "false"}  # fmt: skip
    plain = _Page(_browser(f"{gateway.url}/ui#key={admin}&account={pool}", "--dump-dom"))
    assert plain.loaded == "ok" and "pool" not in plain.fields
