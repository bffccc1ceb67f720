"""A real Prometheus (Debian's, loopback, temp dir) scrapes a real TorchServe's metrics port.

Checks through Prometheus' HTTP query API that TorchServe's request metrics and our custom
model metrics arrive under the names the alert rules use, that each counter moves by exactly
what this test sent (the server is shared with other tests, so only deltas are compared),
that the rules from deploy/k8s/base/prometheusrule.yaml evaluate on them (model loaded:
MsdeModelNotLoaded quiet), and that every query of the Grafana dashboard runs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

from testkit.imaging import encode
from testkit.server import ServedModel, free_port
from tests.deploy.tooling import dashboard_queries

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SCRAPE_TEMPLATE = REPO / "deploy" / "prometheus" / "scrape.yaml.in"
RULES = REPO / "deploy" / "k8s" / "base" / "prometheusrule.yaml"


@pytest.fixture(scope="module")
def prometheus(served_model: ServedModel, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus not installed: run `bash tools/install_system_deps.sh`")
    root = tmp_path_factory.mktemp("prometheus")
    target = served_model.metrics.removeprefix("http://")
    config = yaml.safe_load(SCRAPE_TEMPLATE.read_text().replace("@TARGET@", target))
    rules = yaml.safe_load(RULES.read_text())["spec"]
    (root / "msde.rules.yaml").write_text(yaml.safe_dump({"groups": rules["groups"]}))
    config["rule_files"] = [str(root / "msde.rules.yaml")]
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{free_port()}"
    with (root / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(
            [binary, f"--config.file={root / 'prometheus.yml'}",
             f"--storage.tsdb.path={root / 'data'}",
             f"--web.listen-address={url.removeprefix('http://')}"],
            stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (root / "prometheus.log").read_text()[-3000:]
            try:
                if requests.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "prometheus never got ready"
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def query(prometheus: str, promql: str) -> list[dict[str, object]]:
    r = requests.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=10)
    r.raise_for_status()
    body = r.json()
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def value(prometheus: str, promql: str) -> float | None:
    result = query(prometheus, promql)
    return float(result[0]["value"][1]) if result else None  # type: ignore[index]


def wait_for(prometheus: str, promql: str, at_least: float, timeout: float = 60) -> float:
    deadline = time.monotonic() + timeout
    while True:
        got = value(prometheus, promql)
        if got is not None and got >= at_least:
            return got
        assert time.monotonic() < deadline, f"{promql} = {got}, wanted >= {at_least}"
        time.sleep(1)


def settled(prometheus: str, exprs: dict[str, str], timeout: float = 60) -> dict[str, float]:
    """Counter values once they stop moving (earlier tests' requests have all arrived)."""
    deadline = time.monotonic() + timeout
    last = {name: value(prometheus, expr) or 0.0 for name, expr in exprs.items()}
    while True:
        time.sleep(3)
        now = {name: value(prometheus, expr) or 0.0 for name, expr in exprs.items()}
        if now == last:
            return now
        assert time.monotonic() < deadline, f"counters still moving: {last} -> {now}"
        last = now


def moved_by(prometheus: str, promql: str, before: float, delta: float) -> None:
    """The counter reached ``before + delta`` and, two scrapes later, went no further."""
    wait_for(prometheus, promql, before + delta)
    time.sleep(2.5)
    assert value(prometheus, promql) == before + delta, promql


COUNTERS = {
    # TorchServe's frontend: every prediction request routed to the model; every answer by class
    "routed": 'sum(ts_inference_requests_total{job="msde", model_name="msde"})',
    "answers_4xx": 'sum(Requests4XX{job="msde"})',
    # the handler's own
    "handler_200": 'sum(msde_requests_total{job="msde", status="200"})',
    "handler_4xx": 'sum(msde_requests_total{job="msde", status=~"4.."})',
    "faces": 'sum(msde_faces_total{job="msde"})',
    "expressions": 'sum(msde_expressions_total{job="msde"})',
    "no_face": 'sum(msde_requests_no_face_total{job="msde"})',
    "undecodable": 'sum(msde_rejected_inputs_total{job="msde", reason="undecodable_image"})',
    "batches": 'sum(msde_handler_seconds_count{job="msde"})',
}


def test_prometheus_receives_request_and_model_metrics(
    prometheus: str, served_model: ServedModel, astronaut: np.ndarray
) -> None:
    wait_for(prometheus, 'up{job="msde"}', 1)
    wait_for(prometheus, 'msde_model_info{job="msde", ModelName="msde"}', 1)
    before = settled(prometheus, COUNTERS)
    url = served_model.predictions_url()
    face, blank = encode(astronaut), encode(np.zeros((96, 96, 3), np.uint8))
    for payload, status in [(face, 200), (face, 200), (blank, 200), (b"not an image", 400)]:
        assert requests.post(url, data=payload, timeout=120).status_code == status
    # an answer the handler never sees: TorchServe's own 404 for a model it does not serve
    missing = f"{served_model.inference}/predictions/no-such-model"
    assert requests.post(missing, data=face, timeout=30).status_code == 404

    moved_by(prometheus, COUNTERS["routed"], before["routed"], 4)
    moved_by(prometheus, COUNTERS["handler_200"], before["handler_200"], 3)
    moved_by(prometheus, COUNTERS["handler_4xx"], before["handler_4xx"], 1)
    moved_by(prometheus, COUNTERS["answers_4xx"], before["answers_4xx"], 2)  # 400 + the 404
    moved_by(prometheus, COUNTERS["faces"], before["faces"], 2)
    moved_by(prometheus, COUNTERS["expressions"], before["expressions"], 2)
    moved_by(prometheus, COUNTERS["no_face"], before["no_face"], 1)
    moved_by(prometheus, COUNTERS["undecodable"], before["undecodable"], 1)
    batches = wait_for(prometheus, COUNTERS["batches"], before["batches"] + 1)
    assert batches <= before["batches"] + 4  # one observation per batch, at most per request
    wait_for(prometheus, 'sum(Requests2XX{job="msde"})', 3)
    wait_for(prometheus, 'sum(ts_inference_latency_microseconds{job="msde"})', 1)
    wait_for(prometheus, 'count(msde_handler_seconds_bucket{job="msde"})', 2)
    assert value(prometheus, 'msde_model_info{job="msde", ModelName="msde"}') == 1.0
    # labels stay bounded: mask states and expressions come from the model card
    faces = query(prometheus, 'msde_faces_total{job="msde"}')
    states = {r["metric"]["mask_state"] for r in faces}  # type: ignore[index]
    assert states <= {"masked", "unmasked"}


def test_alert_rules_evaluate_on_the_real_metric_names(
    prometheus: str, served_model: ServedModel, astronaut: np.ndarray
) -> None:
    for _ in range(3):
        requests.post(served_model.predictions_url(), data=encode(astronaut), timeout=120)
    wait_for(prometheus, "msde:requests:rate5m", 0.0001)
    wait_for(prometheus, "msde:handler_seconds:p99_5m", 0.0)
    r = requests.get(f"{prometheus}/api/v1/rules", timeout=10).json()
    rules = [rule for g in r["data"]["groups"] for rule in g["rules"]]
    assert rules and all(rule["health"] == "ok" for rule in rules), [
        (rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"
    ]
    firing = query(prometheus, 'ALERTS{alertname=~"MsdeModelNotLoaded|MsdeMetricsAbsent"}')
    assert firing == []


def test_every_dashboard_query_runs_and_answers_where_its_series_exist(
    prometheus: str, served_model: ServedModel, astronaut: np.ndarray
) -> None:
    for _ in range(2):
        requests.post(served_model.predictions_url(), data=encode(astronaut), timeout=120)
    wait_for(prometheus, 'sum(rate(msde_faces_total{job="msde"}[5m]))', 1e-9)
    answered = 0
    for title, expr in dashboard_queries():
        result = query(prometheus, expr)  # asserts the query parses and evaluates
        selectors = re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*\{[^}]*\}", expr)
        if selectors and all(query(prometheus, f"count({s})") for s in selectors):
            assert result, f"{title}: {expr} returned nothing"
            answered += 1
    assert answered >= len(dashboard_queries()) // 2
