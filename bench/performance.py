"""`make bench`: msde against stock TorchServe, in one process tree and one run.

1. the raw student forward (batch 1 and 8) and its variants (freeze, channels-last, int8);
2. the in-process pipeline per stage (decode, detect, crop, forward, postprocess);
3. the stock ``image_classifier`` handler with a ResNet-18 at 224 px, in its own throwaway
   virtual environment, tried in several configurations; the best one is the peer;
4. the real service (TorchServe with the msde archive) and the peer, alternated for
   ``--repeats`` rounds at each concurrency, on the same 20 one-face 640x480 photos with
   the same client (``bench/client.py``); medians over the rounds are reported;
5. the worst-case memory bench (``bench/memory.py``).

Other programs' CPU use is measured in every window (``bench/cpu.py``); when it exceeds
``--max-foreign`` cores the run refuses to write figures unless ``--allow-busy`` (then the
report says "under load"). Writes the results block of docs/performance.md and
docs/performance.json. ``--tune`` also measures msde's serving configurations (the
tuning table).

Run:  python bench/performance.py [--repeats 3] [--seconds 8] [--tune] [--allow-busy]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import io
import logging
import platform
import signal
import statistics
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import requests
import torch
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.client import Payload, Window, closed_loop  # noqa: E402
from bench.cpu import idle_foreign_load  # noqa: E402
from bench.memory import run_memory_bench  # noqa: E402
from bench.peer import MODEL_NAME as PEER_NAME  # noqa: E402
from bench.peer import build_peer_archive, make_peer_venv  # noqa: E402
from bench.report import DOC, JSON_DOC, write_docs  # noqa: E402
from bench.stages import (  # noqa: E402
    face_batch,
    forward_variants,
    load_serving,
    pipeline_stages,
    student_metadata,
    unpack,
)
from testkit.imaging import encode  # noqa: E402
from testkit.photos import one_face_photos  # noqa: E402
from testkit.server import ServedModel, start_server  # noqa: E402

LOG = logging.getLogger("bench.performance")
CONCURRENCY = (1, 8, 32, 64)


@dataclass(frozen=True)
class ServeConfig:
    """Workers, torch threads per worker and TorchServe batching of one server."""

    name: str
    workers: int
    threads: int
    batch: int = 1
    delay_ms: int = 0


# TorchServe's own default (one worker per core, each using every core) is left out: it
# oversubscribes the cores and collapses (issue #12), and a collapsed run takes minutes.
PEER_CONFIGS = (
    ServeConfig("2 workers x 1 thread", 2, 1),
    ServeConfig("1 worker x 2 threads", 1, 2),
    ServeConfig("2 workers x 1 thread, batch 8 / 5 ms", 2, 1, 8, 5),
)
MSDE_TUNING = (
    ServeConfig("2 x 1, batch 8 / 20 ms (before)", 2, 1, 8, 20),
    ServeConfig("2 x 1, batch 1", 2, 1, 1, 0),
    ServeConfig("2 x 1, batch 4 / 2 ms", 2, 1, 4, 2),
    ServeConfig("3 x 1, batch 1", 3, 1, 1, 0),
    ServeConfig("1 x 2, batch 1", 1, 2, 1, 0),
)


@dataclass
class Server:
    """A running server, what it serves and how its answers count faces."""

    label: str
    served: ServedModel
    faces_in: Any
    description: dict[str, Any]
    windows: dict[int, list[Window]] = field(default_factory=dict)


# -- archives --------------------------------------------------------------------------
def msde_archive(requested: Path, workdir: Path) -> tuple[Path, str]:
    """The default archive when it exists; else the real architecture, untrained."""
    if requested.exists():
        return requested, f"{requested.relative_to(REPO) if requested.is_relative_to(REPO) else requested}"
    from handler.contract import ModelMetadata
    from training.archive import build_archive
    from training.models import create_student, default_input_spec

    LOG.warning("%s is missing: serving an UNTRAINED mini_xception (same speed, "
                "meaningless answers); `make model` builds the real one", requested)
    spec = default_input_spec("mini_xception")
    meta = ModelMetadata(version="0.0.0-untrained", architecture="mini_xception",
                         input_size=spec.input_size, mean=list(spec.mean), std=list(spec.std),
                         crop=spec.crop, trained_on="nothing: random weights (bench fallback)")
    torch.manual_seed(0)
    scripted = torch.jit.script(create_student("mini_xception").eval())
    workdir.mkdir(parents=True, exist_ok=True)
    pt = workdir / "msde_student.pt"
    torch.jit.save(scripted, str(pt), _extra_files={"metadata.json": meta.to_json()})
    return build_archive(pt, workdir / "store"), "untrained mini_xception (no model_store/msde.mar)"


def with_config(mar: Path, out_dir: Path, cfg: ServeConfig) -> Path:
    """A copy of the msde archive whose model-config.yaml says ``cfg``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / mar.name
    with zipfile.ZipFile(mar) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "model-config.yaml":
                config = yaml.safe_load(data) or {}
                config.update(minWorkers=cfg.workers, maxWorkers=cfg.workers,
                              batchSize=cfg.batch, maxBatchDelay=cfg.delay_ms)
                config.setdefault("handler", {})["threads"] = cfg.threads
                data = yaml.safe_dump(config, sort_keys=False).encode()
            dst.writestr(item, data)
    return out


def archive_serving_config(mar: Path) -> dict[str, Any]:
    with zipfile.ZipFile(mar) as z:
        config = yaml.safe_load(z.read("model-config.yaml")) or {}
    return {k: config.get(k) for k in ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay")
            } | {"threads": (config.get("handler") or {}).get("threads")}


# -- servers ---------------------------------------------------------------------------
def start_msde(mar: Path, workdir: Path, photo: Payload) -> tuple[ServedModel, float]:
    """Start and time command -> first 200 (the cold start)."""
    t0 = time.monotonic()
    served = start_server(mar.parent, workdir, archive=mar.name, wait_ready=False)
    while True:
        try:
            answer = requests.post(served.predictions_url(), data=photo.body, timeout=30)
            if answer.status_code == 200:
                return served, time.monotonic() - t0
        except requests.RequestException:
            pass
        if served.process.poll() is not None or time.monotonic() - t0 > 300:
            served.stop()
            raise RuntimeError("msde did not answer 200\n" + served.log_tail())
        time.sleep(0.1)


def start_peer(python: Path, store: Path, workdir: Path, cfg: ServeConfig) -> ServedModel:
    models = {PEER_NAME: {"1.0": {"defaultVersion": True, "marName": f"{PEER_NAME}.mar",
                                  "minWorkers": cfg.workers, "maxWorkers": cfg.workers,
                                  "batchSize": cfg.batch, "maxBatchDelay": cfg.delay_ms,
                                  "responseTimeout": 120}}}
    env = {"OMP_NUM_THREADS": str(cfg.threads)}
    return start_server(store, workdir, model_name=PEER_NAME, archive=f"{PEER_NAME}.mar",
                        python=python, env=env,
                        extra_config={"models": json.dumps(models),
                                      "default_workers_per_model": str(cfg.workers)})


def describe(served: ServedModel) -> dict[str, Any]:
    r = requests.get(f"{served.management}/models/{served.model_name}", timeout=10)
    d = r.json()[0]
    return {"batchSize": d.get("batchSize"), "maxBatchDelay": d.get("maxBatchDelay"),
            "workers": len(d.get("workers", []))}


def worker_memory_mib(served: ServedModel) -> list[dict[str, int]]:
    """RSS, PSS and USS of each worker: RSS counts the shared libraries (torch alone maps
    ~440 MiB of them) in every worker, USS only what the worker alone holds."""
    out = []
    for w in served.workers():
        try:
            info = psutil.Process(int(w["pid"])).memory_full_info()
        except (psutil.NoSuchProcess, KeyError, ValueError):
            continue
        out.append({k: round(getattr(info, k) / 2**20) for k in ("rss", "pss", "uss")})
    return sorted(out, key=lambda m: m["rss"])


def msde_faces(body: Any) -> int:
    """Faces answered, up to the one each photo holds: a false detection (the detector finds
    a second, weak "face" on the astronaut's suit at some scales) is no face served."""
    return min(len(body["faces"]), 1)


def peer_faces(body: Any) -> int:
    """The classifier answers one label set per photo; each photo holds one face."""
    return 1


def measure(server: Server, payloads: list[Payload], c: int, seconds: float) -> Window:
    w = closed_loop(server.served.predictions_url(), payloads, concurrency=c, seconds=seconds,
                    faces_in=server.faces_in)
    server.windows.setdefault(c, []).append(w)
    s = w.summary()
    LOG.info("%-5s c=%-2d %7.1f req/s %7.1f faces/s p50 %6.1f ms p99 %6.1f ms err %d "
             "cpu %.0f%% (foreign %.2f cores)", server.label, c, s["req_per_s"],
             s["faces_per_s"], s["p50_ms"], s["p99_ms"], s["errors"],
             100 * s["cpu"]["busy_fraction"], s["cpu"]["foreign_cores"])
    return w


def search(label: str, configs: tuple[ServeConfig, ...], start: Any, faces_in: Any,
           payloads: list[Payload], seconds: float, levels: tuple[int, ...]
           ) -> list[dict[str, Any]]:
    """Each configuration once at ``levels``; rows for the tuning table."""
    rows = []
    for cfg in configs:
        served = start(cfg)
        try:
            server = Server(label, served, faces_in, describe(served))
            for c in levels:
                measure(server, payloads, c, seconds)
            rows.append({"config": cfg.name, "served_as": server.description,
                         **{f"c{c}": server.windows[c][0].summary() for c in levels}})
        finally:
            served.stop()
    return rows


def median_summary(windows: list[Window]) -> dict[str, Any]:
    rows = [w.summary() for w in windows]
    out: dict[str, Any] = {"concurrency": rows[0]["concurrency"], "rounds": len(rows)}
    for key in ("req_per_s", "faces_per_s", "p50_ms", "p90_ms", "p99_ms"):
        out[key] = round(statistics.median(r[key] for r in rows), 1)
    out["errors"] = sum(r["errors"] for r in rows)
    out["requests"] = sum(r["requests"] for r in rows)
    out["cpu_busy"] = round(statistics.median(r["cpu"]["busy_fraction"] for r in rows), 3)
    out["foreign_cores_max"] = round(max(r["cpu"]["foreign_cores"] for r in rows), 3)
    return out


# -- targets ---------------------------------------------------------------------------
def targets(msde: dict[int, dict[str, Any]], peer: dict[int, dict[str, Any]],
            stages: dict[str, float], cold_start_s: float,
            workers: list[dict[str, int]]) -> list[dict[str, Any]]:
    def row(name: str, value: str, met: bool) -> dict[str, Any]:
        return {"target": name, "measured": value, "met": bool(met)}

    out = []
    for c in (8, 32):
        ratio = msde[c]["faces_per_s"] / max(peer[c]["faces_per_s"], 1e-9)
        out.append(row(f"faces/s at c={c} >= 2x stock", f"{ratio:.2f}x", ratio >= 2.0))
    ratio = msde[1]["p50_ms"] / stages["total"]
    out.append(row("p50 at c=1 <= 1.3x in-process time of one image",
                   f"{msde[1]['p50_ms']:.1f} ms / {stages['total']:.1f} ms = {ratio:.2f}x",
                   ratio <= 1.3))
    ratio = msde[8]["p99_ms"] / msde[8]["p50_ms"]
    out.append(row("p99 <= 2x p50 at c=8", f"{ratio:.2f}x", ratio <= 2.0))
    out.append(row("CPU busy at c=8 (>= 90% of all cores)", f"{100 * msde[8]['cpu_busy']:.0f}%",
                   msde[8]["cpu_busy"] >= 0.9))
    levels = sorted(msde)
    worst = min(msde[c]["req_per_s"] / max(msde[p]["req_per_s"] for p in levels if p <= c)
                for c in levels)
    out.append(row("no throughput collapse 1..64 (each >= 90% of the best below it)",
                   f"worst {100 * worst:.0f}%", worst >= 0.9))
    rss, uss = max(w["rss"] for w in workers), max(w["uss"] for w in workers)
    out.append(row("worker RSS <= 600 MB (after the rounds)", f"RSS {rss} MiB (USS {uss} MiB)",
                   rss * 2**20 <= 600e6))
    out.append(row("cold start <= 20 s", f"{cold_start_s:.1f} s", cold_start_s <= 20.0))
    return out


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                .splitlines() if line.startswith("model name")), platform.processor())
    mem = psutil.virtual_memory().total / 2**30
    return (f"{psutil.cpu_count()} cores ({cpu}), {mem:.0f} GiB, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}, torch {torch.__version__}"
            f", no GPU" if not torch.cuda.is_available() else
            f"GPU {torch.cuda.get_device_name(0)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=REPO / "model_store" / "msde.mar")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    parser.add_argument("--max-foreign", type=float, default=0.2,
                        help="cores other programs may use before the run is refused")
    parser.add_argument("--allow-busy", action="store_true",
                        help="write the figures even when the machine was busy (marked)")
    parser.add_argument("--tune", action="store_true", help="also measure msde configurations")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory bench")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # SIGTERM (a timeout, Ctrl-C in make) unwinds like an exception: every server is stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    wall0 = time.monotonic()
    idle = idle_foreign_load()
    LOG.info("before starting: other programs use %.2f cores", idle.foreign)
    if idle.foreign > args.max_foreign and not args.allow_busy:
        print(f"refused: the machine is busy ({idle.foreign:.2f} cores used by other programs; "
              f"limit {args.max_foreign}). Rerun when it is quiet, or pass --allow-busy.")
        return 3
    photos = [Payload(encode(p, "JPEG", quality=90)) for p in one_face_photos(20)]
    levels = tuple(sorted(set(args.concurrency)))
    with tempfile.TemporaryDirectory(prefix="msde-bench-") as tmp:
        root = Path(tmp)
        mar, source = msde_archive(args.archive, root / "fallback")
        # 1-2: in process
        model_dir = unpack(mar, root / "unpacked")
        meta = student_metadata(model_dir)
        pipeline = load_serving(model_dir)
        torch.set_num_threads(pipeline.config.threads)
        decoded = [np.asarray(Image.open(io.BytesIO(p.body)).convert("RGB")) for p in photos]
        faces = face_batch(pipeline, decoded)
        forward = forward_variants(pipeline.model, meta, faces, reps=100)
        stages = pipeline_stages(pipeline, [p.body for p in photos], reps=60)
        LOG.info("student forward %s; stages %s", forward, stages)
        del pipeline
        # 3: the peer and its best configuration
        python = make_peer_venv(root / "peer-venv")
        peer_store = root / "peer-store"
        build_peer_archive(root / "peer-build", peer_store)
        n = iter(range(1000))
        peer_rows = search("stock", PEER_CONFIGS,
                           lambda cfg: start_peer(python, peer_store, root / f"p{next(n)}", cfg),
                           peer_faces, photos, args.seconds, (8, 32))
        best = max(range(len(PEER_CONFIGS)), key=lambda i: peer_rows[i]["c8"]["faces_per_s"]
                   + peer_rows[i]["c32"]["faces_per_s"])
        tuning = None
        if args.tune:
            tuning = search("msde", MSDE_TUNING,
                            lambda cfg: start_msde(with_config(mar, root / f"t{next(n)}", cfg),
                                                   root / f"m{next(n)}", photos[0])[0],
                            msde_faces, photos, args.seconds, (1, 8, 32, 64))
        # 4: alternated rounds
        with contextlib.ExitStack() as running:
            served_msde, cold = start_msde(mar, root / "msde", photos[0])
            running.callback(served_msde.stop)
            served_peer = start_peer(python, peer_store, root / "stock", PEER_CONFIGS[best])
            running.callback(served_peer.stop)
            servers = {"msde": Server("msde", served_msde, msde_faces, describe(served_msde)),
                       "stock": Server("stock", served_peer, peer_faces, describe(served_peer))}
            servers["stock"].description["config"] = PEER_CONFIGS[best].name
            servers["msde"].description |= archive_serving_config(mar)
            for r in range(args.repeats):
                order = ["msde", "stock"] if r % 2 == 0 else ["stock", "msde"]
                for name in order:
                    for c in levels:
                        measure(servers[name], photos, c, args.seconds)
            memory_after = worker_memory_mib(served_msde)
        memory = None if args.no_memory else run_memory_bench(mar, root / "memory")
    service = {name: {c: median_summary(s.windows[c]) for c in levels}
               for name, s in servers.items()}
    foreign = max(row["foreign_cores_max"] for s in service.values() for row in s.values())
    result = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python bench/performance.py", *(argv or sys.argv[1:])]),
        "machine": {"description": machine(), "quiet": foreign <= args.max_foreign,
                    "foreign_cores_max": foreign, "foreign_cores_before": round(idle.foreign, 3)},
        "student": {"source": source, "architecture": meta.architecture, "version": meta.version,
                    "trained_on": meta.trained_on},
        "repeats": args.repeats, "seconds": args.seconds,
        "servers": {k: s.description for k, s in servers.items()},
        "service": service, "stages": stages, "forward": forward, "peer_search": peer_rows,
        "cold_start_s": round(cold, 1), "worker_memory_mib": memory_after, "memory": memory,
        "wall_s": round(time.monotonic() - wall0),
    }
    result["targets"] = targets(service["msde"], service["stock"], stages, cold, memory_after)
    print(json.dumps({k: result[k] for k in ("machine", "service", "targets")}, indent=1))
    if not result["machine"]["quiet"] and not args.allow_busy:
        print(f"refused: other programs used up to {foreign:.2f} cores during the windows; "
              "nothing written. Rerun when the machine is quiet, or pass --allow-busy.")
        return 3
    write_docs(result, tuning)
    print(f"wrote {DOC.relative_to(REPO)} and {JSON_DOC.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
