"""Alerts: the condition table as pure functions, the Prometheus rules and Grafana dashboard
kept in step with it (names the services really expose), and the webhook on a real server."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
import redis
import yaml

from mlplatform.config import source_root
from mlplatform.monitoring.alerts import CONDITIONS, Alert, Notifier, Reading, evaluate

RULES = source_root() / "monitoring" / "alerts.yml"
DASHBOARD = source_root() / "monitoring" / "grafana" / "mlsuite.json"

# Modules whose import defines every metric the services and workers expose.
METRIC_MODULES = ["mlplatform.metrics", "mlplatform.streams", "mlplatform.retention",
                  "mlplatform.worker", "mlplatform.rollouts.controller",
                  "mlplatform.monitoring.driftreport", "fraud.app", "fraud.worker",
                  "recommender.app", "recommender.worker"]
# The names the rules and dashboard depend on (the contract); a test below says
# which of them no service exposes.
DEPENDS_ON = {
    "mlsuite_http_requests_total", "mlsuite_http_request_duration_seconds_bucket",
    "mlsuite_feature_drifted", "mlsuite_feature_drift_share", "mlsuite_feature_drift_value",
    "mlsuite_fraud_online_quality", "mlsuite_fraud_label_lag_seconds_bucket",
    "mlsuite_stream_backlog", "mlsuite_stream_length", "mlsuite_redis_up",
    "mlsuite_redis_used_memory_bytes", "mlsuite_redis_memory_limit_bytes",
    "mlsuite_stream_dead_letters_total",
    "mlsuite_process_cpu_seconds", "mlsuite_process_resident_memory_bytes",
    "mlsuite_fraud_loss_prevented_amount_total", "mlsuite_fraud_loss_amount_total",
    "mlsuite_fraud_false_decline_amount_total",
    "mlsuite_recommender_attributed_conversions_total",
    "mlsuite_recommender_attributed_revenue_total",
}


# -- the condition table -------------------------------------------------------------------

# (condition, labels, a value that fires, a value that does not)
CASES = [
    ("ServiceDown", {"service": "fraud"}, 0.0, 1.0),
    ("HighErrorRate", {"service": "fraud"}, 0.06, 0.05),
    ("HighLatencyP99", {"service": "recommender"}, 0.3, 0.25),
    ("FeatureDrift", {"service": "fraud", "feature": "amount"}, 1.0, 0.0),
    ("DatasetDrift", {"service": "fraud"}, 0.5, 0.49),
    ("OnlineRocAucDrop", {}, 0.65, 0.7),
    ("LabelLagHigh", {}, 46 * 86400.0, 45 * 86400.0),
    ("StreamBacklog", {"stream": "fraud:labels", "group": "learner"}, 10_001, 10_000),
    ("RedisDown", {}, 0.0, 1.0),
    ("RedisMemoryHigh", {}, 0.81, 0.8),
    ("DeadLetters", {"stream": "shop:events", "group": "popularity"}, 1.0, 0.0),
]


def test_every_condition_has_a_case() -> None:
    assert sorted(c.name for c in CONDITIONS) == sorted(name for name, *_ in CASES)


@pytest.mark.parametrize(("name", "labels", "fires", "quiet"), CASES, ids=[c[0] for c in CASES])
def test_condition_fires_beyond_its_threshold_only(name: str, labels: dict[str, str],
                                                   fires: float, quiet: float) -> None:
    [condition] = [c for c in CONDITIONS if c.name == name]
    fired = evaluate([Reading(condition.metric, labels, fires)], now=1.0)
    assert [(a.name, a.labels, a.value) for a in fired] == [(name, labels, fires)]
    assert "?" not in fired[0].summary, fired[0].summary  # every placeholder filled
    assert evaluate([Reading(condition.metric, labels, quiet)]) == []


def test_readings_of_other_metrics_set_nothing_off() -> None:
    assert evaluate([Reading("rps", {"service": "fraud"}, 1e9)]) == []


# -- rules file and dashboard --------------------------------------------------------------

def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_rules_file_is_valid_prometheus_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool:
        done = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
    for rule in _rules():  # parsed either way: the shape Prometheus needs
        assert set(rule) >= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["for"]


def test_rules_file_matches_the_console_conditions() -> None:
    in_file = {r["alert"]: (r["expr"], r["for"], r["labels"]["severity"]) for r in _rules()}
    in_code = {c.name: (c.expr, c.for_, c.severity) for c in CONDITIONS}
    assert in_file == in_code


def _exposed_names(client: redis.Redis) -> set[str]:
    from prometheus_client import REGISTRY

    for module in METRIC_MODULES:
        importlib.import_module(module)
    families = list(REGISTRY.collect())
    try:  # collectors read at scrape time (resource metrics), when that module exists
        resources = importlib.import_module("mlplatform.monitoring.resources")
        families += list(resources.ProcessCollector("test", None).collect())
        families += list(resources.RedisCollector(client).collect())
    except ImportError:
        pass
    names = set()
    for family in families:
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"],
                    "summary": ["_sum", "_count"]}.get(family.type, [""])
        names |= {family.name + s for s in suffixes}
    return names


def _used_names() -> set[str]:
    text = RULES.read_text() + DASHBOARD.read_text()
    return set(re.findall(r"\bmlsuite_[a-z0-9_]+", text))


def test_every_metric_in_rules_and_dashboard_is_exposed(redis_client: redis.Redis) -> None:
    exposed = _exposed_names(redis_client)
    missing = sorted(_used_names() - exposed)
    assert not missing, f"no service exposes {missing}"


def test_the_metrics_the_console_depends_on_are_exposed(redis_client: redis.Redis) -> None:
    missing = sorted(DEPENDS_ON - _exposed_names(redis_client))
    assert not missing, f"not exposed yet: {missing}"


def test_dashboard_is_a_grafana_dashboard_over_the_same_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "mlsuite" and dash["panels"]
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert all(p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in dash["panels"])
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    # every metric an alert watches has a panel
    in_rules = set(re.findall(r"\bmlsuite_[a-z0-9_]+", RULES.read_text()))
    in_dash = set(re.findall(r"\bmlsuite_[a-z0-9_]+", " ".join(exprs)))
    assert in_rules <= in_dash, sorted(in_rules - in_dash)


# -- the webhook ---------------------------------------------------------------------------

class _Receiver(BaseHTTPRequestHandler):
    received: list[dict[str, Any]]
    status = 200

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        length = int(self.headers.get("Content-Length", "0"))
        self.server.received.append(json.loads(self.rfile.read(length)))  # type: ignore[attr-defined]
        self.send_response(self.server.status)  # type: ignore[attr-defined]
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[HTTPServer]:
    """A real HTTP server on a free loopback port recording every POSTed JSON body."""
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    server.received = []  # type: ignore[attr-defined]
    server.status = 200  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _url(server: HTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/hook"


def _alert(name: str = "RedisDown", **labels: str) -> Alert:
    return evaluate([Reading({"RedisDown": "redis_up", "FeatureDrift": "feature_drifted"}[name],
                             labels, 0.0 if name == "RedisDown" else 1.0)])[0]


def test_webhook_gets_each_new_alert_once(receiver: HTTPServer) -> None:
    notifier = Notifier(_url(receiver))
    drift = _alert("FeatureDrift", service="fraud", feature="amount")
    assert notifier.update([drift]) == [drift]
    assert notifier.update([drift]) == []  # still firing: not posted again
    assert len(receiver.received) == 1  # type: ignore[attr-defined]
    body = receiver.received[0]  # type: ignore[attr-defined]
    [posted] = body["alerts"]
    assert body["status"] == "firing"
    assert posted["labels"] == {"alertname": "FeatureDrift", "severity": "warning",
                                "service": "fraud", "feature": "amount"}
    assert "amount drifted" in posted["annotations"]["summary"]
    # A second alert is posted; a resolved one that fires again is new again.
    redis_down = _alert("RedisDown")
    notifier.update([drift, redis_down])
    notifier.update([])
    notifier.update([drift])
    names = [b["alerts"][0]["labels"]["alertname"] for b in receiver.received]  # type: ignore[attr-defined]
    assert names == ["FeatureDrift", "RedisDown", "FeatureDrift"]
    assert notifier.posted == 3 and notifier.failed == 0


def test_two_console_processes_post_an_alert_once(receiver: HTTPServer,
                                                  redis_client: redis.Redis) -> None:
    first, second = Notifier(_url(receiver), redis_client), Notifier(_url(receiver), redis_client)
    alert = _alert("FeatureDrift", service="fraud", feature="amount")
    first.update([alert])
    second.update([alert])
    assert len(receiver.received) == 1  # type: ignore[attr-defined]
    assert first.posted + second.posted == 1


def test_a_failing_webhook_is_counted_not_raised(receiver: HTTPServer) -> None:
    receiver.status = 500  # type: ignore[attr-defined]
    notifier = Notifier(_url(receiver))
    notifier.update([_alert("RedisDown")])
    assert notifier.failed == 1 and notifier.posted == 0
    unreachable = Notifier("http://127.0.0.1:9/hook", timeout=0.5)
    unreachable.update([_alert("RedisDown")])
    assert unreachable.failed == 1

