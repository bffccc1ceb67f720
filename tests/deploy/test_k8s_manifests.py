"""Kubernetes manifests: kustomize builds, strict schema validation, and the service's rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.tooling import K8S, REPO, by_kind, documents, kustomize, properties, run, tool

# oldest and newest Kubernetes minor the bundled schemas know and we support
KUBERNETES_VERSIONS = ("1.34.0", "1.37.0")
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "InferenceService"}


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return documents(kustomize(K8S))


@pytest.fixture(scope="module")
def queue_overlay() -> list[dict[str, Any]]:
    return documents(kustomize(K8S / "overlays" / "queue-autoscaling"))


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod = by_kind(docs, "Deployment")["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1
    return dict(pod["containers"][0])


def quantity(value: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "m": 1e-3}
    for suffix, factor in units.items():
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value)


@pytest.mark.parametrize("target", ["", "overlays/queue-autoscaling", "overlays/cuda"])
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_built_manifests_pass_kubernetes_validate_strict(
    target: str, version: str, tmp_path: Path
) -> None:
    built = tmp_path / "built.yaml"
    built.write_text(kustomize(K8S / target))
    proc = run([tool("kubernetes-validate"), "--strict", "-k", version, str(built)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    passed = proc.stdout.count(" passed for resource ")
    kinds = [d["kind"] for d in documents(built.read_text())]
    assert passed == len([k for k in kinds if k not in CRD_KINDS])
    # only the CRD kinds (no bundled schema) may go unvalidated
    for line in (proc.stdout + proc.stderr).splitlines():
        if "Couldn't find schema" in line:
            assert any(f"kind {k} " in line for k in CRD_KINDS), line


def test_manifests_are_namespace_agnostic(base: list[dict[str, Any]]) -> None:
    assert all("namespace" not in d["metadata"] for d in base)


def test_config_map_carries_the_pod_config_properties(base: list[dict[str, Any]]) -> None:
    cm = by_kind(base, "ConfigMap")
    deployment = by_kind(base, "Deployment")
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert {"name": "config", "configMap": {"name": cm["metadata"]["name"]}} in volumes
    props = cm["data"]["config.properties"]
    assert props == (K8S / "base" / "config.properties").read_text()
    env = {e["name"]: e.get("value") for e in container(base)["env"]}
    assert env["MSDE_TS_CONFIG"] == "/etc/msde/config.properties"


def test_pod_config_listens_publicly_only_for_inference_and_metrics() -> None:
    props = properties(K8S / "base" / "config.properties")
    assert props["inference_address"] == "http://0.0.0.0:8080"
    assert props["metrics_address"] == "http://0.0.0.0:8082"
    assert props["management_address"] == "http://127.0.0.1:8081"
    assert props["enable_model_api"] == "false"
    assert props["metrics_mode"] == "prometheus"
    # paths inside the image (see Dockerfile)
    assert props["metrics_config"] == "/app/deploy/metrics.yaml"
    assert props["model_store"] == "/app/model_store"


def test_management_port_is_neither_declared_nor_served(base: list[dict[str, Any]]) -> None:
    ports = {p["containerPort"] for p in container(base)["ports"]}
    assert ports == {8080, 8082}
    service = by_kind(base, "Service")
    assert {p["port"] for p in service["spec"]["ports"]} == {8080, 8082}
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {"http", "metrics"}


def test_container_is_locked_down(base: list[dict[str, Any]]) -> None:
    pod = by_kind(base, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = container(base)["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in sc["capabilities"]
    # the only writable places are emptyDirs where TorchServe writes (logs, work dir, tmp)
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = [m for m in container(base)["volumeMounts"] if not m.get("readOnly")]
    assert {m["mountPath"] for m in writable} == {"/var/lib/msde", "/tmp"}
    assert all("emptyDir" in volumes[m["name"]] for m in writable)
    env = {e["name"]: e.get("value") for e in container(base)["env"]}
    assert env["MSDE_LOG_DIR"].startswith("/var/lib/msde/")
    assert env["MSDE_WORK_DIR"].startswith("/var/lib/msde/")


def test_cpu_limit_and_threads_follow_the_archive_workers(base: list[dict[str, Any]]) -> None:
    model_config = yaml.safe_load((REPO / "deploy" / "model-config.yaml").read_text())
    workers = model_config["maxWorkers"]
    threads = model_config["handler"]["threads"]
    resources = container(base)["resources"]
    assert quantity(resources["limits"]["cpu"]) == workers * threads
    assert resources["requests"]["cpu"] == resources["limits"]["cpu"]
    env = {e["name"]: e.get("value") for e in container(base)["env"]}
    assert env["OMP_NUM_THREADS"] == str(threads)
    assert env["MKL_NUM_THREADS"] == str(threads)


def test_memory_request_fits_within_the_limit(base: list[dict[str, Any]]) -> None:
    resources = container(base)["resources"]
    request, limit = (quantity(resources[k]["memory"]) for k in ("requests", "limits"))
    assert 0 < request <= limit


def test_probes_separate_liveness_from_model_readiness(base: list[dict[str, Any]]) -> None:
    c = container(base)
    assert c["livenessProbe"]["httpGet"] == {"path": "/ping", "port": "http"}
    for probe in ("readinessProbe", "startupProbe"):
        command = c[probe]["exec"]["command"]
        assert command[:3] == ["/opt/venv/bin/python", "/app/deploy/healthcheck.py", "ready"]
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120  # model load time


def test_grace_period_outlasts_prestop_drain_and_stop(base: list[dict[str, Any]]) -> None:
    pod = by_kind(base, "Deployment")["spec"]["template"]["spec"]
    c = container(base)
    prestop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert prestop[0] == "sleep"
    env = {e["name"]: e.get("value") for e in c["env"]}
    needed = int(prestop[1]) + int(env["MSDE_DRAIN_TIMEOUT_S"]) + int(env["MSDE_STOP_TIMEOUT_S"])
    assert pod["terminationGracePeriodSeconds"] > needed


def test_replicas_spread_across_nodes(base: list[dict[str, Any]]) -> None:
    deployment = by_kind(base, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    keys = {c["topologyKey"] for c in pod["topologySpreadConstraints"]}
    assert "kubernetes.io/hostname" in keys
    for constraint in pod["topologySpreadConstraints"]:
        labels = constraint["labelSelector"]["matchLabels"]
        assert labels.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_pdb_keeps_a_pod_and_matches_the_deployment(base: list[dict[str, Any]]) -> None:
    pdb = by_kind(base, "PodDisruptionBudget")
    pod_labels = by_kind(base, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["minAvailable"] >= 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    hpa = by_kind(base, "HorizontalPodAutoscaler")
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"]


def test_network_policy_admits_gateway_to_8080_prometheus_to_8082_only(
    base: list[dict[str, Any]],
) -> None:
    policy = by_kind(base, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    pod_labels = by_kind(base, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    rules = policy["spec"]["ingress"]
    ports = sorted(p["port"] for rule in rules for p in rule["ports"])
    assert ports == [8080, 8082]
    for rule in rules:
        assert rule["from"], "a rule without sources would admit everyone"
        assert len(rule["ports"]) == 1
    by_port = {rule["ports"][0]["port"]: rule["from"][0] for rule in rules}
    assert "prometheus" in str(by_port[8082]) and "prometheus" not in str(by_port[8080])


def test_hpa_scales_on_cpu_with_autoscaling_v2(base: list[dict[str, Any]]) -> None:
    hpa = by_kind(base, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "msde"}
    metrics = hpa["spec"]["metrics"]
    assert [m["type"] for m in metrics] == ["Resource"]
    assert metrics[0]["resource"]["name"] == "cpu"


def test_queue_overlay_adds_the_adapter_per_pod_metric(
    queue_overlay: list[dict[str, Any]],
) -> None:
    hpa = by_kind(queue_overlay, "HorizontalPodAutoscaler")
    pods = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert len(pods) == 1 and pods[0]["target"]["type"] == "AverageValue"
    adapter = yaml.safe_load((REPO / "deploy" / "prometheus" / "adapter-rules.yaml").read_text())
    produced = {rule["name"]["as"] for rule in adapter["rules"]}
    assert pods[0]["metric"]["name"] in produced
    for rule in adapter["rules"]:
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}  # per-pod metric
        assert "rate(" in rule["metricsQuery"]  # a rate, not the cumulative counter


def test_service_monitor_scrapes_the_service_metrics_port(base: list[dict[str, Any]]) -> None:
    monitor = by_kind(base, "ServiceMonitor")
    service = by_kind(base, "Service")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    assert "metrics" in port_names
    # the alert rules select job="msde": the Prometheus Operator names the job after the Service
    assert service["metadata"]["name"] == "msde"


def test_image_is_set_in_one_place(base: list[dict[str, Any]]) -> None:
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    (image,) = kustomization["images"]
    assert container(base)["image"] == f"{image['name']}:{image['newTag']}"


def test_cuda_overlay_runs_the_cuda_image_of_the_base_tag_with_one_gpu() -> None:
    base_tag = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())["images"][0]
    cuda = documents(kustomize(K8S / "overlays" / "cuda"))
    c = container(cuda)
    assert c["image"] == f"msde:{base_tag['newTag']}-cuda"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # everything else is the base pod
    base = container(documents(kustomize(K8S)))
    assert {k: v for k, v in c.items() if k not in ("image", "resources")} == {
        k: v for k, v in base.items() if k not in ("image", "resources")}
