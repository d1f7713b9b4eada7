"""The search trajectory plot (paper Fig. 3)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .greedy import SearchResult

__all__ = ["plot_trajectory"]


def plot_trajectory(result: SearchResult, randoms: Sequence[dict[str, Any]], path: str | Path,
                    title: str = "supernet search") -> Path:
    """PNG of the search trajectory (MES vs top-1, log MES axis as in the paper's Fig. 3) beside
    random sub-networks.

    Args:
        result: the greedy search's result.
        randoms: records (`SubnetEvaluator.record`) of random sub-networks.
        path: the PNG written (its folder is created).
        title: the plot's title.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    if randoms:
        ax.scatter([r["mes"] for r in randoms], [r["top1"] for r in randoms], c="tab:blue", s=18,
                   label="random sub-networks", alpha=0.7)
    ax.plot([s.mes for s in result.steps], [s.top1 for s in result.steps], "-o", c="tab:red", ms=3,
            label="greedy search")
    ax.scatter([result.final.mes], [result.final.top1], marker="*", s=160, c="tab:red", zorder=5,
               label="searched")
    ax.set_xscale("log")
    ax.set_xlabel("MES (log scale)")
    ax.set_ylabel("top-1 (%), inherited weights")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
