"""One version names a release: pyproject.toml's. The package, the default model (its
metadata and its archive), the image tag and the manifests carry that one number."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import yaml

import training
from tests.deploy.tooling import K8S, REPO

VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def test_installed_package_is_this_version() -> None:
    assert training.__version__ == VERSION, "pyproject changed: rebuild the venv (make)"


def test_kustomization_deploys_the_image_of_this_version() -> None:
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    (image,) = kustomization["images"]
    assert image["newTag"] == VERSION
    deployment = yaml.safe_load((K8S / "base" / "deployment.yaml").read_text())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"msde:{VERSION}"
    cuda = yaml.safe_load((K8S / "overlays" / "cuda" / "kustomization.yaml").read_text())
    assert cuda["images"][0]["newTag"] == f"{VERSION}-cuda"


def test_docs_name_the_image_of_this_version() -> None:
    for path in ("README.md", "docs/deploy.md", "Dockerfile"):
        tags = re.findall(r"\bmsde:(\d+\.\d+\.\d+)", (REPO / path).read_text())
        assert tags and set(tags) == {VERSION}, f"{path}: {sorted(set(tags))}"


def test_make_tags_the_image_with_this_version() -> None:
    proc = subprocess.run(
        ["make", "--no-print-directory", "-s", "--eval", "show-tag: ; @echo $(IMAGE_TAG)",
         "show-tag"], cwd=REPO, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == f"msde:{VERSION}"


def test_default_model_and_its_archive_carry_this_version(
    scaled_down_build: dict[str, Any],
) -> None:
    mar = Path(scaled_down_build["archive"])
    with zipfile.ZipFile(mar) as archive:
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        student = next(n for n in archive.namelist() if n.endswith(".pt"))
        with zipfile.ZipFile(archive.open(student)) as torchscript:
            meta_name = next(n for n in torchscript.namelist() if n.endswith("metadata.json"))
            metadata = json.loads(torchscript.read(meta_name))
    assert manifest["model"]["modelVersion"] == VERSION
    assert metadata["version"] == VERSION
