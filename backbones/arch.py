"""The architecture description of EfficientFormerV2, apart from the network that builds it.

An `Arch` lists, per stage, the width, one FFN expansion ratio per block and how many trailing
blocks carry multi-head self-attention, plus the design switches of the paper's Section 3
(`SWITCHES`). `stage_plans` is the stage layout (strides, grids, downsampling) shared by the
model, the supernet and the latency table. `RELEASED` is the one table of the released variants
(each named once there): `VARIANTS` (key -> Arch), the factories `efficientformerv2_*`,
`create_model`'s names and the hub weights (`Variant.hf_hub_id`) derive from it.

Plain data: no network code here (it only uses `grid_size` of `.layers` for the grids).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .errors import UsageError
from .layers import grid_size

__all__ = ["Arch", "StageArch", "StagePlan", "SWITCHES", "ATTENTION_STAGES", "DOWNSAMPLING", "stage_plans",
           "feature_grids", "resolve_arch", "Variant", "RELEASED", "VARIANTS", "find_variant", "MODEL_PREFIX",
           "HUB_TAG"]

DOWNSAMPLING = ("dual", "attention", "conv")

ATTENTION_STAGES = (2, 3)  # stages 3 and 4 (0-based 2, 3) may carry MHSA


@dataclass(frozen=True)
class StagePlan:
    """Where a stage sits in the network, the same for every width and depth: the single
    description of the stage layout that the model, the supernet and the latency table use.

    index: 0..3. stride: of its feature map (4, 8, 16, 32). in_grid: token-grid side at its
    input (before downsampling) for the training input size; grid: inside the stage.
    downsample: None (stage 1), "conv", "attention" or "dual". attention: whether its blocks may
    carry MHSA. attn_stride: 2 where that MHSA is stride attention; attn_grid: the grid its
    queries and keys live on.
    """

    index: int
    stride: int
    in_grid: int
    grid: int
    downsample: str | None
    attention: bool
    attn_stride: int

    @property
    def attn_grid(self) -> int:
        return grid_size(self.grid, self.attn_stride)


def stage_plans(img_size: int = 224, stride_attention: bool = True, downsampling: str = "dual") -> tuple[StagePlan, ...]:
    """The four `StagePlan`s of EfficientFormerV2 at a training input side `img_size`: a stride-4
    stem; stages 2-4 downsampled by a stride-2 conv, except stage 4 (`downsampling`: the
    dual-path attention downsampling by default); MHSA possible in stages 3 and 4, strided in
    stage 3 when `stride_attention`."""
    if downsampling not in DOWNSAMPLING:
        raise UsageError(f"downsampling must be one of {', '.join(DOWNSAMPLING)}, not {downsampling!r}")
    grid = grid_size(grid_size(img_size, 2), 2)
    plans = []
    for i in range(4):
        in_grid = grid
        if i > 0:
            grid = grid_size(grid, 2)
        downsample = None if i == 0 else (downsampling if i == 3 else "conv")
        plans.append(StagePlan(i, 2 ** (i + 2), in_grid, grid, downsample, i in ATTENTION_STAGES,
                               2 if i == 2 and stride_attention else 1))
    return tuple(plans)


def feature_grids(height: int, width: int) -> list[tuple[int, int]]:
    """(h, w) token grid of each stage's output for an input of height x width (any size)."""
    h, w = grid_size(grid_size(height, 2), 2), grid_size(grid_size(width, 2), 2)
    out = [(h, w)]
    for _ in range(3):
        h, w = grid_size(h, 2), grid_size(w, 2)
        out.append((h, w))
    return out


@dataclass(frozen=True)
class StageArch:
    """One stage: `width` channels, one FFN expansion ratio per block (the depth is their number),
    and `attention` trailing blocks that carry MHSA before their FFN (stages 3 and 4 only)."""

    width: int
    expansions: tuple[float, ...]
    attention: int = 0

    @property
    def depth(self) -> int:
        return len(self.expansions)


# design switches of the paper's Section 3 (Tables 1 and 7): name -> accepted values; the first
# value is the paper's choice and the default
SWITCHES: dict[str, tuple[Any, ...]] = {
    "attention_bias": (True, False),      # learned offset bias in the attention logits (Table 7)
    "talking_heads": (True, False),       # 1x1 convs across heads around the softmax (Sec. 3.3)
    "local_v": (True, False),             # 3x3 depth-wise conv on V (locality in V, Sec. 3.3)
    "stride_attention": (True, False),    # stage-3 MHSA on a stride-2 grid, else full resolution (Sec. 3.4)
    "downsampling": DOWNSAMPLING,         # stage 3->4: conv + attention (dual), attention, conv (Sec. 3.5)
}
_ARCH_KEYS = ("widths", "depths", "expansions", "attention", "stem_width", "drop_path_rate")


@dataclass(frozen=True)
class Arch:
    """Architecture of an EfficientFormerV2 network: four stages, a stem width and the design
    switches of the paper's Section 3 (defaults: the paper's choices, see `SWITCHES`).

    Build from a dict with `Arch.from_dict({"widths": [...], "expansions": [[...], ...],
    "attention": [0, 0, 2, 2]})` ("depths" optional, checked against the expansions), or on top of
    a variant: `Arch.from_dict({"base": "s1", "attention_bias": False})`.
    """

    stages: tuple[StageArch, ...]
    stem_width: int = 0  # 0: half of the first stage width
    drop_path_rate: float = 0.0
    attention_bias: bool = True
    talking_heads: bool = True
    local_v: bool = True
    stride_attention: bool = True
    downsampling: str = "dual"

    def __post_init__(self) -> None:
        if len(self.stages) != 4:
            raise UsageError(f"EfficientFormerV2 has 4 stages, the architecture gives {len(self.stages)}")
        for name, accepted in SWITCHES.items():
            value = getattr(self, name)
            if value not in accepted or type(value) is not type(accepted[0]):
                raise UsageError(f"architecture switch {name}={value!r} is not accepted; use one of "
                                 f"{', '.join(map(repr, accepted))}")
        for i, s in enumerate(self.stages):
            if s.width <= 0 or s.depth < 1:
                raise UsageError(f"stage {i + 1}: width must be > 0 and depth >= 1, got width "
                                 f"{s.width} and {s.depth} blocks")
            if any(e <= 0 for e in s.expansions):
                raise UsageError(f"stage {i + 1}: expansion ratios must be > 0, got {list(s.expansions)}")
            if not 0 <= s.attention <= s.depth:
                raise UsageError(f"stage {i + 1}: {s.attention} attention blocks but only {s.depth} blocks")
            if i not in ATTENTION_STAGES and s.attention:
                raise UsageError(f"stage {i + 1}: attention blocks are only possible in stages 3 and 4")
        if self.stem_width == 0:
            object.__setattr__(self, "stem_width", self.stages[0].width // 2)

    @property
    def widths(self) -> list[int]:
        return [s.width for s in self.stages]

    @property
    def depths(self) -> list[int]:
        return [s.depth for s in self.stages]

    @property
    def switches(self) -> dict[str, Any]:
        """The design switches and their values."""
        return {name: getattr(self, name) for name in SWITCHES}

    def non_default_switches(self) -> dict[str, Any]:
        """The switches that differ from the paper's choice."""
        return {k: v for k, v in self.switches.items() if v != SWITCHES[k][0]}

    @property
    def attention_options(self) -> dict[str, bool]:
        """Keyword arguments of the attention modules."""
        return {"attention_bias": self.attention_bias, "talking_heads": self.talking_heads,
                "local_v": self.local_v}

    def plans(self, img_size: int = 224) -> tuple[StagePlan, ...]:
        """The stage layout (`stage_plans`) of this architecture at a training input side."""
        return stage_plans(img_size, self.stride_attention, self.downsampling)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Arch":
        """From `to_dict()` output, or `{"base": variant, ...overrides}`; unknown keys or values are
        errors that name them and list the accepted ones."""
        d = dict(d)
        accepted = ("base",) + _ARCH_KEYS + tuple(SWITCHES)
        unknown = sorted(set(d) - set(accepted))
        if unknown:
            raise UsageError(f"unknown architecture keys {unknown}; accepted: {', '.join(accepted)}")
        base = d.pop("base", None)
        if base is not None:
            if not isinstance(base, str):
                raise UsageError(f"architecture 'base' must be a variant name ({', '.join(VARIANTS)}), "
                                 f"not {base!r}")
            base_dict = resolve_arch(base).to_dict()
            if "expansions" in d and "depths" not in d:
                base_dict.pop("depths")
            if "widths" in d and "stem_width" not in d:
                base_dict.pop("stem_width")  # half the new first width
            d = {**base_dict, **d}
        missing = [k for k in ("widths", "expansions") if k not in d]
        if missing:
            raise UsageError(f"architecture needs {missing[0]!r}: widths (4 ints) and expansions "
                             "(4 lists, one ratio per block), or a 'base' variant")
        try:
            widths = [int(w) for w in d["widths"]]
            expansions = [tuple(e) for e in d["expansions"]]
            if not all(isinstance(r, (int, float)) and not isinstance(r, bool) for e in expansions for r in e):
                raise TypeError("expansion ratios must be numbers")
            attention = [int(a) for a in d.get("attention", [0, 0, 0, 0])]
            depths = [int(n) for n in d["depths"]] if "depths" in d else None
            stem_width, drop_path_rate = int(d.get("stem_width", 0)), float(d.get("drop_path_rate", 0.0))
        except (TypeError, ValueError):
            raise UsageError("architecture: widths and attention take 4 ints, expansions 4 lists of ratios "
                             "(one per block), stem_width an int and drop_path_rate a number; got "
                             f"{ {k: d[k] for k in _ARCH_KEYS if k in d} }") from None
        if not len(widths) == len(expansions) == len(attention):
            raise UsageError("widths, expansions and attention must each have one entry per stage")
        if depths is not None and depths != [len(e) for e in expansions]:
            raise UsageError(f"depths {depths} disagree with the number of expansion "
                             f"ratios per stage {[len(e) for e in expansions]}")
        stages = tuple(StageArch(w, e, a) for w, e, a in zip(widths, expansions, attention))
        switches = {k: d[k] for k in SWITCHES if k in d}
        return cls(stages, stem_width, drop_path_rate, **switches)

    def to_dict(self) -> dict[str, Any]:
        return {"widths": self.widths, "depths": self.depths,
                "expansions": [list(s.expansions) for s in self.stages],
                "attention": [s.attention for s in self.stages],
                "stem_width": self.stem_width, "drop_path_rate": self.drop_path_rate, **self.switches}


def resolve_arch(arch: Arch | Mapping[str, Any] | str) -> Arch:
    """An `Arch` from an Arch, a dict, or a variant name (s0, s1, s2, l or efficientformerv2_*)."""
    if isinstance(arch, Arch):
        return arch
    if isinstance(arch, str):
        key = arch.lower().removeprefix(MODEL_PREFIX)
        if key not in VARIANTS:
            raise UsageError(f"unknown EfficientFormerV2 variant {arch!r}; known: {sorted(VARIANTS)}")
        return VARIANTS[key]
    if isinstance(arch, Mapping):
        return Arch.from_dict(arch)
    raise TypeError(f"arch must be an Arch, a dict or a variant name, not {type(arch).__name__}")


# --------------------------------------------------------------------------------------------
# Variant table (paper Table 12; expansion ratios per block as released): the one place each
# released variant is named. The factories, `create_model`'s registry and `pretrained_cfg` derive
# from `RELEASED`.
# --------------------------------------------------------------------------------------------
MODEL_PREFIX = "efficientformerv2_"
HUB_TAG = "snap_dist_in1k"  # timm's tag of the official distilled ImageNet-1k weights


def _arch(widths: Sequence[int], expansions: Sequence[Sequence[float]], attention: Sequence[int],
          drop_path_rate: float) -> Arch:
    return Arch(tuple(StageArch(w, tuple(e), a) for w, e, a in zip(widths, expansions, attention)),
                drop_path_rate=drop_path_rate)


@dataclass(frozen=True)
class Variant:
    """A released variant: its short `key` ("s0"), architecture and the figures its factory's
    docstring quotes (parameters and MACs at 224)."""

    key: str
    arch: Arch
    summary: str

    @property
    def model_name(self) -> str:
        """Registered model name, e.g. "efficientformerv2_s0" (timm's name too)."""
        return MODEL_PREFIX + self.key

    @property
    def hf_hub_id(self) -> str:
        """Hugging Face Hub repository of the variant's ImageNet weights (timm's conversion of the
        official release, timm's key layout)."""
        return f"timm/{self.model_name}.{HUB_TAG}"


RELEASED: tuple[Variant, ...] = (
    Variant("s0", _arch([32, 48, 96, 176],
                        [[4, 4], [4, 4], [4, 3, 3, 3, 4, 4], [4, 3, 3, 4]], [0, 0, 2, 2], 0.0),
            "3.6M parameters, 0.40 GMACs at 224"),
    Variant("s1", _arch([32, 48, 120, 224],
                        [[4] * 3, [4] * 3, [4, 4, 3, 3, 3, 3, 4, 4, 4], [4, 4, 3, 3, 4, 4]], [0, 0, 2, 2], 0.0),
            "6.2M parameters, 0.65 GMACs at 224"),
    Variant("s2", _arch([32, 64, 144, 288],
                        [[4] * 4, [4] * 4, [4, 4] + [3] * 6 + [4] * 4, [4, 4, 3, 3, 3, 3, 4, 4]], [0, 0, 4, 4],
                        0.02),
            "12.7M parameters, 1.25 GMACs at 224"),
    Variant("l", _arch([40, 80, 192, 384],
                       [[4] * 5, [4] * 5, [4] * 4 + [3] * 7 + [4] * 4, [4, 4, 4] + [3] * 4 + [4] * 3], [0, 0, 6, 6],
                       0.1),
            "26.3M parameters, 2.56 GMACs at 224"),
)

VARIANTS: dict[str, Arch] = {v.key: v.arch for v in RELEASED}


def find_variant(arch: Arch) -> Variant | None:
    """The released variant whose network `arch` builds (its drop-path rate aside, which changes
    no weight), or None for any other architecture."""
    plain = dataclasses.replace(arch, drop_path_rate=0.0)
    for v in RELEASED:
        if dataclasses.replace(v.arch, drop_path_rate=0.0) == plain:
            return v
    return None
