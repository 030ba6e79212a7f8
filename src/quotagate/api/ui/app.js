// The operator page: reads the same HTTP API as every client, with the admin key typed in
// (kept in this tab's sessionStorage only). No build step, no library: the chart is SVG.
"use strict";

const $ = (id) => document.getElementById(id);

function fragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  return { key: params.get("key"), account: params.get("account") };
}

async function api(path) {
  const key = sessionStorage.getItem("quotagate-key") || "";
  const answer = await fetch(path, { headers: { Authorization: `Bearer ${key}` } });
  const body = await answer.json();
  if (!answer.ok) {
    const error = new Error(`${answer.status} ${body.code || ""}: ${body.detail || ""}`);
    error.status = answer.status;
    throw error;
  }
  return body;
}

function cell(row, value, numeric) {
  const td = row.insertCell();
  td.textContent = value === null || value === undefined ? "-" : String(value);
  if (numeric) td.className = "n";
  return td;
}

function fill(tableId, rows, columns) {
  const body = $(tableId).tBodies[0];
  body.replaceChildren();
  for (const r of rows) {
    const row = body.insertRow();
    for (const [name, numeric] of columns) cell(row, r[name], numeric);
  }
}

function showAccount(account) {
  $("account-id").textContent = account.account_id;
  const fields = ["tier", "status", "balance", "reserved", "available", "overdraft_limit", "last_reset_at"];
  const body = $("account-table").tBodies[0];
  body.replaceChildren();
  for (const name of fields) {
    const row = body.insertRow();
    cell(row, name);
    cell(row, account[name], typeof account[name] === "number").dataset.field = name;
  }
  // A member of a pool: the pool pays its charges, within its limit per period of the pool.
  const m = account.membership;
  if (m) {
    const limit = m.member_limit === null ? "none" : m.member_limit;
    for (const [name, value] of [["pool", m.pool_id], ["member_limit", limit],
      ["pool_paid_this_period", m.used], ["own_credits_first", String(m.own_credits_first)]]) {
      const row = body.insertRow();
      cell(row, name);
      cell(row, value, typeof value === "number").dataset.field = name;
    }
  }
  // Spends take the monthly credits first, then the purchased ones.
  fill("buckets", [
    { bucket: "monthly", credits: account.buckets.monthly },
    { bucket: "purchased", credits: account.buckets.purchased },
  ], [["bucket"], ["credits", true]]);
  // The balance by grant, in the order spends take from them; expires "never" when it does not.
  const grants = account.grants.map((g) => ({ ...g, expires: g.expires_at || "never" }));
  fill("grants", grants, [
    ["id"], ["source"], ["priority", true], ["remaining", true], ["amount", true], ["expires"],
  ]);
  const granted = account.grants.reduce((sum, g) => sum + g.remaining, 0);
  $("next-expiry").textContent =
    `${account.grants.length} grants, ${granted} credits; next expiry: ${account.next_expiry || "none"}`;
  fill("holds", account.holds, [
    ["hold_id"], ["amount", true], ["expires_at"], ["resource"], ["units", true],
  ]);
  const held = account.holds.reduce((sum, h) => sum + h.amount, 0);
  $("holds-total").textContent = `${account.holds.length} open, ${held} credits held`;
  fill("transactions", account.recent_transactions, [
    ["created_at"], ["type"], ["amount", true], ["resource"], ["balance_after", true], ["pending"],
  ]);
}

function hourlySpend(usage) {
  const hours = new Map();
  for (const row of usage.rows) {
    hours.set(row.window_start, (hours.get(row.window_start) || 0) + row.spent);
  }
  const start = new Date(usage.from).getTime();
  const end = new Date(usage.to).getTime();
  const bars = [];
  for (let t = start; t < end; t += 3600 * 1000) {
    const iso = new Date(t).toISOString().replace(".000Z", "Z");
    const key = [...hours.keys()].find((k) => new Date(k).getTime() === t);
    bars.push({ hour: iso, spent: key === undefined ? 0 : hours.get(key) });
  }
  return bars;
}

function drawChart(bars) {
  const svg = $("usage-chart");
  svg.replaceChildren();
  const ns = "http://www.w3.org/2000/svg";
  const width = 720, height = 140, step = width / Math.max(bars.length, 1);
  const top = Math.max(1, ...bars.map((b) => b.spent));
  bars.forEach((bar, i) => {
    const rect = document.createElementNS(ns, "rect");
    const h = Math.round((bar.spent / top) * (height - 10));
    rect.setAttribute("x", String(i * step + 1));
    rect.setAttribute("y", String(height - h));
    rect.setAttribute("width", String(Math.max(step - 2, 1)));
    rect.setAttribute("height", String(h));
    rect.dataset.hour = bar.hour;
    rect.dataset.spent = String(bar.spent);
    const title = document.createElementNS(ns, "title");
    title.textContent = `${bar.hour}: ${bar.spent}`;
    rect.appendChild(title);
    svg.appendChild(rect);
  });
  const label = document.createElementNS(ns, "text");
  label.setAttribute("x", "0");
  label.setAttribute("y", "155");
  label.textContent = `max ${top} credits an hour`;
  svg.appendChild(label);
  const total = bars.reduce((sum, b) => sum + b.spent, 0);
  $("usage-total").textContent = `${total} credits spent`;
  $("usage-total").dataset.total = String(total);
}

function topConsumers(usage) {
  const by = new Map();
  for (const row of usage.rows) {
    const seen = by.get(row.account_id) || { account_id: row.account_id, spent: 0, transactions: 0 };
    seen.spent += row.spent;
    seen.transactions += row.transactions;
    by.set(row.account_id, seen);
  }
  return [...by.values()].sort((a, b) => b.spent - a.spent || a.account_id.localeCompare(b.account_id));
}

async function load() {
  const account = $("account").value.trim();
  const status = $("status");
  status.className = "";
  status.textContent = "loading...";
  try {
    const now = new Date();
    const since = new Date(now.getTime() - 24 * 3600 * 1000).toISOString();
    const day = encodeURIComponent(since);
    const [view, usage, top, alerts] = await Promise.all([
      api(`/v1/accounts/${encodeURIComponent(account)}`),
      api(`/v1/accounts/${encodeURIComponent(account)}/usage?window=hour&from=${day}`),
      api(`/v1/usage?group_by=account&window=hour&limit=10&from=${day}`),
      api("/v1/alerts?limit=10"),
    ]);
    const ready = await (await fetch("/readyz")).json();
    showAccount(view);
    drawChart(hourlySpend(usage));
    fill("top", topConsumers(top).slice(0, 10), [["account_id"], ["spent", true], ["transactions", true]]);
    fill("alerts", alerts.alerts.map((a) => ({ ...a, details: JSON.stringify(a.details) })), [
      ["created_at"], ["kind"], ["account_id"], ["details"],
    ]);
    const lag = ready.outbox_lag || { total: 0, partitions: {} };
    const partitions = Object.entries(lag.partitions).map(([p, n]) => ({ partition: p, entries: n }));
    fill("backlog", partitions, [["partition", true], ["entries", true]]);
    $("backlog-total").textContent = `${lag.total} entries waiting`;
    $("main").hidden = false;
    status.textContent = `shown at ${now.toISOString()}`;
    document.body.dataset.loaded = "ok";
  } catch (error) {
    $("main").hidden = true;
    status.className = "error";
    status.textContent = `refused: ${error.message}`;
    document.body.dataset.loaded = "refused";
  }
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("quotagate-key", $("key").value);
  load();
});

const given = fragment();
if (given.key !== null) {
  sessionStorage.setItem("quotagate-key", given.key);
  history.replaceState(null, "", location.pathname);  // the key leaves the address bar
}
if (given.account) {
  $("account").value = given.account;
  load();
}
