"""requirements.lock against pyproject.toml and against the environment the tests run in."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

from tests.deploy.tooling import REPO, load_script

lockfile = load_script(REPO / "tools" / "lockfile.py")
# the platform the lock is resolved for (tools/lockfile.py PLATFORM / PYTHON)
LOCKED_FOR = default_environment() | {"sys_platform": "linux", "platform_system": "Linux",
                                      "platform_machine": "x86_64", "python_version": "3.11"}


def project() -> dict[str, object]:
    return dict(tomllib.loads((REPO / "pyproject.toml").read_text())["project"])


def test_lock_was_resolved_from_this_pyproject() -> None:
    assert lockfile.lock_digest() == lockfile.dependency_digest(), (
        "pyproject.toml's dependencies changed since requirements.lock was resolved: "
        "run `make lock` (python tools/lockfile.py compile)"
    )


def test_digest_follows_the_dependency_tables_only(tmp_path: Path) -> None:
    text = (REPO / "pyproject.toml").read_text()
    edited = tmp_path / "pyproject.toml"
    edited.write_text(text.replace('description = "', 'description = "Edited: '))
    assert lockfile.dependency_digest(edited) == lockfile.dependency_digest()
    edited.write_text(text.replace('"pytest>=8"', '"pytest>=8.1"'))
    assert lockfile.dependency_digest(edited) != lockfile.dependency_digest()


def test_every_declared_requirement_is_pinned_inside_its_range() -> None:
    pins = lockfile.read_pins()
    for line in lockfile.requirements(lockfile.extras()):
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(LOCKED_FOR):
            continue
        name = lockfile.canonical(req.name)
        assert name in pins, f"{req.name} is declared but not locked"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"lock pins {name}=={pins[name]}, pyproject wants {req.specifier}"
        )


def test_serving_set_is_the_handlers_dependencies_plus_the_serving_extra() -> None:
    declared = project()
    serving = lockfile.requirements(["serving"])
    optional = declared["optional-dependencies"]
    assert serving == declared["dependencies"] + optional["serving"]  # type: ignore[index, operator]
    names = {lockfile.requirement_name(r) for r in serving}
    assert {"torch", "torchserve", "onnxruntime", "pyyaml"} <= names
    # nothing only training or the tests need goes into the image
    assert not names & {"torchvision", "torch-model-archiver", "pytest", "matplotlib", "h5py"}


def test_cuda_extra_replaces_onnxruntime_with_the_gpu_build() -> None:
    cuda = lockfile.requirements(["serving", "cuda"], drop=frozenset({"onnxruntime"}))
    names = [lockfile.requirement_name(r) for r in cuda]
    assert "onnxruntime" not in names and "onnxruntime-gpu" in names
    assert lockfile.unversioned("onnxruntime-gpu[cuda,cudnn]>=1.31") == "onnxruntime-gpu[cuda,cudnn]"


def test_test_extra_brings_the_serving_and_training_sets() -> None:
    everything = {lockfile.requirement_name(r) for r in lockfile.requirements(["test"])}
    for extra in ("serving", "training"):
        assert {lockfile.requirement_name(r) for r in lockfile.requirements([extra])} <= everything


def test_constraints_can_replace_one_pin_and_keep_the_others() -> None:
    pins = lockfile.read_pins()
    text = lockfile.constraints(pins={"torch": "2.13.0"})
    lines = dict(line.split("==") for line in text.splitlines())
    assert lines["torch"] == "2.13.0"
    assert {k: v for k, v in lines.items() if k != "torch"} == {
        k: v for k, v in pins.items() if k != "torch"}


def test_this_environment_is_the_lock() -> None:
    """`make` installs the test environment from the lock; nothing else may be in it."""
    problems = lockfile.installed_mismatches(lockfile.read_pins(), frozenset({"msde"}))
    assert problems == [], "rebuild the venv (make .venv/.installed): " + "; ".join(problems)
