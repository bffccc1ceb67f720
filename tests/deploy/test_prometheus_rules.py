"""Alert and recording rules: promtool syntax check, promtool unit tests, real metric names."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.tooling import K8S, REPO, by_kind, documents, run, tool

RULE_FILE = "msde.rules.yaml"  # the name deploy/prometheus/alerts.test.yaml loads
# series that come from elsewhere than TorchServe: Prometheus itself and kube-state-metrics
EXTERNAL = {"up", "kube_pod_container_status_restarts_total", "ALERTS"}
PROMQL_WORDS = {
    "sum", "by", "rate", "increase", "changes", "histogram_quantile", "and", "or", "unless",
    "on", "offset", "absent", "without", "group_left", "le", "d", "m", "h", "s", "e6",
}


def groups() -> list[dict[str, Any]]:
    rule = by_kind(documents((K8S / "base" / "prometheusrule.yaml").read_text()), "PrometheusRule")
    return list(rule["spec"]["groups"])


def write_rules(folder: Path) -> Path:
    path = folder / RULE_FILE
    path.write_text(yaml.safe_dump({"groups": groups()}))
    return path


def exported_metrics() -> set[str]:
    """Prometheus names TorchServe gives the metrics in deploy/metrics.yaml."""
    config = yaml.safe_load((REPO / "deploy" / "metrics.yaml").read_text())
    names: set[str] = set()
    for section in ("ts_metrics", "model_metrics"):
        for kind, metrics in config[section].items():
            for metric in metrics:
                names.add(metric["name"])
                if kind == "histogram":
                    names |= {metric["name"] + s for s in ("_bucket", "_sum", "_count")}
    return names


def test_rules_pass_promtool_check(tmp_path: Path) -> None:
    proc = run([tool("promtool"), "check", "rules", str(write_rules(tmp_path))])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_alerts_fire_on_the_promtool_unit_cases(tmp_path: Path) -> None:
    write_rules(tmp_path)
    shutil.copy(REPO / "deploy" / "prometheus" / "alerts.test.yaml", tmp_path / "alerts.test.yaml")
    proc = run([tool("promtool"), "test", "rules", "alerts.test.yaml"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "alert",
    ["MsdeHigh5xxRate", "MsdeP99LatencyHigh", "MsdeWorkerRestarts", "MsdeContainerRestarts",
     "MsdeNoFaceRatioSpike", "MsdeModelNotLoaded"],
)
def test_service_has_alert(alert: str) -> None:
    alerts = {r["alert"]: r for g in groups() for r in g["rules"] if "alert" in r}
    assert alert in alerts
    assert alerts[alert]["labels"]["severity"] in {"page", "warning"}
    assert alerts[alert]["annotations"]["summary"]


def test_rules_only_use_metrics_torchserve_exports() -> None:
    records = {r["record"] for g in groups() for r in g["rules"] if "record" in r}
    known = exported_metrics() | EXTERNAL | records
    for group in groups():
        for rule in group["rules"]:
            expr = re.sub(r'\{[^}]*\}|"[^"]*"|\[[^\]]*\]', " ", rule["expr"])
            expr = re.sub(r"\$\w+", " ", expr)
            for name in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
                if name in PROMQL_WORDS or name in {"namespace", "pod", "le"}:
                    continue
                assert name in known, f"{rule.get('alert') or rule.get('record')}: unknown {name}"


def test_adapter_rule_reads_a_series_torchserve_exports() -> None:
    adapter = yaml.safe_load((REPO / "deploy" / "prometheus" / "adapter-rules.yaml").read_text())
    for rule in adapter["rules"]:
        series = rule["seriesQuery"].split("{")[0]
        assert series in exported_metrics()
