"""Mobile Efficiency Score (paper eq. 7).

    MES = Score * prod_i (M_i / U_i) ** (-alpha_i),   i in {size, latency}

with Score = 100, U_size = 3M parameters, U_latency = 1 ms, alpha_size = 0.5 and
alpha_latency = 1.0 (the paper's choice, emphasising speed). MobileNetV2 x1.0 (3.5M, 0.9 ms on
iPhone 12) scores 102.9; halving the latency doubles the score, quartering the size doubles it.
"""
from __future__ import annotations

from typing import Mapping

__all__ = ["mobile_efficiency_score", "mes_from_metrics", "SCORE", "U_SIZE", "U_LATENCY_MS",
           "ALPHA_SIZE", "ALPHA_LATENCY"]

SCORE = 100.0
U_SIZE = 3e6
U_LATENCY_MS = 1.0
ALPHA_SIZE = 0.5
ALPHA_LATENCY = 1.0


def mes_from_metrics(metrics: Mapping[str, float], units: Mapping[str, float],
                     alphas: Mapping[str, float], score: float = SCORE) -> float:
    """General eq. 7: `score * prod((metrics[k] / units[k]) ** -alphas[k])` over the keys of
    `metrics` (e.g. size, latency, memory); every key needs a unit and an alpha in (0, 1]."""
    result = float(score)
    for key, value in metrics.items():
        if key not in units or key not in alphas:
            raise ValueError(f"metric {key!r} needs a unit and an alpha; units: {sorted(units)}, "
                             f"alphas: {sorted(alphas)}")
        unit, alpha = float(units[key]), float(alphas[key])
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha of {key!r} must lie in (0, 1], got {alpha}")
        if value <= 0 or unit <= 0:
            raise ValueError(f"metric {key!r} and its unit must be positive, got {value} and {unit}")
        result *= (float(value) / unit) ** (-alpha)
    return result


def mobile_efficiency_score(params: float, latency_ms: float, u_size: float = U_SIZE,
                            u_latency: float = U_LATENCY_MS, alpha_size: float = ALPHA_SIZE,
                            alpha_latency: float = ALPHA_LATENCY, score: float = SCORE) -> float:
    """MES of a model with `params` parameters (a count, not millions) and `latency_ms`.

    >>> round(mobile_efficiency_score(3.5e6, 0.9), 1)   # MobileNetV2 in the paper's Table 2
    102.9
    """
    return mes_from_metrics({"size": params, "latency": latency_ms},
                            {"size": u_size, "latency": u_latency},
                            {"size": alpha_size, "latency": alpha_latency}, score)
