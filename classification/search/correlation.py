"""The statistics of the supernet-as-proxy check (paper Fig. 5): inherited against stand-alone
accuracy, Pearson r and Kendall tau. The end-to-end check is `classification.proxy`."""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

from backbones.errors import UsageError
from backbones.supernet import SubnetConfig

from .evaluator import SubnetEvaluator

__all__ = ["ProxyReport", "proxy_correlation"]


@dataclass
class ProxyReport:
    """Top-1 (%) with inherited weights and after stand-alone training, per sub-network, and how
    well the first predicts the second: Pearson r (signed), r^2 and Kendall tau (rank agreement)."""

    inherited: list[float]
    standalone: list[float]
    pearson_r: float
    kendall_tau: float
    configs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def pearson_r2(self) -> float:
        return self.pearson_r ** 2

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "pearson_r2": self.pearson_r2}

    def summary(self) -> str:
        return (f"supernet as proxy on {len(self.inherited)} sub-networks: Pearson r {self.pearson_r:.3f} "
                f"(r^2 {self.pearson_r2:.3f}), Kendall tau {self.kendall_tau:.3f}")


def proxy_correlation(evaluator: SubnetEvaluator, configs: Sequence[SubnetConfig],
                      train_standalone: Callable[[SubnetConfig], float]) -> ProxyReport:
    """Accuracy with inherited weights (after BatchNorm recalibration) against accuracy after
    stand-alone training.

    Args:
        evaluator: measures the inherited accuracy.
        configs: at least 3 sub-networks.
        train_standalone: `train_standalone(config) -> top-1 %` after training it from scratch.
    """
    from scipy.stats import kendalltau

    if len(configs) < 3:
        raise UsageError("the proxy check needs at least 3 sub-networks")
    inherited = [evaluator.accuracy(c)[0] for c in configs]
    standalone = [float(train_standalone(c)) for c in configs]
    r = _pearson(inherited, standalone)
    tau = kendalltau(inherited, standalone).statistic
    return ProxyReport(inherited, standalone, r, float(tau) if not math.isnan(tau) else 0.0,
                       [c.to_dict() for c in configs])


def _pearson(a: Sequence[float], b: Sequence[float]) -> float:
    try:
        return statistics.correlation(a, b)
    except statistics.StatisticsError:  # a constant series
        return 0.0
