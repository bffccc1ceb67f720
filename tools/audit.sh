#!/usr/bin/env bash
# Dependency audit (`make audit`): pip-audit over the packages installed in the project's
# virtual environment -- exactly what the tests and the container run -- not over a fresh
# resolution of pyproject.toml.
#
# pip-audit itself lives in its own virtual environment (.cache/audit-venv), so auditing
# never changes the audited environment. It asks the package index's vulnerability service
# over the network; without network it fails with a connection error (recorded as such in
# docs/security.md, never as "no findings").
#
#   AUDIT_VENV   where pip-audit is installed      [.cache/audit-venv]
#   PROJECT_PY   interpreter of the audited env    [.venv/bin/python]
#   AUDIT_OUT    JSON report written here          [logs/pip-audit.json]
# Exit: pip-audit's (0 no known vulnerabilities, 1 some found or the audit failed).
set -euo pipefail
cd "$(dirname "$0")/.."

audit_venv=${AUDIT_VENV:-.cache/audit-venv}
project_py=${PROJECT_PY:-.venv/bin/python}
out=${AUDIT_OUT:-logs/pip-audit.json}

[ -x "$project_py" ] || { echo "audit: no project interpreter at $project_py" >&2; exit 2; }
if [ ! -x "$audit_venv/bin/pip-audit" ]; then
    python3 -m venv "$audit_venv"
    "$audit_venv/bin/pip" install -q "pip-audit>=2.7"
fi
site=$("$project_py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p "$(dirname "$out")"
# the editable project itself (msde) is not on the index: skip it
set +e
"$audit_venv/bin/pip-audit" --path "$site" --skip-editable --progress-spinner off \
    --desc on --aliases on --format json --output "$out"
status=$?
set -e
# pip-audit reports "No known vulnerabilities found" even when it could not look a single
# package up (every one skipped): count the skips and fail the audit on any.
"$audit_venv/bin/python" - "$out" <<'PY' || status=1
import json, sys
try:
    report = json.load(open(sys.argv[1]))
except (OSError, ValueError):
    print("audit: no report written (see the error above)")
    sys.exit(1)
deps = report.get("dependencies", [])
skipped = [d for d in deps if d.get("skip_reason")]
vulns = [(d["name"], d.get("version"), v["id"], ",".join(v.get("fix_versions", [])))
         for d in deps for v in d.get("vulns", [])]
print(f"audited {len(deps) - len(skipped)} of {len(deps)} packages: "
      f"{len(vulns)} known vulnerabilities")
for name, version, vid, fixes in vulns:
    print(f"  {name} {version}: {vid} (fixed in: {fixes or 'no release'})")
if skipped:
    print(f"audit INCOMPLETE: {len(skipped)} packages could not be looked up, e.g. "
          f"{skipped[0]['name']}: {skipped[0]['skip_reason']}")
    sys.exit(1)
PY
exit $status
