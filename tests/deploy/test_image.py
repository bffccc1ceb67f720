"""The built image, run as a user deploys it (`make image-test`; marker `image`, not in
`make test`: it needs a Docker engine and an image from `make image`).

The container gets what deploy/k8s/base/deployment.yaml gives the pod: its env, its
ConfigMap's config.properties, a read-only root with tmpfs only at the emptyDir mounts, the
non-root user, all capabilities dropped, no privilege escalation, the CPU and memory
limits. Only the listen addresses move, to free loopback ports (`--network host`), so the
container runs beside other servers and nothing leaves the machine.

Checks: readiness goes from not-ready to ready; a face photo, a masked photo and a garbage
body are answered exactly as the bare-metal server answers them with the same archive (taken
out of the image); the metrics endpoint has our metrics; Docker's HEALTHCHECK says healthy;
SIGTERM with requests in flight drains them (all 200) and exits 0 within the grace period;
no layer holds the CA the build was given as a secret. Figures (size, cold start, drain) go
to logs/image-test.json and are printed, never asserted.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tarfile
import threading
import time
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from tests.deploy.tooling import K8S, REPO, by_kind, documents, kustomize
from testkit.server import free_port, start_server
from testkit.imaging import encode

pytestmark = pytest.mark.image

VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
RECORD = REPO / "logs" / "image-test.json"
UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def docker_cli() -> str:
    found = shutil.which(os.environ.get("DOCKER", "docker"))
    if found is None:
        pytest.fail("docker not found: install Debian's docker.io and start dockerd")
    return found


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([docker_cli(), *args], capture_output=True, text=True,
                          timeout=timeout, check=False)
    if check:
        assert proc.returncode == 0, f"docker {' '.join(args[:3])}: {proc.stderr[-2000:]}"
    return proc


def quantity(value: str) -> int:
    for suffix, factor in UNITS.items():
        if value.endswith(suffix):
            return int(float(value[: -len(suffix)]) * factor)
    return int(value)


@pytest.fixture(scope="module")
def record() -> Iterator[dict[str, Any]]:
    figures: dict[str, Any] = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    yield figures
    RECORD.parent.mkdir(exist_ok=True)
    RECORD.write_text(json.dumps(figures, indent=2) + "\n")
    print("\nimage-test figures:", json.dumps(figures, indent=2))


@pytest.fixture(scope="module")
def image(record: dict[str, Any]) -> dict[str, Any]:
    tag = os.environ.get("MSDE_IMAGE", f"msde:{VERSION}")
    proc = docker("image", "inspect", tag, check=False)
    if proc.returncode != 0:
        pytest.fail(f"image {tag} not found: run `make image` first")
    (info,) = json.loads(proc.stdout)
    torch = docker("run", "--rm", "--network", "none", "--entrypoint", "/opt/venv/bin/python",
                   tag, "-c", "import torch; print(torch.__version__)").stdout.strip()
    record.update(image=tag, size_mb=round(info["Size"] / 1e6), torch=torch,
                  variant=info["Config"]["Labels"].get("io.msde.variant"))
    return dict(info, tag=tag)


@pytest.fixture(scope="module")
def pod() -> dict[str, Any]:
    """The Deployment's pod spec and the ConfigMap it mounts, as kustomize builds them."""
    docs = documents(kustomize(K8S))
    spec = by_kind(docs, "Deployment")["spec"]["template"]["spec"]
    return {"spec": spec, "config": by_kind(docs, "ConfigMap")["data"],
            "grace_s": spec["terminationGracePeriodSeconds"]}


@pytest.fixture(scope="module")
def archive(image: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The very archive the image serves, copied out of it."""
    store = tmp_path_factory.mktemp("image_store")
    name = f"msde-archive-{uuid.uuid4().hex[:8]}"
    docker("create", "--name", name, image["tag"])
    try:
        docker("cp", f"{name}:/app/model_store/msde.mar", str(store / "msde.mar"))
    finally:
        docker("rm", name)
    return store


@pytest.fixture(scope="module")
def photos(astronaut: np.ndarray) -> dict[str, bytes]:
    """A face photo, the same face with a synthetic mask, and a body that is no image."""
    from handler.detect import FaceDetector
    from training.assets import fetch
    from training.masks import render_mask

    face = FaceDetector(fetch("blazeface") / "ONNX").detect(astronaut)[0]
    assert face.keypoints is not None
    masked = render_mask(astronaut, face.keypoints, rng=3, style="surgical")
    return {"face": encode(astronaut), "masked": encode(masked.image),
            "garbage": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8}


def answers(predictions_url: str, photos: dict[str, bytes]) -> dict[str, tuple[int, Any]]:
    out = {}
    for name, body in photos.items():
        r = requests.post(predictions_url, data=body, timeout=120)
        out[name] = (r.status_code, r.json())
    return out


@pytest.fixture(scope="module")
def bare_metal(archive: Path, photos: dict[str, bytes],
               tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, Any]]:
    """The bare-metal server's answers, taken before the container starts (so the two never
    compete for the CPU and the container's cold start is measured alone)."""
    served = start_server(archive, tmp_path_factory.mktemp("bare_metal"))
    try:
        return answers(served.predictions_url(), photos)
    finally:
        served.stop()


@dataclass
class Container:
    name: str
    inference: str
    metrics: str
    started: float
    ready_at: float | None = None
    events: dict[str, float] = field(default_factory=dict)

    def exec(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return docker("exec", self.name, *cmd, timeout=timeout, check=False)

    def ready(self) -> bool:
        probe = self.exec("/opt/venv/bin/python", "/app/deploy/healthcheck.py", "ready", "--quiet")
        return probe.returncode == 0

    def inspect(self) -> dict[str, Any]:
        return dict(json.loads(docker("inspect", self.name).stdout)[0])

    def logs(self) -> str:
        proc = docker("logs", "--tail", "80", self.name, check=False)
        return proc.stdout + proc.stderr

    def wait_ready(self, timeout: float = 300) -> float:
        deadline = time.monotonic() + timeout
        while self.ready_at is None:
            assert self.inspect()["State"]["Running"], "container exited:\n" + self.logs()
            assert time.monotonic() < deadline, "never ready:\n" + self.logs()
            if self.ready():
                self.ready_at = time.monotonic()
            else:
                time.sleep(1)
        return self.ready_at - self.started


def run_args(pod: dict[str, Any], config_dir: Path, overrides: dict[str, str]) -> list[str]:
    """`docker run` flags that give the container what the Deployment gives the pod."""
    spec = pod["spec"]
    (main,) = spec["containers"]
    pod_sc, sc = spec["securityContext"], main["securityContext"]
    args = ["--network", "host", "--user", f"{pod_sc['runAsUser']}:{pod_sc['runAsGroup']}",
            "--group-add", str(pod_sc["fsGroup"])]
    if sc["readOnlyRootFilesystem"]:
        args.append("--read-only")
    args += [arg for cap in sc["capabilities"].get("drop", []) for arg in ("--cap-drop", cap)]
    args += [arg for cap in sc["capabilities"].get("add", []) for arg in ("--cap-add", cap)]
    if sc["allowPrivilegeEscalation"] is False:
        args += ["--security-opt", "no-new-privileges"]
    limits = main["resources"]["limits"]
    memory = quantity(limits["memory"])
    args += ["--cpus", str(limits["cpu"]), "--memory", str(memory), "--memory-swap", str(memory)]
    volumes = {v["name"]: v for v in spec["volumes"]}
    for mount in main["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "emptyDir" in volume:  # node-disk scratch in the pod, tmpfs here
            # writable by the pod's user, as fsGroup makes an emptyDir (Docker's tmpfs would
            # take over the image directory's owner and mode)
            size = quantity(volume["emptyDir"]["sizeLimit"])
            owner = f"uid={pod_sc['runAsUser']},gid={pod_sc['fsGroup']}"
            args += ["--tmpfs", f"{mount['mountPath']}:rw,exec,size={size},{owner},mode=0777"]
        elif "configMap" in volume:
            args += ["--volume", f"{config_dir}:{mount['mountPath']}:ro"]
        else:
            raise AssertionError(f"volume {mount['name']} has no container equivalent here")
    env = {e["name"]: e.get("value", "") for e in main["env"]} | overrides
    args += [arg for key, val in env.items() for arg in ("--env", f"{key}={val}")]
    return args


@pytest.fixture(scope="module")
def container(image: dict[str, Any], pod: dict[str, Any], bare_metal: dict[str, Any],
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    config_dir = tmp_path_factory.mktemp("configmap")
    for key, text in pod["config"].items():
        (config_dir / key).write_text(text)
        (config_dir / key).chmod(0o644)
    config_dir.chmod(0o755)
    inference, management, metrics = free_port(), free_port(), free_port()
    overrides = {
        "MSDE_INFERENCE_ADDRESS": f"http://127.0.0.1:{inference}",
        "MSDE_MANAGEMENT_ADDRESS": f"http://127.0.0.1:{management}",
        "MSDE_METRICS_ADDRESS": f"http://127.0.0.1:{metrics}",
        "MSDE_TS_PROPERTIES": f"grpc_inference_port={free_port()};"
                              f"grpc_management_port={free_port()}",
    }
    name = f"msde-image-test-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    docker("run", "--detach", "--name", name, *run_args(pod, config_dir, overrides),
           image["tag"])
    box = Container(name, f"http://127.0.0.1:{inference}", f"http://127.0.0.1:{metrics}", started)
    try:
        yield box
    finally:
        docker("rm", "--force", name, check=False)


def test_runs_as_the_non_root_user_on_a_read_only_root(container: Container,
                                                       pod: dict[str, Any]) -> None:
    assert container.exec("id", "-u").stdout.strip() == "10001"
    denied = container.exec("touch", "/app/written")
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    assert container.exec("touch", "/var/lib/msde/written", "/tmp/written").returncode == 0
    # no capability left, not even in the bounding set
    status = container.exec("cat", "/proc/1/status").stdout
    caps = dict(line.split(":\t") for line in status.splitlines() if line.startswith("Cap"))
    assert int(caps["CapEff"], 16) == 0 and int(caps["CapBnd"], 16) == 0
    host = container.inspect()["HostConfig"]
    assert host["ReadonlyRootfs"] is True and host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert "no-new-privileges" in host["SecurityOpt"]
    limits = pod["spec"]["containers"][0]["resources"]["limits"]
    assert host["Memory"] == quantity(limits["memory"])
    assert host["NanoCpus"] == int(float(limits["cpu"]) * 1e9)


def test_readiness_goes_from_not_ready_to_ready(container: Container,
                                               record: dict[str, Any]) -> None:
    assert container.ready() is False  # TorchServe is still starting: no traffic yet
    # ready = workers up and a warm-up prediction answered 200: `docker run` to first 200
    record["cold_start_to_ready_s"] = round(container.wait_ready(), 1)


def test_answers_are_the_bare_metal_servers(
    container: Container, photos: dict[str, bytes], bare_metal: dict[str, tuple[int, Any]],
    image: dict[str, Any], record: dict[str, Any],
) -> None:
    container.wait_ready()
    got = answers(f"{container.inference}/predictions/msde", photos)
    assert got["face"][0] == 200 and len(got["face"][1]["faces"]) >= 1
    assert got["masked"][0] == 200 and len(got["masked"][1]["faces"]) >= 1
    assert 400 <= got["garbage"][0] < 500 and "error" in got["garbage"][1]
    for name in photos:
        assert_same_answer(got[name], bare_metal[name], name)
    # one version names the release: pyproject, the image label, the served model
    assert got["face"][1]["model"]["version"] == VERSION
    assert image["Config"]["Labels"]["org.opencontainers.image.version"] == VERSION


def assert_same_answer(got: tuple[int, Any], want: tuple[int, Any], name: str) -> None:
    """Equal answers; numbers within 1e-3 (the image may hold another torch build)."""
    assert got[0] == want[0], name
    if got[0] != 200:
        assert got[1]["error"]["code"] == want[1]["error"]["code"], name
        return
    assert got[1]["image"] == want[1]["image"] and got[1]["model"] == want[1]["model"], name
    assert len(got[1]["faces"]) == len(want[1]["faces"]), name
    for g, w in zip(got[1]["faces"], want[1]["faces"], strict=True):
        assert np.allclose(g["box"], w["box"], atol=0.5) and abs(g["score"] - w["score"]) < 1e-3
        assert g["mask"]["label"] == w["mask"]["label"], name
        assert abs(g["mask"]["probability"] - w["mask"]["probability"]) < 1e-3, name
        assert g["expression"]["label"] == w["expression"]["label"], name
        for label, p in w["expression"]["probabilities"].items():
            assert abs(g["expression"]["probabilities"][label] - p) < 1e-3, (name, label)


def test_metrics_endpoint_has_our_metrics(container: Container) -> None:
    container.wait_ready()
    text = requests.get(f"{container.metrics}/metrics", timeout=30).text
    for metric in ("msde_requests_total", "msde_faces_total", "msde_expressions_total",
                   "msde_handler_seconds_bucket", "msde_model_info", "ts_inference_requests_total",
                   "Requests2XX", "Requests4XX"):
        assert f"\n{metric}{{" in text, metric


def test_docker_healthcheck_says_healthy(container: Container, record: dict[str, Any]) -> None:
    container.wait_ready()
    deadline = time.monotonic() + 180  # HEALTHCHECK interval 15 s, start period 120 s
    while (health := container.inspect()["State"]["Health"])["Status"] != "healthy":
        assert health["Status"] != "unhealthy", health["Log"][-3:]
        assert time.monotonic() < deadline, health
        time.sleep(2)
    record["healthy_after_s"] = round(time.monotonic() - container.started, 1)


def test_sigterm_drains_requests_in_flight_and_exits_0(
    container: Container, pod: dict[str, Any], astronaut: np.ndarray, record: dict[str, Any]
) -> None:
    """What the kubelet does after preStop: SIGTERM, then SIGKILL at the end of the grace."""
    container.wait_ready()
    big = base64.b64encode(encode(np.kron(astronaut, np.ones((4, 4, 1), np.uint8)))).decode()
    body = json.dumps({"instances": [{"data": big}] * 4})
    results: list[tuple[int, float]] = []

    def client() -> None:
        try:
            r = requests.post(f"{container.inference}/predictions/msde", data=body,
                              headers={"Content-Type": "application/json"}, timeout=120)
            results.append((r.status_code, time.monotonic()))
        except requests.RequestException as exc:
            results.append((-1, time.monotonic()))
            print("request failed:", exc)

    clients = [threading.Thread(target=client) for _ in range(4)]
    for thread in clients:
        thread.start()
    time.sleep(1.0)  # all sent (16 photos of 2048 px): seconds of work for two workers
    prestop = int(pod["spec"]["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][1])
    grace = pod["grace_s"] - prestop
    term = time.monotonic()
    stop = docker("stop", "--time", str(grace), container.name, timeout=grace + 30)
    stopped = time.monotonic() - term
    for thread in clients:
        thread.join(timeout=120)
    state = container.inspect()["State"]
    logs = container.logs()
    after_term = sum(1 for _, at in results if at > term)
    record["drain"] = {"requests": len(results), "statuses": sorted(s for s, _ in results),
                       "answered_after_sigterm": after_term, "exit_code": state["ExitCode"],
                       "stop_s": round(stopped, 1), "grace_s": grace}
    assert stop.returncode == 0
    assert [s for s, _ in results] == [200] * len(clients), logs
    assert after_term >= 1, "nothing was in flight at SIGTERM: the test proved nothing"
    assert state["ExitCode"] == 0 and stopped < grace, logs
    assert "drained: no request in flight" in logs


def test_no_layer_holds_the_build_ca(image: dict[str, Any], tmp_path: Path) -> None:
    """The proxy CA went in as a BuildKit secret: it must not be in any layer's files."""
    bundle = subprocess.run(["bash", str(REPO / "tools" / "image.sh"), "ca-bundle"],
                            capture_output=True, text=True, check=True).stdout.strip()
    # public: the image's own CA set, and the distribution's on this machine; the rest of
    # the bundle is what was added locally (the proxy's CA)
    public = set(pem_blocks(docker("run", "--rm", "--network", "none", "--entrypoint", "cat",
                                   image["tag"], "/etc/ssl/certs/ca-certificates.crt").stdout))
    for crt in Path("/usr/share/ca-certificates").rglob("*.crt"):
        public |= set(pem_blocks(crt.read_text(errors="replace")))
    private = [pem for pem in pem_blocks(Path(bundle).read_text() if bundle else "")
               if pem not in public]
    print(f"{len(private)} CA certificate(s) of {bundle or 'no bundle'} are not public ones")
    needles = [n for pem in private for n in needles_of(pem)]
    saved = tmp_path / "image.tar"
    docker("save", "--output", str(saved), image["tag"], timeout=600)
    try:
        with tarfile.open(saved) as outer:
            layers = [m for m in outer.getmembers() if m.name.endswith("layer.tar")]
            assert layers
            for layer in layers:
                found = scan_layer(outer.extractfile(layer), needles)  # type: ignore[arg-type]
                assert not found, f"{layer.name} holds the CA in {found}"
    finally:
        saved.unlink()
    secret = docker("run", "--rm", "--network", "none", "--entrypoint", "ls", image["tag"],
                    "/run/secrets", check=False)
    assert secret.returncode != 0 or not secret.stdout.strip()


def pem_blocks(text: str) -> list[str]:
    blocks = text.split("-----BEGIN CERTIFICATE-----")[1:]
    return ["".join(b.split("-----END CERTIFICATE-----")[0].split()) for b in blocks]


def needles_of(pem: str) -> list[bytes]:
    """A stretch of the signature, as PEM text and as DER bytes: either form would give the
    certificate away, and no other certificate shares it (names and keys can be shared
    by a CA's renewed certificate)."""
    der = base64.b64decode(pem)
    last_full_line = (len(pem) // 64 - 1) * 64  # PEM files break the text every 64 chars
    return [pem[last_full_line:last_full_line + 64].encode(), der[-48:]]


def scan_layer(stream: Any, needles: list[bytes]) -> list[str]:
    found = []
    overlap = max((len(n) for n in needles), default=0)
    with tarfile.open(fileobj=stream, mode="r|") as layer:
        for member in layer:
            if not member.isfile() or not needles:
                continue
            reader = layer.extractfile(member)
            assert reader is not None
            tail = b""
            while chunk := reader.read(1 << 22):
                window = tail + chunk
                if any(n in window for n in needles):
                    found.append(member.name)
                    break
                tail = window[-overlap:]
    return found
