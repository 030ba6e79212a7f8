"""The Prometheus rules and the Grafana dashboard in examples/: checked by promtool where it is
installed, and against the metrics the gateway exports in any case."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from quotagate import metrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "examples" / "prometheus" / "quotagate-rules.yml"
CONFIG = ROOT / "examples" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "examples" / "grafana" / "dashboards" / "quotagate.json"
PROMTOOL = os.environ.get("QUOTAGATE_PROMTOOL") or shutil.which("promtool")
SCRAPED = {
    # Sampled at scrape time by the gateway (quotagate.api.routes.ops), not module counters.
    "quotagate_outbox_entries", "quotagate_outbox_oldest_age_seconds",
    "quotagate_redis_used_memory_bytes", "quotagate_redis_maxmemory_bytes",
    "quotagate_api_keys_cache_age_seconds",
}  # fmt: skip


def _exported() -> set[str]:
    names = set(SCRAPED)
    for collector in vars(metrics).values():
        describe = getattr(collector, "describe", None)
        if callable(describe) and hasattr(collector, "_name"):
            for family in describe():
                names |= {s.name for s in family.samples} | {family.name}
                kind = family.type
                if kind == "counter":
                    names.add(family.name + "_total")
                if kind == "histogram":
                    names |= {family.name + s for s in ("_bucket", "_sum", "_count")}
    return names


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bquotagate_[a-z_]+", expr))


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
def test_promtool_accepts_the_rules_and_the_config(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 8 rules found" in done.stdout
    config = tmp_path / "prometheus.yml"  # the rules' path as the container mounts it, here
    config.write_text(CONFIG.read_text().replace("/etc/prometheus/quotagate-rules.yml", str(RULES)))
    done = subprocess.run(
        [PROMTOOL, "check", "config", str(config)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_rule_and_panel_reads_a_metric_the_gateway_exports() -> None:
    exported = _exported()
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    assert {r["alert"] for r in rules} >= {
        "QuotagateOutboxLag", "QuotagateFlushFailing", "QuotagateFailOpen",
        "QuotagateServerErrors", "QuotagateFlushBatchesFailing", "QuotagateLedgerQuarantine",
    }  # fmt: skip
    used = set().union(*(_metric_names(r["expr"]) for r in rules))
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    for panel in panels:
        assert panel["targets"], panel["title"]
        used |= set().union(*(_metric_names(t["expr"]) for t in panel["targets"]))
    assert used and used <= exported, used - exported
    assert len({p["id"] for p in panels}) == len(panels)
    assert dashboard["uid"] == "quotagate" and isinstance(dashboard["schemaVersion"], int)
    provisioned = yaml.safe_load(
        (ROOT / "examples/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    uid = provisioned["datasources"][0]["uid"]
    assert {p["datasource"]["uid"] for p in panels} == {uid}
