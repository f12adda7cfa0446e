"""Tables on stdout and results as JSON: one file per scenario, named after it."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .machine import describe, one_line

RESULTS = Path(__file__).parent / "results"


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)

    def add(self, *cells: Any) -> None:
        self.rows.append(list(cells))

    def render(self) -> str:
        cells = [[_fmt(c) for c in row] for row in self.rows]
        widths = [
            max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h)) for i, h in enumerate(self.columns)
        ]
        lines = [
            self.title,
            "  ".join(h.ljust(w) for h, w in zip(self.columns, widths, strict=True)),
            "  ".join("-" * w for w in widths),
        ]
        lines += [
            "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            for r in cells
        ]
        return "\n".join(lines)

    def markdown(self) -> str:
        out = [f"| {' | '.join(self.columns)} |", f"|{'|'.join('---' for _ in self.columns)}|"]
        out += [f"| {' | '.join(_fmt(c) for c in row)} |" for row in self.rows]
        return "\n".join(out)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    if value is None:
        return "-"
    return str(value)


@dataclass
class Result:
    scenario: str
    params: dict[str, Any]
    tables: list[Table] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    targets: list[dict[str, Any]] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=describe)

    def target(self, name: str, value: float | None, goal: str, met: bool | None) -> None:
        """Record one of the issue's targets: ``met`` None means it could not be measured."""
        self.targets.append({"target": name, "value": value, "goal": goal, "met": met if value is not None else None})

    def render(self) -> str:
        parts = [f"# {self.scenario}  ({one_line(self.machine)})", *(t.render() for t in self.tables)]
        if self.targets:
            table = Table("targets", ["target", "measured", "goal", "met"])
            for t in self.targets:
                table.add(t["target"], t["value"], t["goal"], {True: "yes", False: "NO", None: "pending"}[t["met"]])
            parts.append(table.render())
        return "\n\n".join(parts)

    def save(self, out_dir: Path) -> Path:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{self.scenario}.json"
        body = {
            "scenario": self.scenario,
            "machine": self.machine,
            "params": self.params,
            "tables": [{"title": t.title, "columns": t.columns, "rows": t.rows} for t in self.tables],
            "targets": self.targets,
            "raw": self.raw,
        }
        path.write_text(json.dumps(body, indent=1, default=str) + "\n")
        return path


def markdown(path: Path) -> str:
    """A saved result as Markdown: its tables and its targets."""
    body = json.loads(path.read_text())
    parts = [f"**{body['scenario']}** ({one_line(body['machine'])})"]
    for t in body["tables"]:
        parts.append(f"*{t['title']}*\n\n" + Table(t["title"], t["columns"], t["rows"]).markdown())
    if body["targets"]:
        table = Table("targets", ["target", "measured", "goal", "met"])
        for t in body["targets"]:
            table.add(t["target"], t["value"], t["goal"], {True: "yes", False: "**no**", None: "pending"}[t["met"]])
        parts.append(table.markdown())
    return "\n\n".join(parts) + "\n"
