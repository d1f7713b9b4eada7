"""Slimmable EfficientFormerV2 supernet (paper Sec. 4.2.2).

Every stage has elastic depth (any block can be switched off; a switched-off residual block
passes its input on; the stem and the downsampling layers always run and no stage goes below one
block), elastic width (a set of channel counts per stage, and for the stem) and an elastic
expansion ratio per FFN (the width of its 3x3 depth-wise conv). In stages 3 and 4 every block is
MHSA followed by FFN; a sub-network keeps the MHSA of its last `attention` kept blocks, which is
the layout of the plain model, so every sub-network is an ordinary `EfficientFormerV2(arch)`.

Weights are shared: a layer running at c channels uses the first c filters (and the first c
input channels of the next layer; layer-scale vectors and heads are sliced alike). Every
channel count has its own BatchNorm (switchable normalisation, keyed by the channel count), so
the supernet's state dict holds `...bn.<channels>.weight` where the plain model has
`...bn.weight`.

    space = SearchSpace.default()                 # contains S0, S1, S2 and L
    net = EfficientFormerV2Supernet(space, num_classes=1000)
    net.set_subnet("s1")                           # a variant name, an Arch or a SubnetConfig
    logits = net(images)
    plain = net.extract("s1")                      # EfficientFormerV2 with copied weights
"""
from __future__ import annotations

import random
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import nn

from .arch import ATTENTION_STAGES, Arch, StageArch, StagePlan, resolve_arch, stage_plans
from .efficientformer_v2 import ClassifierForward, ConvMlp, Downsample, EfficientFormerV2
from .errors import UsageError
from .layers import Attention2d, ConvNorm, LayerScale

__all__ = ["SearchSpace", "StageConfig", "SubnetConfig", "EfficientFormerV2Supernet", "SwitchableBatchNorm2d",
           "ElasticConvNorm", "ATTENTION_STAGES", "count_subnet_params"]

# in stages 3 and 4 (ATTENTION_STAGES) every supernet block is MHSA + FFN


def _hidden(width: int, ratio: float) -> int:
    """FFN hidden width, the plain model's formula."""
    return int(width * ratio)


# --------------------------------------------------------------------------------------------
# Sub-network description
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageConfig:
    """One stage of a sub-network: its width, the supernet blocks it keeps (indices, increasing),
    one expansion ratio per kept block and how many of the last kept blocks keep their MHSA."""

    width: int
    blocks: tuple[int, ...]
    expansions: tuple[float, ...]
    attention: int = 0

    @property
    def depth(self) -> int:
        return len(self.blocks)


@dataclass(frozen=True)
class SubnetConfig:
    """A sub-network of the supernet. `to_arch()` is the plain architecture it equals."""

    stem_width: int
    stages: tuple[StageConfig, ...]

    def to_arch(self, drop_path_rate: float = 0.0) -> Arch:
        return Arch(tuple(StageArch(s.width, tuple(s.expansions), s.attention) for s in self.stages),
                    stem_width=self.stem_width, drop_path_rate=drop_path_rate)

    @classmethod
    def from_arch(cls, arch: Arch | Mapping[str, Any] | str) -> "SubnetConfig":
        """The canonical embedding of a plain architecture: stage j keeps its first d_j blocks."""
        arch = resolve_arch(arch)
        switched = arch.non_default_switches()
        if switched:
            raise UsageError(f"the supernet's search space has the paper's attention design; the architecture "
                             f"switches {switched} are not searchable: train that network on its own "
                             "(python -m classification fit with model.arch)")
        return cls(arch.stem_width, tuple(StageConfig(s.width, tuple(range(s.depth)), tuple(s.expansions),
                                                      s.attention) for s in arch.stages))

    def to_dict(self) -> dict[str, Any]:
        return {"stem_width": self.stem_width,
                "stages": [{"width": s.width, "blocks": list(s.blocks), "expansions": list(s.expansions),
                            "attention": s.attention} for s in self.stages]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SubnetConfig":
        """From `to_dict()` output, or from a plain architecture dict (widths/expansions/attention)."""
        if "stages" not in d:
            return cls.from_arch(Arch.from_dict(d))
        try:
            stages = tuple(StageConfig(int(s["width"]), tuple(int(b) for b in s["blocks"]),
                                       tuple(s["expansions"]), int(s.get("attention", 0)))
                           for s in d["stages"])
            return cls(int(d["stem_width"]), stages)
        except KeyError as e:
            raise UsageError(f"sub-network config needs {e.args[0]!r}: stem_width and stages, each with "
                             "width, blocks, expansions and attention") from None


def as_subnet_config(config: SubnetConfig | Arch | Mapping[str, Any] | str) -> SubnetConfig:
    """A `SubnetConfig` from a config, an `Arch`, a dict of either, or a variant name."""
    if isinstance(config, SubnetConfig):
        return config
    if isinstance(config, Mapping):
        return SubnetConfig.from_dict(config)
    return SubnetConfig.from_arch(config)


# --------------------------------------------------------------------------------------------
# Search space
# --------------------------------------------------------------------------------------------
def _steps(lo: int, hi: int, step: int = 8) -> tuple[int, ...]:
    return tuple(range(lo, hi + 1, step))


@dataclass(frozen=True)
class SearchSpace:
    """Choices of the supernet: per stage the widths and the maximum depth, the FFN expansion
    ratios and the stem widths (all sorted ascending; the largest of each builds the weights)."""

    widths: tuple[tuple[int, ...], ...]
    depths: tuple[int, ...]
    expansions: tuple[float, ...]
    stem_widths: tuple[int, ...]

    def __post_init__(self) -> None:
        widths = tuple(tuple(sorted(set(int(c) for c in w))) for w in self.widths)
        object.__setattr__(self, "widths", widths)
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        object.__setattr__(self, "expansions", tuple(sorted(set(self.expansions))))
        object.__setattr__(self, "stem_widths", tuple(sorted(set(int(c) for c in self.stem_widths))))
        if len(self.widths) != 4 or len(self.depths) != 4:
            raise UsageError(f"a search space has 4 stages: got {len(self.widths)} width sets and "
                             f"{len(self.depths)} depths")
        if any(not w or w[0] <= 0 for w in self.widths) or not self.stem_widths or self.stem_widths[0] <= 0:
            raise UsageError("every stage and the stem need at least one positive width")
        if any(d < 1 for d in self.depths):
            raise UsageError(f"maximum depths must be >= 1, got {list(self.depths)}")
        if not self.expansions or self.expansions[0] <= 0:
            raise UsageError(f"expansion ratios must be positive, got {list(self.expansions)}")

    @classmethod
    def default(cls) -> "SearchSpace":
        """The paper-scale space: contains S0, S1, S2 and L (widths in steps of 8)."""
        return cls(widths=(_steps(24, 40), _steps(32, 80), _steps(80, 192), _steps(160, 384)),
                   depths=(5, 5, 15, 10), expansions=(2, 3, 4), stem_widths=(12, 16, 20))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SearchSpace":
        unknown = set(d) - {"widths", "depths", "expansions", "stem_widths"}
        if unknown:
            raise UsageError(f"unknown search-space keys {sorted(unknown)}; expected widths (4 lists), "
                             "depths (4 ints), expansions, stem_widths")
        try:
            return cls(tuple(tuple(w) for w in d["widths"]), tuple(d["depths"]), tuple(d["expansions"]),
                       tuple(d["stem_widths"]))
        except KeyError as e:
            raise UsageError(f"search space needs {e.args[0]!r}") from None

    def to_dict(self) -> dict[str, Any]:
        return {"widths": [list(w) for w in self.widths], "depths": list(self.depths),
                "expansions": list(self.expansions), "stem_widths": list(self.stem_widths)}

    def hidden_choices(self, stage: int) -> tuple[int, ...]:
        return tuple(sorted({_hidden(w, e) for w in self.widths[stage] for e in self.expansions}))

    # -- sub-networks ----------------------------------------------------------------------------
    def largest(self) -> SubnetConfig:
        """All blocks (with MHSA in stages 3 and 4), the largest widths and expansions."""
        return SubnetConfig(self.stem_widths[-1], tuple(
            StageConfig(self.widths[j][-1], tuple(range(d)), (self.expansions[-1],) * d,
                        d if j in ATTENTION_STAGES else 0) for j, d in enumerate(self.depths)))

    def smallest(self) -> SubnetConfig:
        """One block per stage (no MHSA), the smallest widths and expansions."""
        return SubnetConfig(self.stem_widths[0], tuple(
            StageConfig(self.widths[j][0], (0,), (self.expansions[0],), 0) for j in range(4)))

    def sample(self, rng: random.Random) -> SubnetConfig:
        """A uniformly drawn sub-network: per stage a width, a depth, which blocks (any subset of
        that size, as drop path would leave), per block an expansion, and the MHSA count."""
        stages = []
        for j, max_depth in enumerate(self.depths):
            depth = rng.randint(1, max_depth)
            blocks = tuple(sorted(rng.sample(range(max_depth), depth)))
            expansions = tuple(rng.choice(self.expansions) for _ in blocks)
            attention = rng.randint(0, depth) if j in ATTENTION_STAGES else 0
            stages.append(StageConfig(rng.choice(self.widths[j]), blocks, expansions, attention))
        return SubnetConfig(rng.choice(self.stem_widths), tuple(stages))

    def validate(self, config: SubnetConfig) -> None:
        """Raise ValueError, saying what is wrong, unless `config` is a sub-network of this space."""
        if config.stem_width not in self.stem_widths:
            raise UsageError(f"stem width {config.stem_width} is not a choice of the space {list(self.stem_widths)}")
        if len(config.stages) != 4:
            raise UsageError(f"a sub-network has 4 stages, got {len(config.stages)}")
        for j, s in enumerate(config.stages):
            where = f"stage {j + 1}"
            if s.width not in self.widths[j]:
                raise UsageError(f"{where}: width {s.width} is not a choice {list(self.widths[j])}")
            if not s.blocks:
                raise UsageError(f"{where}: a stage keeps at least one block")
            if list(s.blocks) != sorted(set(s.blocks)) or s.blocks[0] < 0 or s.blocks[-1] >= self.depths[j]:
                raise UsageError(f"{where}: blocks {list(s.blocks)} must be distinct increasing indices "
                                 f"in 0..{self.depths[j] - 1}")
            if len(s.expansions) != len(s.blocks):
                raise UsageError(f"{where}: {len(s.blocks)} blocks but {len(s.expansions)} expansion ratios")
            bad = [e for e in s.expansions if e not in self.expansions]
            if bad:
                raise UsageError(f"{where}: expansion ratios {bad} are not choices {list(self.expansions)}")
            limit = len(s.blocks) if j in ATTENTION_STAGES else 0
            if not 0 <= s.attention <= limit:
                raise UsageError(f"{where}: attention must lie in 0..{limit}, got {s.attention}")


# --------------------------------------------------------------------------------------------
# Elastic layers
# --------------------------------------------------------------------------------------------
class SwitchableBatchNorm2d(nn.ModuleDict):
    """One BatchNorm2d per channel count; the input's channel count picks which one runs."""

    def __init__(self, channels: Iterable[int]) -> None:
        super().__init__({str(c): nn.BatchNorm2d(c) for c in sorted(set(channels))})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = str(x.shape[1])
        if key not in self:
            raise ValueError(f"no BatchNorm for {x.shape[1]} channels; the layer has {list(self.keys())}")
        return self[key](x)


class ElasticConvNorm(nn.Module):
    """A `ConvNorm` running on the first input channels it receives and producing the first
    `out_channels` filters (depth-wise: as many as it receives), with switchable BatchNorm."""

    def __init__(self, src: ConvNorm, out_choices: Iterable[int] | None = None) -> None:
        super().__init__()
        self.conv = src.conv
        c = src.conv
        self.depthwise = c.groups > 1 and c.groups == c.in_channels == c.out_channels
        if c.groups > 1 and not self.depthwise:
            raise ValueError("only dense and depth-wise convolutions can be elastic")
        choices = sorted(set(out_choices)) if out_choices is not None else [c.out_channels]
        if choices[-1] != c.out_channels:
            raise ValueError(f"largest channel choice {choices[-1]} must equal the layer's {c.out_channels}")
        self.bn = SwitchableBatchNorm2d(choices)
        self.out_channels = c.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, cin = self.conv, x.shape[1]
        if self.depthwise:
            cout, weight, groups = cin, c.weight[:cin], cin
        else:
            cout, weight, groups = self.out_channels, c.weight[:self.out_channels, :cin], 1
        bias = c.bias[:cout] if c.bias is not None else None
        return self.bn(F.conv2d(x, weight, bias, c.stride, c.padding, c.dilation, groups))


class ElasticDepthwiseConv2d(nn.Conv2d):
    """A depth-wise convolution (no norm) running on as many channels as it receives."""

    @classmethod
    def from_conv(cls, src: nn.Conv2d) -> "ElasticDepthwiseConv2d":
        conv = cls(src.in_channels, src.out_channels, src.kernel_size, src.stride, src.padding,
                   src.dilation, src.groups, src.bias is not None, device="meta")
        conv.weight, conv.bias = src.weight, src.bias
        return conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cin = x.shape[1]
        bias = self.bias[:cin] if self.bias is not None else None
        return F.conv2d(x, self.weight[:cin], bias, self.stride, self.padding, self.dilation, cin)


class ElasticLayerScale(nn.Module):
    """Layer scale sliced to the input's channels."""

    def __init__(self, src: LayerScale) -> None:
        super().__init__()
        self.gamma = src.gamma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma[:x.shape[1]].view(1, -1, 1, 1)


class ElasticLinear(nn.Linear):
    """A linear layer reading the first input features it receives."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight[:, :x.shape[1]], self.bias)


def _elasticize(root: nn.Module, out_choices: Mapping[str, Iterable[int]]) -> nn.Module:
    """Replace, in place, every ConvNorm, depth-wise Conv2d and LayerScale under `root` by its
    elastic form. `out_choices` gives the channel counts of layers whose output is elastic (by
    name relative to `root`); other layers keep a fixed output (the attention head geometry)."""
    convnorms = {n for n, m in root.named_modules() if isinstance(m, ConvNorm)}
    unknown = set(out_choices) - convnorms
    if unknown:
        raise KeyError(f"no ConvNorm named {sorted(unknown)} under {type(root).__name__}")
    for name, module in list(root.named_modules()):
        parent_name, _, attr = name.rpartition(".")
        if not name or parent_name in convnorms:
            continue
        if isinstance(module, ConvNorm):
            new: nn.Module = ElasticConvNorm(module, out_choices.get(name))
        elif isinstance(module, LayerScale):
            new = ElasticLayerScale(module)
        elif isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels:
            new = ElasticDepthwiseConv2d.from_conv(module)
        else:
            continue
        setattr(root.get_submodule(parent_name) if parent_name else root, attr, new)
    return root


# --------------------------------------------------------------------------------------------
# Blocks and stages
# --------------------------------------------------------------------------------------------
class ElasticBlock(nn.Module):
    """Supernet block: optional MHSA (kept or skipped per sub-network) then the elastic FFN.
    Module names equal the plain `EfficientFormerV2Block`'s."""

    def __init__(self, widths: Sequence[int], hidden: Sequence[int], attention: bool, resolution: int,
                 attn_stride: int, drop: float, drop_path: float, layer_scale_init: float) -> None:
        super().__init__()
        dim = max(widths)
        if attention:
            self.token_mixer = _elasticize(Attention2d(dim, resolution, stride=attn_stride),
                                           {"proj": widths, **({"stride_conv": widths} if attn_stride == 2 else {})})
            self.ls1 = ElasticLayerScale(LayerScale(dim, layer_scale_init))
            self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        else:
            self.token_mixer = None
        self.mlp = _elasticize(ConvMlp(dim, max(hidden), drop=drop), {"fc1": hidden, "mid": hidden, "fc2": widths})
        self.ls2 = ElasticLayerScale(LayerScale(dim, layer_scale_init))
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.use_attention = attention

    def configure(self, width: int, expansion: float, attention: bool) -> None:
        if attention and self.token_mixer is None:
            raise ValueError("this block has no MHSA")
        self.use_attention = attention
        if self.token_mixer is not None:
            self.token_mixer.proj.out_channels = width
        self.mlp.fc1.out_channels = _hidden(width, expansion)
        self.mlp.fc2.out_channels = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_attention:
            x = x + self.drop_path1(self.ls1(self.token_mixer(x)))
        return x + self.drop_path2(self.ls2(self.mlp(x)))


class ElasticStage(nn.Module):
    """Downsampling (never skipped) then the kept blocks, in order."""

    def __init__(self, in_widths: Sequence[int], widths: Sequence[int], hidden: Sequence[int], depth: int,
                 plan: StagePlan, drop_path: Sequence[float], drop: float, layer_scale_init: float) -> None:
        super().__init__()
        if plan.downsample is None:
            self.downsample = None
        else:
            ds = Downsample(max(in_widths), max(widths), plan.in_grid, mode=plan.downsample)
            elastic = {name: widths for name, part in (("conv", ds.conv), ("attn.proj", ds.attn)) if part is not None}
            self.downsample = _elasticize(ds, elastic)
        self.blocks = nn.ModuleList(
            ElasticBlock(widths, hidden, plan.attention, plan.grid, plan.attn_stride, drop, drop_path[i],
                         layer_scale_init)
            for i in range(depth))
        self.active: tuple[int, ...] = tuple(range(depth))

    def configure(self, stage: StageConfig) -> None:
        if self.downsample is not None:
            if self.downsample.conv is not None:
                self.downsample.conv.out_channels = stage.width
            if self.downsample.attn is not None:
                self.downsample.attn.proj.out_channels = stage.width
        first_mhsa = stage.depth - stage.attention
        for k, (i, e) in enumerate(zip(stage.blocks, stage.expansions)):
            self.blocks[i].configure(stage.width, e, k >= first_mhsa)
        self.active = tuple(stage.blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        for i in self.active:
            x = self.blocks[i](x)
        return x


# --------------------------------------------------------------------------------------------
# Supernet
# --------------------------------------------------------------------------------------------
class EfficientFormerV2Supernet(ClassifierForward, nn.Module):
    """Weight-sharing EfficientFormerV2 supernet over a `SearchSpace`.

    Args:
        space: a `SearchSpace` or its dict (None: `SearchSpace.default()`).
        num_classes, distillation, img_size, drop_rate, layer_scale_init: as in `EfficientFormerV2`;
            `extract` builds the plain model with the same values.
        drop_path_rate: stochastic depth over the supernet's blocks (linear in block index).

    `set_subnet(config)` selects the sub-network every later forward runs (the largest one after
    construction); `extract(config)` returns it as a plain `EfficientFormerV2` with copied
    weights and equal outputs (in eval mode).
    """

    def __init__(self, space: SearchSpace | Mapping[str, Any] | None = None, num_classes: int = 1000,
                 distillation: bool = True, img_size: int = 224, drop_path_rate: float = 0.0,
                 drop_rate: float = 0.0, layer_scale_init: float = 1e-5) -> None:
        super().__init__()
        if space is None:
            space = SearchSpace.default()
        elif isinstance(space, Mapping):
            space = SearchSpace.from_dict(space)
        self.space = space
        self.num_classes = num_classes
        self.distillation = distillation
        self.img_size = img_size
        self.drop_rate = drop_rate
        self.layer_scale_init = layer_scale_init
        self.distilled_training = False
        w = space.widths

        stem = ConvNorm(3, max(space.stem_widths), 3, stride=2, padding=1)
        stem2 = ConvNorm(max(space.stem_widths), max(w[0]), 3, stride=2, padding=1)
        self.stem = nn.Sequential()
        self.stem.add_module("conv1", ElasticConvNorm(stem, space.stem_widths))
        self.stem.add_module("act1", nn.GELU())
        self.stem.add_module("conv2", ElasticConvNorm(stem2, w[0]))
        self.stem.add_module("act2", nn.GELU())

        total = sum(space.depths)
        dpr = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        stages, prev, start = [], w[0], 0
        for j, (depth, plan) in enumerate(zip(space.depths, stage_plans(img_size))):
            stages.append(ElasticStage(prev, w[j], space.hidden_choices(j), depth, plan, dpr[start:start + depth],
                                       drop_rate, layer_scale_init))
            prev, start = w[j], start + depth
        self.stages = nn.ModuleList(stages)
        self.num_features = max(w[3])
        self.norm = SwitchableBatchNorm2d(w[3])
        self.head = ElasticLinear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.head_dist = ((ElasticLinear(self.num_features, num_classes) if num_classes > 0 else nn.Identity())
                          if distillation else None)
        for m in (self.head, self.head_dist):
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.config = space.largest()
        self.set_subnet(self.config)

    # -- sub-networks --------------------------------------------------------------------------
    def set_subnet(self, config: SubnetConfig | Arch | Mapping[str, Any] | str) -> SubnetConfig:
        """Run `config` (a SubnetConfig, an Arch, a dict of either or a variant name) from now on."""
        config = as_subnet_config(config)
        self.space.validate(config)
        self.stem.conv1.out_channels = config.stem_width
        self.stem.conv2.out_channels = config.stages[0].width
        for stage, stage_config in zip(self.stages, config.stages):
            stage.configure(stage_config)
        self.config = config
        return config

    def forward(self, x: torch.Tensor):
        return self.forward_head(self.forward_features(x))

    def plain_model(self, config: SubnetConfig | Arch | Mapping[str, Any] | str,
                    device: torch.device | str | None = None) -> EfficientFormerV2:
        """The plain `EfficientFormerV2` of `config` with fresh weights (same head and img_size)."""
        config = as_subnet_config(config)
        self.space.validate(config)
        with torch.device(device) if device is not None else nullcontext():
            return EfficientFormerV2(config.to_arch(), num_classes=self.num_classes,
                                     distillation=self.distillation, img_size=self.img_size,
                                     drop_rate=self.drop_rate, layer_scale_init=self.layer_scale_init)

    def count_params(self, config: SubnetConfig | Arch | Mapping[str, Any] | str | None = None) -> int:
        """Parameters of the plain model `extract(config)` returns (default: the current sub-network)."""
        config = self.config if config is None else as_subnet_config(config)
        return count_subnet_params(config, self.num_classes, self.distillation, self.img_size)

    @torch.no_grad()
    def extract(self, config: SubnetConfig | Arch | Mapping[str, Any] | str | None = None) -> EfficientFormerV2:
        """The sub-network `config` (default: the current one) as a plain `EfficientFormerV2` with
        the supernet's weights and the running statistics of its widths' BatchNorms."""
        config = self.config if config is None else as_subnet_config(config)
        device = next(self.parameters()).device
        plain = self.plain_model(config, device=device)
        bn_names = {n for n, m in plain.named_modules() if isinstance(m, nn.BatchNorm2d)}
        bn_channels = {n: m.num_features for n, m in plain.named_modules() if isinstance(m, nn.BatchNorm2d)}
        source = self.state_dict()
        target = plain.state_dict()
        for key, tensor in target.items():
            src = source[_supernet_key(key, config, bn_names, bn_channels)]
            tensor.copy_(src[tuple(slice(0, n) for n in tensor.shape)])
        plain.train(self.training)
        return plain


def _supernet_key(key: str, config: SubnetConfig, bn_names: set[str], bn_channels: Mapping[str, int]) -> str:
    """Map a plain-model state-dict key to the supernet key holding its (sliced) weights."""
    module, _, leaf = key.rpartition(".")
    parts = module.split(".")
    if len(parts) > 3 and parts[0] == "stages" and parts[2] == "blocks":
        parts[3] = str(config.stages[int(parts[1])].blocks[int(parts[3])])
    if module in bn_names:
        parts.append(str(bn_channels[module]))
    return ".".join(parts + [leaf])


def count_subnet_params(config: SubnetConfig | Arch | Mapping[str, Any] | str, num_classes: int = 1000,
                        distillation: bool = True, img_size: int = 224) -> int:
    """Parameters of the plain model of `config` (built on the meta device: no memory, no init)."""
    arch = as_subnet_config(config).to_arch()
    with torch.device("meta"):
        model = EfficientFormerV2(arch, num_classes=num_classes, distillation=distillation, img_size=img_size)
    return sum(p.numel() for p in model.parameters())
