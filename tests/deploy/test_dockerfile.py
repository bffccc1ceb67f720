"""The container image's Dockerfile and build context, checked statically. The built image
itself is run and checked by tests/deploy/test_image.py (`make image-test`)."""

from __future__ import annotations

import fnmatch
import re

import yaml

from tests.deploy.tooling import K8S, REPO, by_kind, documents, run, tool

DOCKERFILE = REPO / "Dockerfile"


def instructions(stage: str | None = None) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined; only ``stage`` if given."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out: list[tuple[str, str]] = []
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            current = rest.split()[-1] if " AS " in rest.upper() else None
        if stage is None or current == stage:
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_passes_hadolint() -> None:
    proc = run([tool("hadolint"), "--no-color", str(DOCKERFILE)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_image_is_multi_stage_builder_then_runtime() -> None:
    stages = [args.split()[-1] for word, args in instructions() if word == "FROM"]
    assert stages == ["builder", "runtime"]


def test_runtime_runs_as_the_fixed_non_root_uid_the_deployment_expects() -> None:
    runtime = instructions("runtime")
    uid_arg = next(args for word, args in runtime if word == "ARG" and args.startswith("MSDE_UID"))
    uid = int(uid_arg.split("=")[1])
    user = [args for word, args in runtime if word == "USER"]
    assert user == ["${MSDE_UID}:${MSDE_UID}"] and uid >= 10000
    deployment = by_kind(documents((K8S / "base" / "deployment.yaml").read_text()), "Deployment")
    pod_security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert pod_security["runAsUser"] == uid and pod_security["runAsNonRoot"] is True


def test_runtime_exposes_the_three_torchserve_ports() -> None:
    exposed = [args for word, args in instructions("runtime") if word == "EXPOSE"]
    assert exposed == ["8080 8081 8082"]


def test_healthcheck_checks_model_readiness_not_just_ping() -> None:
    checks = [args for word, args in instructions("runtime") if word == "HEALTHCHECK"]
    assert len(checks) == 1
    assert "healthcheck.py" in checks[0] and '"ready"' in checks[0]
    assert "/ping" not in checks[0]


def test_entrypoint_is_the_script_make_serve_runs() -> None:
    entry = [args for word, args in instructions("runtime") if word == "ENTRYPOINT"]
    assert entry == ['["/app/deploy/entrypoint.sh"]']
    copies = " ".join(args for word, args in instructions("runtime") if word == "COPY")
    assert "deploy/entrypoint.sh" in copies and "deploy/healthcheck.py" in copies


def test_cpu_image_takes_torch_from_the_cpu_index_and_checks_the_variant() -> None:
    builder = " ".join(args for word, args in instructions("builder") if word in ("RUN", "ARG"))
    assert re.search(r"TORCH_INDEX_URL=\S+/whl/cpu\b", builder)
    assert "VARIANT=cpu" in builder
    cpu_branch = builder[builder.index("cpu)"):builder.index("cuda)")]
    assert '--index-url "${TORCH_INDEX_URL}"' in cpu_branch and "torch" in cpu_branch
    assert "torch.version.cuda" in builder and "'+cpu'" in builder


def test_cuda_variant_swaps_onnxruntime_for_the_gpu_build() -> None:
    builder = " ".join(args for word, args in instructions("builder") if word == "RUN")
    cuda_branch = builder[builder.index("cuda)"):builder.index("*)")]
    assert "requirements serving cuda --drop onnxruntime" in cuda_branch
    assert "--index-url" not in cuda_branch  # the default index's torch is the CUDA build


def test_image_installs_the_serving_set_from_the_lock_not_a_second_list() -> None:
    builder = instructions("builder")
    copies = " ".join(args for word, args in builder if word == "COPY")
    for path in ("pyproject.toml", "requirements.lock", "tools/lockfile.py"):
        assert path in copies
    runs = " ".join(args for word, args in builder if word == "RUN")
    assert "lockfile.py requirements serving" in runs
    assert "pip install -c constraints.txt -r requirements.txt" in runs
    assert "lockfile.py check-installed --constraints constraints.txt" in runs
    assert not re.search(r"\s[A-Za-z0-9_.-]+==[0-9]", runs), "a version pinned by hand"


def test_proxy_ca_comes_in_as_a_build_secret_only() -> None:
    text = DOCKERFILE.read_text()
    assert "--mount=type=secret,id=pip_cert" in text
    assert "PIP_CERT=/run/secrets/pip_cert" in text
    copies = " ".join(args for word, args in instructions() if word in ("COPY", "ADD"))
    assert ".crt" not in copies and ".pem" not in copies


def test_runtime_has_no_compilers_and_no_pip_cache() -> None:
    runtime_runs = " ".join(args for word, args in instructions("runtime") if word == "RUN")
    for banned in ("gcc", "g++", "build-essential", "pip install", "-dev "):
        assert banned not in runtime_runs
    assert "rm -rf /var/lib/apt/lists/*" in runtime_runs
    builder_env = " ".join(args for word, args in instructions("builder") if word == "ENV")
    assert "PIP_NO_CACHE_DIR=1" in builder_env


def dockerignore_allows(path: str) -> bool:
    allowed = False
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        if fnmatch.fnmatch(path, pattern.lstrip("!")):
            allowed = negate
    return allowed


def test_dockerignore_admits_exactly_what_the_image_copies() -> None:
    sources: list[str] = []
    for word, args in instructions():
        if word == "COPY" and "--from=" not in args:
            sources += args.split()[:-1]
    mar_default = next(
        args.split("=", 1)[1] for word, args in instructions("builder")
        if word == "ARG" and args.startswith("MAR=")
    )
    sources = [mar_default if s == "${MAR}" else s for s in sources]
    assert sources, "no COPY from the build context"
    for src in sources:
        assert dockerignore_allows(src), f"{src} is copied but excluded by .dockerignore"
    for excluded in (".venv/bin/python", ".git/HEAD", "training/train.py", ".cache/assets/x",
                     "tests/conftest.py", "model_store/build/student.pt", "tools/image.sh"):
        assert not dockerignore_allows(excluded), f"{excluded} would be sent to the builder"


def test_image_default_config_is_the_local_one_with_container_addresses() -> None:
    env = " ".join(args for word, args in instructions("runtime") if word == "ENV")
    assert "MSDE_TS_CONFIG=/app/deploy/config.properties" in env
    assert "MSDE_INFERENCE_ADDRESS=http://0.0.0.0:8080" in env
    assert "MSDE_MANAGEMENT_ADDRESS=http://127.0.0.1:8081" in env  # never beyond the container
    assert "MSDE_METRICS_ADDRESS=http://0.0.0.0:8082" in env
    metrics_config = yaml.safe_load((REPO / "deploy" / "metrics.yaml").read_text())
    assert "model_metrics" in metrics_config  # the file the image ships as metrics_config
