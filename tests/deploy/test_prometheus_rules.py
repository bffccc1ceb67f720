"""Alert and recording rules: promtool syntax check, promtool unit tests, real metric names."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.tooling import (
    EXTERNAL_METRICS,
    K8S,
    REPO,
    by_kind,
    documents,
    exported_metrics,
    metric_names,
    run,
    tool,
)

RULE_FILE = "msde.rules.yaml"  # the name deploy/prometheus/alerts.test.yaml loads


def groups() -> list[dict[str, Any]]:
    rule = by_kind(documents((K8S / "base" / "prometheusrule.yaml").read_text()), "PrometheusRule")
    return list(rule["spec"]["groups"])


def write_rules(folder: Path) -> Path:
    path = folder / RULE_FILE
    path.write_text(yaml.safe_dump({"groups": groups()}))
    return path


def test_rules_pass_promtool_check(tmp_path: Path) -> None:
    proc = run([tool("promtool"), "check", "rules", str(write_rules(tmp_path))])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_alerts_fire_on_the_promtool_unit_cases(tmp_path: Path) -> None:
    write_rules(tmp_path)
    shutil.copy(REPO / "deploy" / "prometheus" / "alerts.test.yaml", tmp_path / "alerts.test.yaml")
    proc = run([tool("promtool"), "test", "rules", "alerts.test.yaml"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_a_promtool_case_where_it_fires() -> None:
    cases = yaml.safe_load((REPO / "deploy" / "prometheus" / "alerts.test.yaml").read_text())
    fired = {check["alertname"] for case in cases["tests"]
             for check in case.get("alert_rule_test", []) if check.get("exp_alerts")}
    alerts = {r["alert"] for g in groups() for r in g["rules"] if "alert" in r}
    assert alerts - fired == set()


@pytest.mark.parametrize(
    "alert",
    ["MsdeHigh5xxRate", "MsdeRequestsFailedOutsideHandler", "MsdeP99LatencyHigh", "MsdeWorkerRestarts", "MsdeContainerRestarts",
     "MsdeNoFaceRatioSpike", "MsdeModelNotLoaded"],
)
def test_service_has_alert(alert: str) -> None:
    alerts = {r["alert"]: r for g in groups() for r in g["rules"] if "alert" in r}
    assert alert in alerts
    assert alerts[alert]["labels"]["severity"] in {"page", "warning"}
    assert alerts[alert]["annotations"]["summary"]


def test_rules_only_use_metrics_torchserve_exports() -> None:
    records = {r["record"] for g in groups() for r in g["rules"] if "record" in r}
    known = exported_metrics() | EXTERNAL_METRICS | records
    for group in groups():
        for rule in group["rules"]:
            unknown = metric_names(rule["expr"]) - known
            assert not unknown, f"{rule.get('alert') or rule.get('record')}: unknown {unknown}"


def test_error_ratios_count_every_answer_not_only_the_handlers() -> None:
    """TorchServe answers a full queue (503) and a dead worker (500/507) itself: the handler's
    msde_requests_total never sees them, so the 5xx ratio must come from the frontend."""
    records = {r["record"]: r["expr"] for g in groups() for r in g["rules"] if "record" in r}
    assert "Requests5XX" in records["msde:responses_5xx:rate5m"]
    assert "ts_inference_requests_total" in records["msde:requests:rate5m"]
    alerts = {r["alert"]: r["expr"] for g in groups() for r in g["rules"] if "alert" in r}
    for alert in ("MsdeHigh5xxRate", "MsdeRequestsFailedOutsideHandler"):
        assert "msde_requests_total" not in alerts[alert]
        assert "msde:requests:rate5m" in alerts[alert]


def test_adapter_rule_reads_a_series_torchserve_exports() -> None:
    adapter = yaml.safe_load((REPO / "deploy" / "prometheus" / "adapter-rules.yaml").read_text())
    for rule in adapter["rules"]:
        series = rule["seriesQuery"].split("{")[0]
        assert series in exported_metrics()
