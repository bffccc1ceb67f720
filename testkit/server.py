"""Start and stop a real TorchServe on free loopback ports, for end-to-end tests and benches.

Any archive can be served (the benchmark serves the stock ``image_classifier`` beside ours),
by any Python that has TorchServe installed (the stock handler's own virtual environment).

Each server gets its own temp dir (TMPDIR too: TorchServe keeps its pid file there, and two
servers sharing one refuse to start), binds only to 127.0.0.1 and is stopped by SIGTERM to
its whole process group (launcher and JVM), then SIGKILL if it does not stop in time.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
METRICS_YAML = REPO / "deploy" / "metrics.yaml"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def isolated_ports() -> dict[str, str]:
    """gRPC ports and worker socket names of its own, so servers can run side by side.

    Worker sockets are /tmp/.ts.sock.<port> whatever TMPDIR says (the JVM ignores it).
    """
    return {
        "grpc_inference_port": str(free_port()),
        "grpc_management_port": str(free_port()),
        "initial_worker_port": str(20000 + free_port() % 30000),
    }


@dataclass
class ServedModel:
    inference: str
    management: str
    metrics: str
    model_name: str
    model_store: Path
    log_dir: Path
    workdir: Path
    process: subprocess.Popen[bytes]

    def predictions_url(self) -> str:
        return f"{self.inference}/predictions/{self.model_name}"

    def workers(self) -> list[dict[str, object]]:
        r = requests.get(f"{self.management}/models/{self.model_name}", timeout=10)
        r.raise_for_status()
        return list(r.json()[0].get("workers", []))

    def ready(self) -> bool:
        try:
            return any(w.get("status") == "READY" for w in self.workers())
        except (requests.RequestException, ValueError, IndexError, KeyError):
            return False

    def log_tail(self, n: int = 80) -> str:
        out = []
        for name in ("ts_log.log", "model_log.log"):
            path = self.log_dir / name
            if path.exists():
                out.append(f"--- {name}\n" + "\n".join(path.read_text().splitlines()[-n:]))
        return "\n".join(out)

    def stop(self, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        # the JVM may outlive the launcher by a moment; make sure nothing is left behind
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return int(self.process.returncode or 0)


def write_config(
    workdir: Path, model_store: Path, ports: tuple[int, int, int], extra: dict[str, str],
    *, models: str = "msde=msde.mar",
) -> Path:
    inference, management, metrics = ports
    props = {
        "inference_address": f"http://127.0.0.1:{inference}",
        "management_address": f"http://127.0.0.1:{management}",
        "metrics_address": f"http://127.0.0.1:{metrics}",
        "metrics_mode": "prometheus",
        "metrics_config": str(METRICS_YAML),
        "model_store": str(model_store),
        "load_models": models,
        "disable_token_authorization": "true",
        "enable_model_api": "false",
        "install_py_dep_per_model": "false",
        "number_of_netty_threads": "2",
        "netty_client_threads": "2",
        "default_response_timeout": "60",
        "job_queue_size": "64",
        "max_request_size": "20971520",
        "max_response_size": "20971520",
        **isolated_ports(),
    }
    props.update(extra)
    path = workdir / "config.properties"
    path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    return path


def start_server(
    model_store: Path,
    workdir: Path,
    *,
    model_name: str = "msde",
    archive: str = "msde.mar",
    extra_config: dict[str, str] | None = None,
    ready_timeout: float = 240.0,
    wait_ready: bool = True,
    python: Path | None = None,
    env: dict[str, str] | None = None,
) -> ServedModel:
    """TorchServe serving ``model_store/archive`` as ``model_name``, run by ``python``
    (default: this interpreter); ``env`` is added to the server's environment (workers
    inherit it)."""
    workdir.mkdir(parents=True, exist_ok=True)
    ports = (free_port(), free_port(), free_port())
    models = f"{model_name}={archive}"
    config = write_config(workdir, model_store, ports, extra_config or {}, models=models)
    log_dir = workdir / "logs"
    tmp = workdir / "tmp"
    log_dir.mkdir(exist_ok=True)
    tmp.mkdir(exist_ok=True)
    env = dict(os.environ, TMPDIR=str(tmp), LOG_LOCATION=str(log_dir),
               METRICS_LOCATION=str(log_dir), TS_DISABLE_SYSTEM_METRICS="true", **(env or {}))
    # the launcher hands its own interpreter to the JVM, which starts the workers with it
    cmd = [str(python or sys.executable), "-m", "ts.model_server", "--start", "--foreground",
           "--ncs", "--ts-config", str(config), "--model-store", str(model_store),
           "--models", models, "--disable-token-auth"]
    with (workdir / "stdout.log").open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    served = ServedModel(
        inference=f"http://127.0.0.1:{ports[0]}",
        management=f"http://127.0.0.1:{ports[1]}",
        metrics=f"http://127.0.0.1:{ports[2]}",
        model_name=model_name,
        model_store=model_store,
        log_dir=log_dir,
        workdir=workdir,
        process=proc,
    )
    if wait_ready:
        deadline = time.monotonic() + ready_timeout
        while not served.ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                served.stop()
                raise RuntimeError(
                    f"TorchServe did not get ready (exit {proc.returncode})\n"
                    + (workdir / "stdout.log").read_text()[-4000:]
                    + served.log_tail()
                )
            time.sleep(1.0)
    return served
