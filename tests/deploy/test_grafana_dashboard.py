"""deploy/grafana/deepsynth-dashboard.json: a loadable Grafana dashboard that queries only metrics the code emits."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from metrics_endpoint import DASHBOARD, dashboard_metric_names, dashboard_queries

from deepsynth.training.telemetry import TRAIN_GAUGES

ROOT = Path(__file__).resolve().parents[2]
# How Ray's Prometheus export names each kind of ray.util.metrics metric.
EXPORTED = {"Counter": ["_total"], "Histogram": ["_bucket", "_sum", "_count"], "Gauge": [""]}


def emitted_metrics() -> dict[str, str]:
    """Every ray.util.metrics metric the code creates with a literal name, and its kind; plus the training gauges."""
    found = {name: "Gauge" for name, _ in TRAIN_GAUGES.values()}
    for path in [*ROOT.glob("deepsynth/**/*.py"), *ROOT.glob("serve/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in EXPORTED
                    and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                found[node.args[0].value] = node.func.attr
    return found


def test_the_dashboard_is_valid_grafana_dashboard_json():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        assert panel["type"] in ("row", "timeseries", "stat") and panel["title"]
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys() and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        for target in panel.get("targets", []):
            assert target["refId"] and target["expr"] and target["expr"].count("(") == target["expr"].count(")")
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    used = {word[1:] for expr in dashboard_queries(dashboard) for word in expr.replace("}", " ").replace('"', " ")
            .split() if word.startswith("$") and not word.startswith("$__")}
    assert used <= variables, f"undefined template variables: {used - variables}"


def test_every_queried_metric_is_one_the_code_emits_and_every_metric_is_shown():
    exported = {f"ray_{name}{suffix}" for name, kind in emitted_metrics().items() for suffix in EXPORTED[kind]}
    queried = dashboard_metric_names()
    assert queried <= exported, f"the dashboard queries metrics nothing emits: {sorted(queried - exported)}"
    shown = {name for name in emitted_metrics() if any(q.startswith(f"ray_{name}") for q in queried)}
    assert shown == set(emitted_metrics()), f"metrics without a panel: {sorted(set(emitted_metrics()) - shown)}"
