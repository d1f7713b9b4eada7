"""The random-search baseline (paper Table 4) and uniformly drawn sub-networks (paper Fig. 3)."""
from __future__ import annotations

import random
from typing import Any

from backbones.errors import UsageError
from backbones.supernet import SubnetConfig

from .evaluator import SubnetEvaluator
from .moves import ExpansionMode, check_expansion_mode, fixed_expansion, with_expansion
from .objective import Target

__all__ = ["draw_subnet", "sample_at_budget", "random_baseline", "random_cloud"]


def draw_subnet(evaluator: SubnetEvaluator, rng: random.Random, expansions: ExpansionMode = "joint") -> SubnetConfig:
    """A uniformly drawn sub-network of the evaluator's supernet; with `expansions="fixed"`, of its
    depth-and-width space (every ratio the largest sub-network's, `fixed_expansion`)."""
    check_expansion_mode(expansions)
    space = evaluator.supernet.space
    config = space.sample(rng)
    return with_expansion(config, fixed_expansion(space)) if expansions == "fixed" else config


def sample_at_budget(evaluator: SubnetEvaluator, target: Target, count: int, rng: random.Random,
                     tolerance: float = 0.1, max_draws: int = 20000,
                     expansions: ExpansionMode = "joint") -> list[SubnetConfig]:
    """Distinct drawn sub-networks that meet `target` and lie near it, so that they have the
    same budget.

    Args:
        evaluator: gives their parameters, latency and MES.
        target: the budget.
        count: how many.
        rng: the draw's generator.
        tolerance: each given bound met with at most this much (relative) to spare.
        max_draws: give up after this many draws.
        expansions: "joint" or "fixed" (see `draw_subnet`).
    """
    found: list[SubnetConfig] = []
    for _ in range(max_draws):
        config = draw_subnet(evaluator, rng, expansions)
        if config in found:
            continue
        params, latency, mes = evaluator.cost(config)
        if not target.reached(params, latency, mes):
            continue
        near = ((target.params is None or params >= target.params * (1 - tolerance))
                and (target.latency_ms is None or latency >= target.latency_ms * (1 - tolerance))
                and (target.mes is None or mes <= target.mes * (1 + tolerance)))
        if near:
            found.append(config)
            if len(found) == count:
                break
    if not found:
        raise UsageError(f"no random sub-network within {tolerance:.0%} of the target {target} in "
                         f"{max_draws} draws: loosen the tolerance or the target")
    return found


def random_baseline(evaluator: SubnetEvaluator, target: Target, count: int = 10, seed: int = 0,
                    tolerance: float = 0.1, expansions: ExpansionMode = "joint") -> list[dict[str, Any]]:
    """Random search under the same budget (paper Table 4): records (params, latency, MES,
    top-1 with inherited weights, config) of random sub-networks at the target (`sample_at_budget`)."""
    configs = sample_at_budget(evaluator, target, count, random.Random(seed), tolerance, expansions=expansions)
    return [evaluator.record(c) for c in configs]


def random_cloud(evaluator: SubnetEvaluator, count: int, seed: int = 0,
                 expansions: ExpansionMode = "joint") -> list[dict[str, Any]]:
    """Records of `count` uniformly drawn sub-networks (the blue dots of the paper's Fig. 3)."""
    rng = random.Random(seed)
    return [evaluator.record(draw_subnet(evaluator, rng, expansions)) for _ in range(count)]
