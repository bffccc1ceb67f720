"""KServe InferenceService and the TorchServe config it loads (the live v1 request test is in
tests/e2e/test_kserve_v1.py)."""

from __future__ import annotations

import json

import yaml

from tests.deploy.tooling import REPO, properties

KSERVE = REPO / "deploy" / "kserve"


def test_inference_service_uses_the_torchserve_predictor_with_v1() -> None:
    isvc = yaml.safe_load((KSERVE / "inferenceservice.yaml").read_text())
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert isvc["kind"] == "InferenceService"
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "pytorch"
    assert model["protocolVersion"] == "v1"
    assert [p["containerPort"] for p in model["ports"]] == [8080]
    assert model["securityContext"]["allowPrivilegeEscalation"] is False
    assert model["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert "namespace" not in isvc["metadata"]


def test_kserve_torchserve_config_serves_our_archive_without_an_envelope() -> None:
    props = properties(KSERVE / "config.properties")
    # the KServe wrapper owns 8080 and forwards to TorchServe's inference address
    assert props["inference_address"].endswith(":8085")
    assert props["management_address"].startswith("http://127.0.0.1:")
    assert props["model_store"] == "/mnt/models/model-store"
    # the handler reads {"instances": [...]}; TorchServe's kserve envelope would keep only
    # the first request of a batch
    assert "service_envelope" not in props
    snapshot = json.loads(props["model_snapshot"])
    (versions,) = snapshot["models"].values()
    (entry,) = versions.values()
    assert entry["marName"] == "msde.mar"
    model_config = yaml.safe_load((REPO / "deploy" / "model-config.yaml").read_text())
    for key in ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout"):
        assert entry[key] == model_config[key], key
