"""Suite figures: accuracy vs round per scenario (mean ± std over seeds) and tile-coverage heatmaps.
Both are drawn from a suite summary (summary.json), so the report can redraw them anywhere."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..outputs import atomic_write_bytes
from ..outputs.pyplot import pyplot

PLOTS = "the suite figures"


def _save(fig: Any, path: str | Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    pyplot(PLOTS).close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_scenario_curves(scenario: Mapping[str, Any], arm_kinds: Mapping[str, str], path: str | Path,
                         title: str) -> None:
    """One line per arm (mean over seeds) with a ± std band; variants dashed. Arms keep the order
    of `arm_kinds` (the suite's), so an arm has the same colour in every scenario."""
    plt = pyplot(PLOTS)
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    cmap = plt.get_cmap("tab10")
    colors = [cmap(i) for i in range(cmap.N)]
    for i, arm in enumerate(arm_kinds):
        if arm not in scenario["results"]:
            continue
        curve = scenario["results"][arm]["curve"]
        pts = [(r, m, s) for r, m, s in zip(curve["round"], curve["mean"], curve["std"], strict=True) if m is not None]
        if not pts:
            continue
        rounds, mean, std = (list(col) for col in zip(*pts, strict=True))
        mean, std = [100 * m for m in mean], [100 * s for s in std]
        color = colors[i % len(colors)]
        ax.plot(rounds, mean, color=color, linestyle="--" if arm_kinds[arm] == "variant" else "-",
                marker="o" if len(rounds) <= 12 else None, markersize=3, label=arm)
        low = [m - s for m, s in zip(mean, std, strict=True)]
        high = [m + s for m, s in zip(mean, std, strict=True)]
        ax.fill_between(rounds, low, high, color=color, alpha=0.15, linewidth=0)
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (%), mean ± std over seeds")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    _save(fig, path)


def plot_coverage(coverage: Mapping[str, Any], arms: Sequence[str], path: str | Path, title: str) -> None:
    """One heatmap per arm: over the run, how many client plans trained each tile of the weight
    between two hidden groups (mean over the tile's elements). Each panel has its own colour scale,
    since counts differ widely; the panel title says how many tiles some plan trained whole."""
    means = {arm: coverage["tile_means"][arm] for arm in arms if arm in coverage["tile_means"]}
    whole = coverage["whole_tiles"]
    cols = min(5, len(means))
    rows = math.ceil(len(means) / cols)
    plt = pyplot(PLOTS)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.9 * rows + 0.6), dpi=110, squeeze=False)
    for ax in axes.flat[len(means):]:
        ax.axis("off")
    for ax, (arm, counts) in zip(axes.flat, means.items(), strict=False):
        tiles = len(counts) * len(counts[0])  # (segment, block) positions per axis: K, or R*K for R segments
        trained = sum(1 for row in counts for c in row if c > 0)
        trained_whole = sum(1 for row in whole[arm] for c in row if c > 0)
        im = ax.imshow(counts, cmap="viridis", vmin=0, interpolation="nearest")
        ax.set_title(f"{arm}\ntouched {trained}/{tiles}, trained whole {trained_whole}/{tiles}", fontsize=8)
        ax.set_xlabel(f"in block (group {coverage['in_group']})", fontsize=7)
        ax.set_ylabel(f"out block (group {coverage['out_group']})", fontsize=7)
        ax.tick_params(labelsize=6)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
