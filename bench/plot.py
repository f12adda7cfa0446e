"""PNG plots of server CPU and memory against waiting guests, from results/waiting.json (needs matplotlib)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from statistics import median

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after use(): the backend must be chosen first

FIGURES = {"cpu_pct": ("server CPU, % of one core", "waiting-cpu.png"), "rss_mb": ("server RSS, MB", "waiting-rss.png")}


def plot(results: Path, out_dir: Path) -> list[Path]:
    runs = json.loads(results.read_text())["raw"]["runs"]
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for key, (label, name) in FIGURES.items():
        points: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        for run in runs:
            points[run["server"]][run["guests"]].append(run[key])
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for server, by_count in sorted(points.items()):
            counts = sorted(by_count)
            ax.plot(counts, [median(by_count[c]) for c in counts], marker="o", label=server)
        if key == "cpu_pct":
            ax.axhline(35, linestyle="--", color="grey", linewidth=1, label="target at 10 000 (35 %)")
        ax.set_xlabel("waiting guests (position updates at 1 Hz)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
