"""deploy/grafana/msde.json: a dashboard Grafana can import, whose every query parses.

Structure is checked here; each query is also run by a real Prometheus against a real
TorchServe in tests/e2e/test_prometheus_scrape.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.tooling import (
    DASHBOARD,
    EXTERNAL_METRICS,
    dashboard_queries,
    exported_metrics,
    metric_names,
    run,
    tool,
)

GRID_COLUMNS = 24


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def graph_panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def test_dashboard_has_identity_and_the_variables_its_queries_use() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["namespace"]["includeAll"] is True
    used = set(re.findall(r"\$(\w+)", json.dumps(board["panels"])))
    assert used - {"__rate_interval"} <= set(variables)


def test_panels_have_unique_ids_and_do_not_overlap() -> None:
    panels = dashboard()["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= GRID_COLUMNS
        area = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not area & cells, f"panel {panel['title']!r} overlaps another"
        cells |= area


def test_every_graph_queries_the_selected_prometheus() -> None:
    for panel in graph_panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        targets = panel["targets"]
        assert targets, f"{panel['title']} has no query"
        assert len({t["refId"] for t in targets}) == len(targets)
        for target in targets:
            assert target["datasource"]["uid"] == "${datasource}"
            assert target["expr"].strip()


def test_every_query_parses_with_promtool(tmp_path: Path) -> None:
    rules = [{"record": f"dashboard:query_{i}", "expr": expr}
             for i, (_, expr) in enumerate(dashboard_queries())]
    path = tmp_path / "dashboard.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = run([tool("promtool"), "check", "rules", str(path)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules)} rules found" in proc.stdout


def test_queries_read_only_series_that_exist() -> None:
    known = exported_metrics() | EXTERNAL_METRICS
    for title, expr in dashboard_queries():
        unknown = metric_names(expr) - known
        assert not unknown, f"{title}: {unknown}"


def test_dashboard_covers_traffic_errors_latency_faces_queue_and_workers() -> None:
    read = set().union(*(metric_names(expr) for _, expr in dashboard_queries()))
    assert {
        "Requests2XX", "Requests4XX", "Requests5XX", "ts_inference_requests_total",  # every answer
        "msde_requests_total",  # handler answers by status
        "msde_handler_seconds_bucket",  # latency quantiles
        "msde_faces_total", "msde_expressions_total",  # faces by mask state, expressions
        "ts_queue_latency_microseconds", "WorkerLoadTime", "msde_model_info",  # queue, workers
    } <= read
    by_state = [expr for _, expr in dashboard_queries() if "msde_expressions_total" in expr]
    assert any('mask_state="masked"' in e for e in by_state)
    assert any('mask_state="unmasked"' in e for e in by_state)
