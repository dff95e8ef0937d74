"""Test helpers: scrape Ray's Prometheus endpoints as Prometheus would, and the metric names the dashboard queries."""

from __future__ import annotations

import json
import re
from pathlib import Path

import ray
import requests

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "deepsynth-dashboard.json"
SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(\{(?P<labels>[^}]*)\})? (?P<value>\S+)")
QUERIED = re.compile(r"\bray_deepsynth_\w+")


def scrape(url: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample on a Prometheus text endpoint."""
    samples = []
    for line in requests.get(url, timeout=10).text.splitlines():
        match = SAMPLE.match(line)
        if match and not line.startswith("#"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"] or ""))
            samples.append((match["name"], labels, float(match["value"])))
    return samples


def scrape_cluster() -> list[tuple[str, dict[str, str], float]]:
    """Every sample of every alive node's metrics agent (the port Ray's Prometheus service discovery lists)."""
    return [sample for node in ray.nodes() if node["Alive"]
            for sample in scrape(f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics")]


def dashboard_queries(dashboard: dict) -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and template-variable queries."""
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    exprs += [variable["query"]["query"] for variable in dashboard["templating"]["list"]
              if isinstance(variable.get("query"), dict)]
    return exprs


def dashboard_metric_names() -> set[str]:
    return {name for expr in dashboard_queries(json.loads(DASHBOARD.read_text())) for name in QUERIED.findall(expr)}
