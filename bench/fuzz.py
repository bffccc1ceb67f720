"""Longer fuzzing of decoding and request parsing than the test suite affords (``make fuzz``).

Two parts, both in-process on the CPU:

1. a time-bounded mutation loop over the generated corpus (``testkit/corpus.py``): encoded
   images go through ``decode_image``, TorchServe-shaped request dicts (mutated bodies,
   multipart fields, JSON) through ``parse_request``; every outcome must be a decoded image
   within the limits or an ``InputError`` with a 4xx status. Anything else is a finding: its
   input is written to ``--findings`` and the run exits 1;
2. the hypothesis properties of ``tests/handler/test_fuzz.py`` with ``--scale`` times their
   test-suite budget (skipped with ``--scale 0``).

Run:  python bench/fuzz.py [--seconds 300] [--scale 20] [--seed 0] [--findings fuzz-findings]
Prints one JSON line: executions, outcomes by error code, findings.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from handler.decode import DecodeLimits, InputError, decode_image, parse_request  # noqa: E402
from testkit.corpus import (  # noqa: E402
    accept_cases,
    mutate,
    reject_cases,
    seed_images,
    torchserve_inputs,
)

LOG = logging.getLogger("fuzz")


def request_seeds(limits: DecodeLimits) -> list[dict[str, Any]]:
    return [torchserve_inputs(c.request) for c in reject_cases() + accept_cases()
            if len(c.request.body) < limits.max_bytes]


def mutate_request(inputs: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """Mutate the bytes (or the JSON text) of one field of a request dict."""
    out = dict(inputs)
    if not out:
        return out
    key = sorted(out)[int(rng.integers(0, len(out)))]
    value = out[key]
    if isinstance(value, (dict, list, str, int, float, bool)) or value is None:
        text = value if isinstance(value, str) else json.dumps(value)
        raw = mutate(text.encode(), rng, int(rng.integers(1, 4)))
        out[key] = raw if rng.integers(0, 2) else raw.decode("utf-8", "replace")
    else:
        out[key] = mutate(bytes(value), rng, int(rng.integers(1, 6)))
    return out


def run_once(target: str, payload: Any, limits: DecodeLimits) -> str:
    """The outcome's label ('ok' or the error code); raises on anything but InputError."""
    try:
        if target == "decode":
            arr = decode_image(payload, limits)
            h, w = arr.shape[:2]
            assert arr.dtype == np.uint8 and arr.shape[2] == 3
            assert h * w <= limits.max_pixels and max(h, w) <= limits.max_side
        else:
            parsed = parse_request(payload, limits)
            assert 1 <= len(parsed.images) <= limits.max_images
        return "ok"
    except InputError as err:
        assert 400 <= err.status < 500, err.status
        return err.code


def save_finding(findings: Path, target: str, payload: Any, exc: BaseException) -> Path:
    findings.mkdir(parents=True, exist_ok=True)
    data = payload if isinstance(payload, bytes) else repr(payload).encode()
    path = findings / f"{target}-{hashlib.sha1(data).hexdigest()[:12]}.bin"
    path.write_bytes(data)
    path.with_suffix(".txt").write_text(f"{type(exc).__name__}: {exc}\n")
    return path


def mutation_loop(seconds: float, seed: int, findings: Path) -> dict[str, Any]:
    limits = DecodeLimits()
    rng = np.random.default_rng(seed)
    images, requests = seed_images(), request_seeds(limits)
    outcomes: collections.Counter[str] = collections.Counter()
    found: list[str] = []
    executions = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if rng.integers(0, 2):
            target = "decode"
            payload: Any = mutate(images[int(rng.integers(0, len(images)))], rng,
                                  int(rng.integers(1, 9)))
        else:
            target = "parse"
            payload = mutate_request(requests[int(rng.integers(0, len(requests)))], rng)
        executions += 1
        try:
            outcomes[f"{target}:{run_once(target, payload, limits)}"] += 1
        except Exception as exc:  # a finding: anything but InputError escaped
            found.append(str(save_finding(findings, target, payload, exc)))
            LOG.error("finding %s: %s", found[-1], type(exc).__name__)
    return {"seconds": seconds, "seed": seed, "executions": executions,
            "outcomes": dict(sorted(outcomes.items())), "findings": found}


def hypothesis_run(scale: int) -> int:
    env = dict(os.environ, MSDE_FUZZ_SCALE=str(scale))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           str(REPO / "tests" / "handler" / "test_fuzz.py")]
    return subprocess.run(cmd, cwd=REPO, env=env, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="mutation loop budget")
    parser.add_argument("--scale", type=int, default=20,
                        help="hypothesis examples x this (0 = skip the properties)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--findings", type=Path, default=Path("fuzz-findings"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    report = mutation_loop(args.seconds, args.seed, args.findings)
    status = 1 if report["findings"] else 0
    if args.scale > 0:
        rc = hypothesis_run(args.scale)
        report["hypothesis_scale"] = args.scale
        report["hypothesis_passed"] = rc == 0
        status = status or int(rc != 0)
    print(json.dumps(report))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
