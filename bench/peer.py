"""The peer the service is measured against: stock TorchServe's ``image_classifier`` handler
with a torchvision ResNet-18 at 224 px (random weights: speed does not depend on them).

That handler imports ``captum`` (VisionHandler's explanations), which is no dependency of
this project: the peer runs in a throwaway virtual environment made here, which sees this
environment's torch, torchvision and TorchServe (the same versions, so the comparison is
of the handlers, not of the builds) through a ``.pth`` file and gets ``captum`` from the
package registry.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import sysconfig
from pathlib import Path

import torch
import torchvision

LOG = logging.getLogger(__name__)

CAPTUM = "captum>=0.7"
MODEL_NAME = "resnet18"


def make_peer_venv(root: Path) -> Path:
    """A virtual environment under ``root`` with ``captum``; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    python = root / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; "
                           "print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "msde_project_site.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # captum's own needs (torch, numpy, matplotlib, ...) come from the project's environment
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps",
                    "--disable-pip-version-check", CAPTUM], check=True)
    subprocess.run([str(python), "-c", "import captum.attr, ts.torch_handler.image_classifier"],
                   check=True)
    return python


def build_peer_archive(workdir: Path, store: Path) -> Path:
    """``resnet18.mar``: a scripted ResNet-18 served by the stock ``image_classifier``."""
    workdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = torch.jit.script(torchvision.models.resnet18(weights=None).eval())
    pt = workdir / "resnet18.pt"
    torch.jit.save(model, str(pt))
    store.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "model_archiver.model_packaging",
                    "--model-name", MODEL_NAME, "--version", "1.0",
                    "--serialized-file", str(pt), "--handler", "image_classifier",
                    "--export-path", str(store), "--force"], check=True)
    return store / f"{MODEL_NAME}.mar"
