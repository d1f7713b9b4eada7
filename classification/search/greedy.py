"""The greedy search of the paper's Algorithm 1.

From the largest sub-network, every step evaluates each frontier action (drop one block, drop the
first MHSA of a stage, shrink one stage's or the stem's width one step, shrink one FFN's
expansion one step unless expansions are fixed) with inherited weights after BatchNorm
recalibration, and takes the action with the smallest accuracy drop per MES gained, until a
target parameter count, latency or MES is reached. An action that does not lower accuracy costs
nothing; ties go to the smaller loss increase per MES gained, then to the larger MES gain.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

from backbones.supernet import SubnetConfig

from .evaluator import SubnetEvaluator
from .io import arch_dict
from .moves import ExpansionMode, check_expansion_mode, frontier
from .objective import Target

__all__ = ["SearchStep", "SearchResult", "greedy_search"]


@dataclass
class SearchStep:
    """One step of the search: the action taken and the metrics of the sub-network it gave."""

    step: int
    action: str
    params: int
    latency_ms: float
    mes: float
    top1: float
    loss: float
    candidates: int
    seconds: float
    config: dict[str, Any]


@dataclass
class SearchResult:
    """The searched sub-network, every step, and why the search stopped."""

    config: SubnetConfig
    steps: list[SearchStep]
    reached: bool
    reason: str
    evaluations: int
    seconds: float

    @property
    def final(self) -> SearchStep:
        return self.steps[-1]

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "arch": arch_dict(self.config), "reached": self.reached,
                "reason": self.reason, "evaluations": self.evaluations, "seconds": self.seconds,
                "steps": [asdict(s) for s in self.steps]}


def greedy_search(evaluator: SubnetEvaluator, target: Target, start: SubnetConfig | None = None,
                  max_steps: int = 1000, log: Callable[[SearchStep], None] | None = None,
                  expansions: ExpansionMode = "joint") -> SearchResult:
    """Slim `start` one frontier action at a time, argmin over actions of (accuracy drop / MES
    gain), until `target` is reached.

    Args:
        evaluator: metrics of the supernet's sub-networks (needs a latency table).
        target: where to stop.
        start: the first sub-network (default: the largest).
        max_steps: stop after this many actions.
        log: called with every step, the start included.
        expansions: "joint" (default) or "fixed": every block keeps its expansion ratio in
            `start` (depth and width only, paper Table 9).
    """
    check_expansion_mode(expansions)
    t0 = time.perf_counter()
    space = evaluator.supernet.space
    config = start or space.largest()
    space.validate(config)
    params, latency, mes = evaluator.cost(config)
    acc, loss = evaluator.accuracy(config)
    steps = [SearchStep(0, "start", params, latency, mes, acc, loss, 0, time.perf_counter() - t0,
                        config.to_dict())]
    if log:
        log(steps[-1])
    reason = "target reached"
    while not target.reached(params, latency, mes):
        if len(steps) > max_steps:
            reason = f"step limit reached (max_steps {max_steps})"
            break
        best = None
        candidates = 0
        for action, new in frontier(config, space, expansions):
            p, lat, m = evaluator.cost(new)
            gain = m - mes
            if gain <= 0:
                continue
            candidates += 1
            a, lo = evaluator.accuracy(new)
            # a loss that falls costs nothing, like an accuracy that does not drop: among free
            # actions the largest MES gain wins (otherwise the tiniest steps would, by dividing ~0)
            key = (max(acc - a, 0.0) / gain, max(lo - loss, 0.0) / gain, -gain)
            if best is None or key < best[0]:
                best = (key, action, new, p, lat, m, a, lo)
        if best is None:
            reason = "no action raises the MES any further"
            break
        _, action, config, params, latency, mes, acc, loss = best
        steps.append(SearchStep(len(steps), str(action), params, latency, mes, acc, loss, candidates,
                                time.perf_counter() - t0, config.to_dict()))
        if log:
            log(steps[-1])
    return SearchResult(config, steps, target.reached(params, latency, mes), reason, evaluator.evaluations,
                        time.perf_counter() - t0)
