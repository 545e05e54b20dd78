"""The Grafana dashboard: importable, querying only metrics of the contract, and shipped as a
ConfigMap that is generated from it.

``dashboards/eventray.json`` is the source; ``cluster/k8s/grafana-dashboard.yaml`` is rendered
from it by ``render_configmap``. After editing the dashboard, regenerate the ConfigMap:

    .venv/bin/python tests/unit/test_dashboard.py --write
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import promql_parser
import pytest
import yaml

from actors.metric_contract import CONTRACT, MetricSpec

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "dashboards" / "eventray.json"
CONFIGMAP = ROOT / "cluster" / "k8s" / "grafana-dashboard.yaml"
KUBERNETES_VERSION = "1.33.0"  # checked against this API version's core schemas

# Ray's export: "ray_" before every name; Prometheus suffixes by type.
RAY_PREFIX = "ray_"
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
# Grafana's variables, replaced by something PromQL parses.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}
# The panels the issue asks for, by title.
REQUIRED_PANELS = {"Ingest rate", "Refusals by reason", "Produce latency", "Lag per partition",
                   "Drain time per partition", "Rows per second", "Dead letters by reason",
                   "Duplicates dropped", "Sink write latency", "Sink pool size"}


def render_configmap(dashboard_json: str) -> str:
    """The ConfigMap that Grafana's dashboard sidecar loads (label ``grafana_dashboard``)."""
    body = "".join(f"    {line}\n" if line else "\n"
                   for line in dashboard_json.rstrip("\n").split("\n"))
    return (
        "# Generated from dashboards/eventray.json: do not edit, run\n"
        "#   .venv/bin/python tests/unit/test_dashboard.py --write\n"
        "apiVersion: v1\n"
        "kind: ConfigMap\n"
        "metadata:\n"
        "  name: eventray-grafana-dashboard\n"
        "  labels:\n"
        "    app.kubernetes.io/name: eventray\n"
        '    grafana_dashboard: "1"\n'
        "data:\n"
        "  eventray.json: |\n"
        f"{body}"
    )


def exported_names(spec: MetricSpec) -> set[str]:
    return {RAY_PREFIX + spec.name + suffix for suffix in SUFFIXES[spec.kind]}


CONTRACT_EXPORTS = {name: spec for spec in CONTRACT for name in exported_names(spec)}


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects (parsed as PromQL: a syntax error fails)."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            name = node.name or next((m.value for m in node.matchers.matchers
                                      if m.name == "__name__"), None)
            assert name, f"a selector without a metric name in {expr!r}"
            names.add(name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def panels_of(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too; rows themselves are left out."""
    found = []
    for panel in dashboard["panels"]:
        found.extend(panel.get("panels", []))
        if panel["type"] != "row":
            found.append(panel)
    return found


# --------------------------------------------------------------------------- the helpers


def test_metric_names_come_from_the_parsed_query() -> None:
    expr = ('histogram_quantile(0.99, sum by (le) (rate(ray_a_bucket{topic=~"$topic", '
            'x="ray_not_a_metric"}[$__rate_interval]))) / on() group_left ray_b or vector(0)')
    assert metric_names(expr) == {"ray_a_bucket", "ray_b"}
    assert metric_names('{__name__="ray_c"}') == {"ray_c"}
    with pytest.raises(ValueError, match=r".+"):
        metric_names("sum(rate(ray_a[1m])")


def test_exported_names_follow_rays_prometheus_export() -> None:
    assert exported_names(MetricSpec("eventray_x", "counter", (), "", "sink")) == {
        "ray_eventray_x_total"}
    assert exported_names(MetricSpec("eventray_h", "histogram", (), "", "sink", (1.0,))) == {
        "ray_eventray_h_bucket", "ray_eventray_h_sum", "ray_eventray_h_count"}


# --------------------------------------------------------------------------- the dashboard


def test_the_dashboard_is_importable_grafana_json() -> None:
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    source = variables["datasource"]
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    ids = [panel["id"] for panel in dashboard["panels"]] + [
        inner["id"] for panel in dashboard["panels"] for inner in panel.get("panels", [])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels_of(dashboard):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["w"] > 0 and grid["h"] > 0, panel["title"]
    assert {panel["title"] for panel in panels_of(dashboard)} >= REQUIRED_PANELS


def test_panels_do_not_overlap() -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in load_dashboard()["panels"]:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[x, y]}"
                taken[x, y] = panel["title"]


def test_every_query_uses_only_metrics_of_the_contract() -> None:
    dashboard = load_dashboard()
    used: set[str] = set()
    for panel in panels_of(dashboard):
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            unknown = names - set(CONTRACT_EXPORTS)
            assert not unknown, f"{panel['title']}: {sorted(unknown)} not in the contract"
            used |= names
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["definition"])
            assert match, variable["definition"]
            metric, label = match.groups()
            assert metric in CONTRACT_EXPORTS
            assert label in CONTRACT_EXPORTS[metric].labels
            used.add(metric)
    # And the other way round: every metric of the contract is on the dashboard.
    assert {CONTRACT_EXPORTS[name].name for name in used} == {spec.name for spec in CONTRACT}


# --------------------------------------------------------------------------- the ConfigMap


def test_the_configmap_is_generated_from_the_dashboard() -> None:
    text = DASHBOARD.read_text()
    assert CONFIGMAP.read_text() == render_configmap(text), (
        "regenerate: .venv/bin/python tests/unit/test_dashboard.py --write")
    configmap = yaml.safe_load(CONFIGMAP.read_text())
    assert configmap["data"]["eventray.json"] == text
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_the_configmap_is_a_valid_kubernetes_object() -> None:
    configmap = yaml.safe_load(CONFIGMAP.read_text())
    kubernetes_validate.validate(configmap, KUBERNETES_VERSION, strict=True)
    broken = {**configmap, "data": {"eventray.json": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: tests/unit/test_dashboard.py --write")
    CONFIGMAP.parent.mkdir(parents=True, exist_ok=True)
    CONFIGMAP.write_text(render_configmap(DASHBOARD.read_text()))
    print(f"wrote {CONFIGMAP.relative_to(ROOT)}")
