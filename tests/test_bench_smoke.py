"""The benchmark harness, at tiny counts, so it cannot rot (docs/benchmarks.md has the real runs).

Checks the harness works end to end: servers start and stop, the driver
speaks each protocol, results are written. It measures nothing worth reading.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(scenario: str, out: Path) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "run", scenario, "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, object] = json.loads((out / f"{scenario}.json").read_text())
    return result


def _rows(result: dict[str, object]) -> list[list[object]]:
    tables = result["tables"]
    assert isinstance(tables, list) and tables
    rows: list[list[object]] = tables[0]["rows"]
    return rows


def test_overhead_smoke(tmp_path: Path) -> None:
    result = _run("overhead", tmp_path)
    rows = {row[0]: row for row in _rows(result)}
    assert set(rows) == {"direct", "relay", "guestqueue", "guestqueue-openai"}
    for name, row in rows.items():
        assert isinstance(row[1], float) and row[1] > 0, f"{name} streamed nothing"
        assert row[-1] == 0, f"{name} had errors"
    tables = result["tables"]
    assert isinstance(tables, list)
    [ratio] = [table["rows"][0][-1] for table in tables if "OpenAI front door" in table["title"]]
    assert isinstance(ratio, float) and ratio > 0


@pytest.mark.parametrize(
    "scenario",
    ["waiting", "eta", "dispatch", "logwriter", "memory", "scaleout", "tenants", "beyond", "compare", "fairness"],
)
def test_scenario_smoke(scenario: str, tmp_path: Path) -> None:
    result = _run(scenario, tmp_path)
    assert _rows(result)
    assert result["machine"]
