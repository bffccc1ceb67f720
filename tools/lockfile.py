#!/usr/bin/env python3
"""requirements.lock: every dependency of pyproject.toml pinned, generated, never hand-kept.

Why a lock beside pyproject.toml: pyproject says what the code needs (ranges, by use: the
handler's own imports, then the ``serving``, ``cuda``, ``training`` and ``test`` extras);
the lock says which releases the tests ran on. ``make`` installs the development set with
the lock as pip constraints, and the image installs only the serving set from the same lock,
so the container runs the versions CI tested instead of a second hand-kept list.

The lock is resolved for the platform CI and the image run on (Linux x86_64, Python 3.11)
and records a digest of pyproject's dependency tables, so a test fails when one changes
without the other.

Subcommands (stdlib only: the image's builder runs this before anything is installed):
  compile                    re-resolve pyproject.toml with uv, in a throwaway venv
  requirements EXTRA...      what the handler plus those extras need, by name only (the
                             versions come from the constraints; --drop NAME leaves one
                             out, e.g. onnxruntime for cuda)
  constraints                the lock as pip constraints (--pin NAME==VERSION overrides one)
  check-installed            every installed distribution is the locked version
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = REPO / "pyproject.toml"
LOCK = REPO / "requirements.lock"
PLATFORM = "x86_64-manylinux_2_28"
PYTHON = "3.11"
UV = "uv>=0.5"
DIGEST_KEY = "# pyproject-dependencies-sha256: "
# installed by `python -m venv` itself, not from the lock
BOOTSTRAP = {"pip", "setuptools"}
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[([^\]]*)\])?")
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def canonical(name: str) -> str:
    """PEP 503 name: what pip compares (``PyYAML`` == ``pyyaml``, ``a_b`` == ``a-b``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = _NAME.match(requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return canonical(match.group(1))


def project_table(pyproject: Path = PYPROJECT) -> dict[str, object]:
    return dict(tomllib.loads(pyproject.read_text())["project"])


def dependency_digest(pyproject: Path = PYPROJECT) -> str:
    """What the lock is resolved from: Python range, dependencies and extras, nothing else."""
    project = project_table(pyproject)
    source = {key: project.get(key) for key in
              ("requires-python", "dependencies", "optional-dependencies")}
    return hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()


def extras(pyproject: Path = PYPROJECT) -> list[str]:
    return sorted(dict(project_table(pyproject).get("optional-dependencies") or {}))


def requirements(wanted: list[str], pyproject: Path = PYPROJECT,
                 drop: frozenset[str] = frozenset()) -> list[str]:
    """The handler's dependencies plus those of ``wanted`` extras, self-references expanded."""
    project = project_table(pyproject)
    name = canonical(str(project["name"]))
    optional: dict[str, list[str]] = dict(project.get("optional-dependencies") or {})  # type: ignore[arg-type]
    unknown = set(wanted) - set(optional)
    if unknown:
        raise ValueError(f"no such extra in {pyproject.name}: {sorted(unknown)}")
    out: list[str] = []
    seen: set[str] = set()

    def add(lines: list[str]) -> None:
        for line in lines:
            match = _NAME.match(line)
            if match and canonical(match.group(1)) == name:  # msde[serving,training]
                for extra in (match.group(3) or "").split(","):
                    if extra.strip() and extra.strip() not in seen:
                        seen.add(extra.strip())
                        add(optional[extra.strip()])
            elif requirement_name(line) not in drop and line not in out:
                out.append(line)

    add(list(project.get("dependencies") or []))  # type: ignore[arg-type]
    for extra in wanted:
        if extra not in seen:
            seen.add(extra)
            add(optional[extra])
    return out


def unversioned(requirement: str) -> str:
    """``onnxruntime-gpu[cuda]>=1.31 ; cond`` -> ``onnxruntime-gpu[cuda] ; cond``."""
    match = _NAME.match(requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    marker = requirement.partition(";")[2].strip()
    return match.group(0).strip() + (f" ; {marker}" if marker else "")


def read_pins(lock: Path = LOCK) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in lock.read_text().splitlines():
        match = _PIN.match(line)
        if match:
            pins[canonical(match.group(1))] = match.group(2)
    return pins


def lock_digest(lock: Path = LOCK) -> str | None:
    for line in lock.read_text().splitlines():
        if line.startswith(DIGEST_KEY):
            return line[len(DIGEST_KEY):].strip()
    return None


def compile_lock(pyproject: Path = PYPROJECT, lock: Path = LOCK) -> None:
    """Resolve every extra with uv, installed in a throwaway venv (never a project tool)."""
    with tempfile.TemporaryDirectory(prefix="msde-lock-") as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", UV], check=True)
        resolved = Path(tmp) / "resolved.txt"
        cmd = [str(venv / "bin" / "uv"), "pip", "compile", pyproject.name, "--quiet",
               "--no-header", "--python-platform", PLATFORM, "--python-version", PYTHON,
               "-o", str(resolved)]
        for extra in extras(pyproject):
            cmd += ["--extra", extra]
        subprocess.run(cmd, check=True, cwd=pyproject.parent)
        header = (
            "# Every dependency of pyproject.toml (all extras) pinned for Linux x86_64 and\n"
            f"# Python {PYTHON}. Generated by `python tools/lockfile.py compile`; do not edit.\n"
            f"{DIGEST_KEY}{dependency_digest(pyproject)}\n"
        )
        lock.write_text(header + resolved.read_text())


def constraints(lock: Path = LOCK, pins: dict[str, str] | None = None) -> str:
    """The lock as a pip constraints file, with some pins replaced (a declared exception)."""
    overrides = {canonical(k): v for k, v in (pins or {}).items()}
    lines = []
    for name, version in read_pins(lock).items():
        lines.append(f"{name}=={overrides.pop(name, version)}")
    lines += [f"{name}=={version}" for name, version in overrides.items()]
    return "\n".join(lines) + "\n"


def installed_mismatches(pins: dict[str, str], skip: frozenset[str] = frozenset()
                         ) -> list[str]:
    """Installed distributions that are not at their locked version (local labels aside)."""
    problems = []
    for dist in metadata.distributions():
        name = canonical(dist.metadata["Name"])
        if name in BOOTSTRAP or name in skip:
            continue
        installed = dist.version.split("+")[0]
        locked = pins.get(name)
        if locked is None:
            problems.append(f"{name} {dist.version} is installed but not in the lock")
        elif installed != locked.split("+")[0]:
            problems.append(f"{name} {dist.version} is installed, the lock says {locked}")
    return sorted(problems)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("compile", help="re-resolve pyproject.toml into requirements.lock")
    req = sub.add_parser("requirements", help="requirement lines of the handler + extras")
    req.add_argument("extras", nargs="*")
    req.add_argument("--drop", action="append", default=[], help="leave this one out")
    con = sub.add_parser("constraints", help="the lock as pip constraints")
    con.add_argument("--pin", action="append", default=[], help="NAME==VERSION instead")
    chk = sub.add_parser("check-installed", help="installed versions are the locked ones")
    chk.add_argument("--constraints", type=Path, help="check against this file instead")
    chk.add_argument("--skip", action="append", default=[], help="a distribution to ignore")
    for p in (req, con, chk):
        p.add_argument("--pyproject", type=Path, default=PYPROJECT)
        p.add_argument("--lock", type=Path, default=LOCK)
    args = parser.parse_args(argv)

    if args.command == "compile":
        compile_lock()
        print(f"wrote {LOCK.relative_to(REPO)} ({len(read_pins())} pins)")
    elif args.command == "requirements":
        drop = frozenset(canonical(d) for d in args.drop)
        print("\n".join(unversioned(r) for r in requirements(args.extras, args.pyproject, drop)))
    elif args.command == "constraints":
        pins = dict(p.split("==", 1) for p in args.pin)
        sys.stdout.write(constraints(args.lock, pins))
    else:
        if lock_digest(args.lock) != dependency_digest(args.pyproject):
            print(f"{args.lock.name} is stale: pyproject's dependencies changed; "
                  "run `python tools/lockfile.py compile`")
            return 1
        pins = read_pins(args.constraints or args.lock)
        problems = installed_mismatches(pins, frozenset(canonical(s) for s in args.skip))
        for problem in problems:
            print(problem)
        if problems:
            return 1
        print(f"{len(pins)} pins: the installed distributions are the locked versions")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
