"""deploy/entrypoint.sh outside Docker: the image's (and `make serve`'s) script, with the
local config deploy/config.properties, on free loopback ports.

It must bring TorchServe up so that the readiness probe passes (model loaded and warmed up),
and on SIGTERM drain: readiness fails at once, the request in flight completes, and the
script exits 0 within the pod's grace period with no TorchServe process left behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import requests

from testkit.server import free_port, isolated_ports
from testkit.imaging import encode

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
ENTRYPOINT = REPO / "deploy" / "entrypoint.sh"
HEALTHCHECK = REPO / "deploy" / "healthcheck.py"
DRAIN_S, STOP_S = 30, 20
GRACE_S = 75  # deploy/k8s/base/deployment.yaml terminationGracePeriodSeconds


@dataclass
class Entrypoint:
    process: subprocess.Popen[bytes]
    inference: str
    work_dir: Path
    log: Path
    # (TorchServe's /ping said Healthy, our readiness verdict) seen while starting
    startup: list[tuple[bool, int]] = field(default_factory=list)

    def ping_healthy(self) -> bool:
        try:
            r = requests.get(f"{self.inference}/ping", timeout=5)
            return r.status_code == 200 and r.json().get("status") == "Healthy"
        except (requests.RequestException, ValueError):
            return False

    def probe(self, check: str) -> int:
        return subprocess.run(
            [sys.executable, str(HEALTHCHECK), check, "--quiet", "--work-dir", str(self.work_dir)],
            capture_output=True, timeout=30, check=False,
        ).returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]


@pytest.fixture(scope="module")
def entrypoint(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Entrypoint]:
    root = tmp_path_factory.mktemp("entrypoint")
    ports = [free_port() for _ in range(3)]
    env = dict(
        os.environ,
        MSDE_TS_CONFIG="deploy/config.properties",  # relative, as `make serve` passes it
        MSDE_MODEL_STORE=str(model_store),
        MSDE_MODELS="msde=msde.mar",
        MSDE_LOG_DIR=str(root / "logs"),
        MSDE_INFERENCE_ADDRESS=f"http://127.0.0.1:{ports[0]}",
        MSDE_MANAGEMENT_ADDRESS=f"http://127.0.0.1:{ports[1]}",
        MSDE_METRICS_ADDRESS=f"http://127.0.0.1:{ports[2]}",
        MSDE_TORCHSERVE=str(Path(sys.executable).with_name("torchserve")),
        MSDE_DRAIN_TIMEOUT_S=str(DRAIN_S),
        MSDE_STOP_TIMEOUT_S=str(STOP_S),
        MSDE_TS_PROPERTIES=";".join(f"{k}={v}" for k, v in isolated_ports().items()),
        TS_DISABLE_SYSTEM_METRICS="true",
    )
    log = root / "entrypoint.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(["bash", str(ENTRYPOINT)], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    ep = Entrypoint(proc, f"http://127.0.0.1:{ports[0]}", root / "logs" / "run", log)
    try:
        deadline = time.monotonic() + 240
        while True:
            healthy = ep.ping_healthy()
            ep.startup.append((healthy, ep.probe("ready")))
            if ep.startup[-1][1] == 0:
                break
            assert proc.poll() is None, f"entrypoint exited {proc.returncode}\n{ep.output()}"
            assert time.monotonic() < deadline, f"never ready\n{ep.output()}"
            time.sleep(0.5)
        yield ep
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        pgid_file = ep.work_dir / "torchserve.pgid"
        if pgid_file.exists():  # TorchServe runs in its own session: none of it may survive
            try:
                os.killpg(int(pgid_file.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


def in_flight(ep: Entrypoint) -> int:
    import importlib.util

    spec = importlib.util.spec_from_file_location("msde_healthcheck_e2e", HEALTHCHECK)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    port = int(ep.inference.rsplit(":", 1)[1])
    count = module.in_flight(port)
    assert count is not None, "ss (iproute2) is needed to observe in-flight requests"
    return int(count)


def test_entrypoint_renders_config_from_the_local_one(entrypoint: Entrypoint) -> None:
    rendered = (entrypoint.work_dir / "config.properties").read_text()
    assert f"inference_address={entrypoint.inference}\n" in rendered
    assert f"metrics_config={REPO}/deploy/metrics.yaml\n" in rendered  # made absolute
    assert "load_models=msde=msde.mar\n" in rendered


def test_not_ready_while_loading_although_ping_says_healthy(entrypoint: Entrypoint) -> None:
    """/ping answers Healthy before the model's workers are up; readiness does not."""
    assert any(healthy and ready != 0 for healthy, ready in entrypoint.startup), (
        entrypoint.startup
    )
    assert entrypoint.startup[-1][1] == 0


def test_ready_means_model_warmed_up_and_live(entrypoint: Entrypoint) -> None:
    assert entrypoint.probe("ready") == 0
    assert (entrypoint.work_dir / "warm.json").exists()
    assert entrypoint.probe("live") == 0
    r = requests.get(f"{entrypoint.inference}/ping", timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "Healthy"


def test_sigterm_drains_in_flight_request_and_exits_zero(
    entrypoint: Entrypoint, astronaut: np.ndarray
) -> None:
    # a large photo: decoding and detection keep the request in flight long enough to see it
    big = encode(np.ascontiguousarray(np.tile(astronaut, (4, 4, 1))), quality=95)
    answers: list[requests.Response | BaseException] = []

    def predict() -> None:
        try:
            answers.append(requests.post(f"{entrypoint.inference}/predictions/msde", data=big,
                                         timeout=120))
        except BaseException as exc:  # reported by the assertion below
            answers.append(exc)

    client = threading.Thread(target=predict)
    client.start()
    deadline = time.monotonic() + 20
    while in_flight(entrypoint) == 0:
        assert time.monotonic() < deadline and client.is_alive(), "request never seen in flight"
        time.sleep(0.01)

    sent = time.monotonic()
    os.kill(entrypoint.process.pid, signal.SIGTERM)
    marker = entrypoint.work_dir / "draining"
    while not marker.exists():
        assert time.monotonic() - sent < 10, f"no drain started\n{entrypoint.output()}"
        time.sleep(0.01)
    assert entrypoint.probe("ready") == 1  # out of the Service while draining

    client.join(timeout=120)
    rc = entrypoint.process.wait(timeout=GRACE_S)
    elapsed = time.monotonic() - sent
    assert rc == 0, entrypoint.output()
    assert elapsed < GRACE_S
    (answer,) = answers
    assert isinstance(answer, requests.Response), f"in-flight request failed: {answer!r}"
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert len(body["faces"]) >= 1 and body["model"]["name"] == "msde"
    assert "drained: no request in flight" in entrypoint.output()
    with pytest.raises(ProcessLookupError):  # launcher, JVM and workers are all gone
        os.killpg(entrypoint.process.pid, 0)
