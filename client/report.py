"""Answers as text: a readable table per image, JSON lines, a CSV/JSONL summary per face."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from client.api import Result
from client.draw import answer_text

SUMMARY_FIELDS = (
    "file", "face", "x1", "y1", "x2", "y2", "score", "mask", "mask_probability",
    "expression", "probability", "answer", "answer_level", "answer_probability", "error",
)


def summary_rows(result: Result) -> list[dict[str, Any]]:
    """One row per face; an image with no face or an error gets one row that says so."""
    if result.error is not None:
        return [{"file": result.source, "error": result.error.message}]
    assert result.response is not None
    if not result.response.faces:
        return [{"file": result.source, "face": None}]
    rows = []
    for i, face in enumerate(result.response.faces):
        x1, y1, x2, y2 = face.box
        rows.append({
            "file": result.source, "face": i, "x1": x1, "y1": y1, "x2": x2, "y2": y2,
            "score": face.score, "mask": face.mask.label,
            "mask_probability": face.mask.probability, "expression": face.expression.label,
            "probability": face.expression.probability, "answer": face.answer.label,
            "answer_level": face.answer.level, "answer_probability": face.answer.probability,
        })
    return rows


def format_result(result: Result) -> str:
    """The human-readable block for one image (``msde-client predict`` without --json)."""
    if result.error is not None:
        return f"{result.source}: ERROR {result.error.message}"
    assert result.response is not None
    r = result.response
    n = len(r.faces)
    lines = [f"{result.source}  {r.image.width}x{r.image.height}  "
             f"{n} face{'s' if n != 1 else ''}"]
    if n:
        lines.append(f"  {'#':>2}  {'box (x1,y1 - x2,y2)':<24}{'mask':<16}"
                     f"{'expression':<20}answer")
    for i, face in enumerate(r.faces):
        x1, y1, x2, y2 = face.box
        box = f"{x1:.0f},{y1:.0f} - {x2:.0f},{y2:.0f}"
        mask = f"{face.mask.label} {face.mask.probability:.2f}"
        expression = f"{face.expression.label} {face.expression.probability:.2f}"
        lines.append(f"  {i:>2}  {box:<24}{mask:<16}{expression:<20}{answer_text(face)}")
    return "\n".join(lines)


def json_line(result: Result) -> str:
    if result.error is not None:
        return json.dumps({"file": result.source, "error": {
            "message": result.error.message, "status": result.error.status,
            "code": getattr(result.error, "code", None)}})
    assert result.response is not None
    return json.dumps({"file": result.source, **result.response.model_dump(mode="json")})


def write_summary(path: Path, results: Iterable[Result]) -> int:
    """Write the per-face summary as CSV (``.csv``) or JSON lines (anything else); rows."""
    rows = [row for result in results for row in summary_rows(result)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        if path.suffix.lower() == ".csv":
            writer = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        else:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    return len(rows)
