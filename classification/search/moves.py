"""The search's moves: one-step slimming actions of a sub-network and the frontier of all legal ones.

Two search spaces (paper Table 9): `joint` slims depth, width and expansion ratios together (the
paper's search); `fixed` slims depth and width only, as EfficientFormer's search did, and every
block keeps the expansion ratio of the start network (the largest sub-network, whose ratio is the
space's largest).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal, Sequence

from backbones.supernet import ATTENTION_STAGES, SearchSpace, StageConfig, SubnetConfig

__all__ = ["Action", "ExpansionMode", "EXPANSION_MODES", "frontier", "fixed_expansion", "with_expansion"]

ExpansionMode = Literal["joint", "fixed"]
EXPANSION_MODES: tuple[str, ...] = ("joint", "fixed")


@dataclass(frozen=True)
class Action:
    """One slimming step.

    Args:
        kind: drop_block (stage, block = supernet index), drop_mhsa (stage: its first MHSA goes),
            shrink_width (stage), shrink_stem, shrink_expansion (stage, block).
        stage: 0-based stage index (-1 for the stem).
        block: supernet block index (-1 where the kind has none).
    """

    kind: str
    stage: int = -1
    block: int = -1

    def __str__(self) -> str:
        if self.kind == "shrink_stem":
            return "shrink stem width"
        where = f"stage {self.stage + 1}"
        if self.kind in ("drop_block", "shrink_expansion"):
            where += f" block {self.block}"
        return f"{self.kind.replace('_', ' ')} ({where})"


def check_expansion_mode(expansions: str) -> None:
    """Raise ValueError unless `expansions` is one of `EXPANSION_MODES`."""
    if expansions not in EXPANSION_MODES:
        raise ValueError(f"unknown expansions mode {expansions!r}: use one of {', '.join(EXPANSION_MODES)}")


def _smaller(choices: Sequence, value) -> Any | None:
    i = list(choices).index(value)
    return choices[i - 1] if i > 0 else None


def _replace_stage(config: SubnetConfig, j: int, stage: StageConfig) -> SubnetConfig:
    stages = list(config.stages)
    stages[j] = stage
    return replace(config, stages=tuple(stages))


def frontier(config: SubnetConfig, space: SearchSpace,
             expansions: ExpansionMode = "joint") -> list[tuple[Action, SubnetConfig]]:
    """Every legal one-step slimming of `config` with its result. No action empties a stage
    (each keeps one block), goes below the smallest width or expansion of the space, or leaves an
    MHSA before an FFN-only block (the kept MHSAs stay the trailing ones).

    Args:
        config: the current sub-network.
        space: the supernet's search space.
        expansions: "joint" (default) proposes expansion shrinks too; "fixed" never changes an
            expansion ratio (depth and width only, paper Table 9's EfficientFormer search).
    """
    check_expansion_mode(expansions)
    out = []
    smaller_stem = _smaller(space.stem_widths, config.stem_width)
    if smaller_stem is not None:
        out.append((Action("shrink_stem"), replace(config, stem_width=smaller_stem)))
    for j, s in enumerate(config.stages):
        first_mhsa = s.depth - s.attention
        if s.depth > 1:
            for k, b in enumerate(s.blocks):
                att = s.attention - (1 if k >= first_mhsa else 0)
                new = StageConfig(s.width, s.blocks[:k] + s.blocks[k + 1:], s.expansions[:k] + s.expansions[k + 1:], att)
                out.append((Action("drop_block", j, b), _replace_stage(config, j, new)))
        if s.attention > 0 and j in ATTENTION_STAGES:
            out.append((Action("drop_mhsa", j), _replace_stage(config, j, replace(s, attention=s.attention - 1))))
        narrower = _smaller(space.widths[j], s.width)
        if narrower is not None:
            out.append((Action("shrink_width", j), _replace_stage(config, j, replace(s, width=narrower))))
        if expansions == "fixed":
            continue
        for k, (b, e) in enumerate(zip(s.blocks, s.expansions)):
            smaller = _smaller(space.expansions, e)
            if smaller is not None:
                exps = s.expansions[:k] + (smaller,) + s.expansions[k + 1:]
                out.append((Action("shrink_expansion", j, b), _replace_stage(config, j, replace(s, expansions=exps))))
    return out


def fixed_expansion(space: SearchSpace) -> float:
    """The ratio every block keeps in a depth-and-width (`fixed`) search: the largest
    sub-network's, i.e. the space's largest ratio."""
    return space.expansions[-1]


def with_expansion(config: SubnetConfig, ratio: float) -> SubnetConfig:
    """`config` with every block's expansion ratio set to `ratio`."""
    return replace(config, stages=tuple(replace(s, expansions=(ratio,) * s.depth) for s in config.stages))
