"""The search's objective: the Mobile Efficiency Score (paper eq. 7) and the target it stops at."""
from __future__ import annotations

from dataclasses import dataclass

from backbones.errors import UsageError
from deploy.mes import ALPHA_LATENCY, ALPHA_SIZE, U_LATENCY_MS, U_SIZE, mobile_efficiency_score

__all__ = ["MesSpec", "Target"]


@dataclass(frozen=True)
class MesSpec:
    """Units and exponents of the Mobile Efficiency Score (the `mes:` section of a search config).

    Args:
        u_size: parameter count that scores 1 (paper: 3M).
        u_latency: latency in ms that scores 1 (paper: 1 ms).
        alpha_size: exponent of size, in (0, 1] (paper: 0.5; Table 10 also tries 1.0).
        alpha_latency: exponent of latency, in (0, 1] (paper: 1.0; Table 10 also tries 0.5).
    """

    u_size: float = U_SIZE
    u_latency: float = U_LATENCY_MS
    alpha_size: float = ALPHA_SIZE
    alpha_latency: float = ALPHA_LATENCY

    def __post_init__(self) -> None:
        for name in ("alpha_size", "alpha_latency"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise UsageError(f"mes.{name} must lie in (0, 1], got {getattr(self, name)}")
        for name in ("u_size", "u_latency"):
            if getattr(self, name) <= 0:
                raise ValueError(f"mes.{name} must be positive, got {getattr(self, name)}")

    def __call__(self, params: float, latency_ms: float) -> float:
        return mobile_efficiency_score(params, latency_ms, self.u_size, self.u_latency, self.alpha_size,
                                       self.alpha_latency)


@dataclass(frozen=True)
class Target:
    """Where the search stops: every given bound met.

    Args:
        params: parameter count, at most.
        latency_ms: latency by the table, at most.
        mes: Mobile Efficiency Score, at least.
    """

    params: float | None = None
    latency_ms: float | None = None
    mes: float | None = None

    def __post_init__(self) -> None:
        if self.params is None and self.latency_ms is None and self.mes is None:
            raise ValueError("give a target: a parameter count, a latency (ms) or an MES")

    def reached(self, params: float, latency_ms: float, mes: float) -> bool:
        return ((self.params is None or params <= self.params)
                and (self.latency_ms is None or latency_ms <= self.latency_ms)
                and (self.mes is None or mes >= self.mes))
