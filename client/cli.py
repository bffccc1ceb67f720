"""``msde-client``: predict, draw, explain and try the page, from the command line.

Exit codes: 0 all answered; 1 some image was refused or failed (the others were done);
2 usage; 3 the service cannot be reached; 4 the model is not loaded or not ready;
5 a token is required or was refused.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from client.api import (
    DEFAULT_MANAGEMENT_URL,
    DEFAULT_MODEL,
    DEFAULT_URL,
    MsdeClient,
    MsdeError,
    Result,
    image_files,
)

LOG = logging.getLogger(__name__)
DRAWN_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
# full-resolution colour: thin coloured lines survive JPEG's chroma subsampling otherwise not
_JPEG = {"quality": 95, "subsampling": 0}
SAVE_OPTIONS: dict[str, dict[str, int]] = {".jpg": _JPEG, ".jpeg": _JPEG,
                                           ".webp": {"quality": 95}}


def _client(args: argparse.Namespace) -> MsdeClient:
    return MsdeClient(args.url, model=args.model, token=args.token,
                      management_url=args.management_url, timeout=args.timeout,
                      retries=args.retries)


def _unique(out_dir: Path, name: str, seen: set[str]) -> Path:
    """``name`` in ``out_dir``, suffixed -1, -2... when this run already wrote it."""
    stem, suffix = Path(name).stem, Path(name).suffix.lower()
    suffix = suffix if suffix in DRAWN_SUFFIXES else ".png"
    candidate, n = f"{stem}{suffix}", 0
    while candidate in seen:
        n += 1
        candidate = f"{stem}-{n}{suffix}"
    seen.add(candidate)
    return out_dir / candidate


def cmd_predict(args: argparse.Namespace) -> int:
    from client.report import format_result, json_line, write_summary

    files = image_files(args.images, recursive=args.recursive)
    if not files:
        print("no images found in " + " ".join(args.images), file=sys.stderr)
        return 1
    client = _client(args)
    progress = not args.no_progress and len(files) > 1 and sys.stderr.isatty()
    results: list[Result] = []
    seen: set[str] = set()
    for result in client.predict_many(files, concurrency=args.concurrency, progress=progress,
                                      detect=not args.no_detect):
        results.append(result)
        print(json_line(result) if args.json else format_result(result), flush=True)
        if args.draw is not None and result.response is not None:
            from client.draw import draw_faces, load_image

            args.draw.mkdir(parents=True, exist_ok=True)
            out = _unique(args.draw, Path(result.source).name, seen)
            drawn = draw_faces(load_image(result.source), result.response.faces)
            drawn.save(out, **SAVE_OPTIONS.get(out.suffix, {}))
            if not args.json:
                print(f"  drawn: {out}")
    failed = sum(1 for r in results if r.error is not None)
    if args.summary is not None:
        rows = write_summary(args.summary, results)
        print(f"summary: {args.summary} ({rows} rows)", file=sys.stderr)
    if len(results) > 1:
        faces = sum(len(r.response.faces) for r in results if r.response is not None)
        print(f"{len(results)} images, {faces} faces, {failed} failed", file=sys.stderr)
    return 1 if failed else 0


def cmd_explain(args: argparse.Namespace) -> int:
    from client.draw import load_image, overlay_heatmap
    from client.report import format_result

    answer = _client(args).explain(args.image, target=args.target, detect=not args.no_detect)
    print(format_result(Result(str(args.image), response=answer)))
    args.out.mkdir(parents=True, exist_ok=True)
    image = load_image(args.image)
    for i, face in enumerate(answer.faces):
        if face.heatmap is None:
            print(f"  face {i}: no heatmap (beyond the per-request cap)")
            continue
        kind = args.target or "heatmap"  # the predicted expression, named in the output
        out = args.out / f"{args.image.stem}.face{i}.{kind}.jpg"
        overlay_heatmap(image, face).save(out, **_JPEG)
        print(f"  face {i}: heatmap of {face.heatmap.target}: {out}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from client.ui import serve

    server = serve(args.url, port=args.port, model=args.model, token=args.token)
    host, port = server.server_address[:2]
    print(f"msde page: http://{host}:{port}/  (forwarding to {args.url}; Ctrl-C stops)",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    client = _client(args)
    print(f"service {client.url}: {client.health()}")
    readiness = client.readiness()
    verdict = "ready" if readiness.ready else "NOT ready"
    print(f"model {readiness.model}: {readiness.ready_workers}/{readiness.workers} workers "
          f"READY ({verdict})")
    return 0 if readiness.ready else 4


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("MSDE_URL", DEFAULT_URL),
                        help="inference API (default: $MSDE_URL or %(default)s)")
    common.add_argument("--model", default=DEFAULT_MODEL)
    common.add_argument("--token", default=os.environ.get("MSDE_TOKEN"),
                        help="TorchServe inference key when token auth is on "
                        "(default: $MSDE_TOKEN)")
    common.add_argument("--management-url", default=DEFAULT_MANAGEMENT_URL,
                        help="management API, for readiness (default: %(default)s)")
    common.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    common.add_argument("--retries", type=int, default=4,
                        help="retries of a 503/507 answer, with exponential backoff")
    common.add_argument("-v", "--verbose", action="store_true", help="log retries")

    p = argparse.ArgumentParser(prog="msde-client", description=__doc__.splitlines()[0],
                                epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="command", required=True)

    pr = sub.add_parser("predict", parents=[common], help="faces, mask state and expression")
    pr.add_argument("images", nargs="+", help="image files and/or folders")
    pr.add_argument("--json", action="store_true", help="one JSON line per image")
    pr.add_argument("--draw", type=Path, metavar="DIR",
                    help="write each image with its boxes and labels into DIR")
    pr.add_argument("--summary", type=Path, metavar="FILE",
                    help="per-face summary: .csv, or JSON lines for any other suffix")
    pr.add_argument("--recursive", action="store_true", help="look into sub-folders")
    pr.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    pr.add_argument("--no-detect", action="store_true",
                    help="the images are face crops already")
    pr.add_argument("--no-progress", action="store_true")
    pr.set_defaults(run=cmd_predict)

    ex = sub.add_parser("explain", parents=[common], help="Grad-CAM heatmap overlays")
    ex.add_argument("image", type=Path)
    ex.add_argument("--out", type=Path, required=True, metavar="DIR")
    ex.add_argument("--target", help="expression to explain (default: the predicted one)")
    ex.add_argument("--no-detect", action="store_true", help="the image is a face crop")
    ex.set_defaults(run=cmd_explain)

    ui = sub.add_parser("ui", parents=[common], help="serve the try-it page on 127.0.0.1")
    ui.add_argument("--port", type=int, default=8090)
    ui.set_defaults(run=cmd_ui)

    he = sub.add_parser("health", parents=[common], help="is the service up, the model ready?")
    he.set_defaults(run=cmd_health)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(message)s")
    try:
        return int(args.run(args))
    except MsdeError as err:
        print(f"msde-client: {err.message}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
