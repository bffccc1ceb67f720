"""docs/performance.md's generated blocks and docs/performance.json, from one bench result.

The page's prose is written by hand; the bench replaces only what lies between its
``<!-- bench:<name>:begin/end -->`` markers, so a rerun (e.g. on a quiet machine) updates
the figures and leaves the explanations.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "performance.md"
JSON_DOC = REPO / "docs" / "performance.json"


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def render(result: dict[str, Any]) -> str:
    m, p = result["service"]["msde"], result["service"]["stock"]
    quiet = result["machine"]["quiet"]
    out = [f"Measured {result['date']} on {result['machine']['description']}; "
           f"student served: **{result['student']['source']}** "
           f"({result['student']['architecture']} {result['student']['version']}). "
           f"Command: `{result['command']}` ({result['wall_s'] / 60:.1f} min)."]
    if not quiet:
        out.append(f"\n**UNDER LOAD**: other programs used up to "
                   f"{result['machine']['foreign_cores_max']:.2f} cores during the windows; "
                   "read the ratios (both servers were measured alternately in the same "
                   "conditions), not the absolute figures.")
    out.append("\n### msde vs stock TorchServe (medians of "
               f"{result['repeats']} alternated rounds, {result['seconds']:.0f} s windows)\n")
    rows = []
    for c in sorted(m, key=int):
        a, b = m[c], p[c]
        rows.append([c, a["req_per_s"], b["req_per_s"], a["faces_per_s"], b["faces_per_s"],
                     f"{a['faces_per_s'] / max(b['faces_per_s'], 1e-9):.2f}x",
                     f"{a['p50_ms']} / {a['p90_ms']} / {a['p99_ms']}",
                     f"{b['p50_ms']} / {b['p90_ms']} / {b['p99_ms']}",
                     f"{a['errors']} / {b['errors']}",
                     f"{100 * a['cpu_busy']:.0f}% / {100 * b['cpu_busy']:.0f}%"])
    out.append(_md_table(["c", "msde req/s", "stock req/s", "msde faces/s", "stock faces/s",
                          "faces/s ratio", "msde p50/p90/p99 ms", "stock p50/p90/p99 ms",
                          "errors msde/stock", "CPU busy msde/stock"], rows))
    out.append(f"\nmsde as served: {result['servers']['msde']}; stock (best of the "
               f"configurations below): {result['servers']['stock']}. "
               f"Cold start (command -> first 200): {result['cold_start_s']:.1f} s. "
               f"Worker memory after the rounds (MiB): {result['worker_memory_mib']}.")
    out.append("\n### Targets\n")
    out.append(_md_table(["target", "measured", "met"],
                         [[t["target"], t["measured"], "yes" if t["met"] else "**no**"]
                          for t in result["targets"]]))
    out.append("\n### In-process pipeline, one image (median ms, one thread)\n")
    st = result["stages"]
    out.append(_md_table(list(st), [list(st.values())]))
    out.append("\n### Student forward (median ms, one thread)\n")
    out.append(_md_table(["variant", "batch 1", "batch 8", "expression agreement",
                          "mask agreement", "max abs logit diff"],
                         [[v["variant"], v.get("batch1_ms", "-"), v.get("batch8_ms", "-"),
                           v.get("expression_agreement", "-"), v.get("mask_agreement", "-"),
                           v.get("max_abs_logit_diff", v.get("error", "-"))]
                          for v in result["forward"]]))
    out.append("\n### Stock TorchServe configurations tried (c=8 / c=32 faces/s)\n")
    out.append(_md_table(["configuration", "as served", "c=8 faces/s", "c=32 faces/s",
                          "c=8 p99 ms"],
                         [[r["config"], r["served_as"], r["c8"]["faces_per_s"],
                           r["c32"]["faces_per_s"], r["c8"]["p99_ms"]]
                          for r in result["peer_search"]]))
    mem = result.get("memory")
    if mem:
        out.append("\n### Worst-case memory (`bench/memory.py`)\n")
        out.append(_md_table(
            ["workers", "worker RSS idle -> peak MiB", "worker PSS idle -> peak MiB",
             "frontend peak RSS MiB", "pod peak RSS / PSS MiB",
             f"PSS under {mem['limit_mib']} MiB with 25% margin"],
            [[mem["workers"], f"{mem['idle_worker_rss_mib']} -> {mem['peak_worker_rss_mib']}",
              f"{mem['idle_worker_pss_mib']} -> {mem['peak_worker_pss_mib']}",
              mem["frontend_peak_rss_mib"],
              f"{mem['total_peak_rss_mib']} / {mem['total_peak_pss_mib']}",
              "yes" if mem["within_limit_with_margin"] else "**no**"]]))
        out.append("\nAnswers: " + "; ".join(f"`{k}`: {v}" for k, v in mem["answers"].items())
                   + f". Limits: {mem['limits']}.")
    return "\n".join(out) + "\n"


def render_tuning(rows: list[dict[str, Any]], date: str) -> str:
    levels = [k for k in rows[0] if k[0] == "c" and k[1:].isdigit()]
    header = ["configuration"] + [f"{k[1:]}: faces/s, p50/p99 ms, CPU" for k in levels]
    body = [[r["config"]] + [f"{r[k]['faces_per_s']}, {r[k]['p50_ms']}/{r[k]['p99_ms']}, "
                             f"{100 * r[k]['cpu']['busy_fraction']:.0f}%" for k in levels]
            for r in rows]
    return f"Measured {date} (`python bench/performance.py --tune`).\n\n" + _md_table(header, body) + "\n"


def replace_block(text: str, name: str, content: str) -> str:
    begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
    if begin not in text:
        return text.rstrip() + f"\n\n{begin}\n{content}{end}\n"
    head, rest = text.split(begin, 1)
    return head + begin + "\n" + content + end + rest.split(end, 1)[1]


def write_docs(result: dict[str, Any], tuning: list[dict[str, Any]] | None) -> None:
    # the figures first, so that a rendering bug never loses a run
    JSON_DOC.write_text(json.dumps(result | {"tuning": tuning}, indent=1) + "\n")
    text = DOC.read_text() if DOC.exists() else "# Performance\n"
    text = replace_block(text, "results", render(result))
    previous = json.loads(JSON_DOC.read_text()) if JSON_DOC.exists() else {}
    if tuning:
        text = replace_block(text, "tuning", render_tuning(tuning, result["date"]))
        result["tuning"] = tuning
    elif "tuning" in previous:
        result["tuning"] = previous["tuning"]
    DOC.write_text(text)
    JSON_DOC.write_text(json.dumps(result, indent=1) + "\n")
