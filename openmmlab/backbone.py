"""The project's EfficientFormerV2 as an OpenMMLab backbone (MMDetection and MMSegmentation).

One implementation: `backbones.EfficientFormerV2(features_only=True)` inside an mmengine
`BaseModule`, registered once as ``EfficientFormerV2`` in mmengine's root `MODELS`. mmdet's and
mmseg's `MODELS` are children of that registry and look a type up in their parent when they do
not hold it themselves, so both scopes build it without this module importing either package
(configs load it with ``custom_imports = dict(imports=['openmmlab'])``).
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import torch
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmengine.registry import MODELS
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from backbones import CheckpointError
from backbones import EfficientFormerV2 as _EfficientFormerV2
from backbones import load_checkpoint, to_project_keys
from backbones.checkpoint import HEAD_PREFIXES
from backbones.dense_bias import BIAS_MODES, bias_mode, checkpoint_bias_mode, match_bias_mode

from .datasets import ConfigError

__all__ = ["EfficientFormerV2", "to_backbone_keys"]

_BODY = "body."


def to_backbone_keys(state_dict: Mapping[str, torch.Tensor],
                     prefix: str = "") -> tuple[dict[str, torch.Tensor], str | None]:
    """`state_dict` with the keys under `prefix` (e.g. ``"backbone."`` of a detector) in this
    backbone's layout (``prefix + "body." + project key``): the official release's layout (also of
    its dense backbones: ``patch_embed.*``, ``network.N.*``, layer scales (C, 1, 1),
    ``attention_biases_seg``), timm's and the classification package's are converted and a
    classifier's heads and final norm dropped (`backbones.to_project_keys`). Keys elsewhere are
    kept. Returns (state dict, the converted layout or None when nothing was converted)."""
    out = dict(state_dict)
    foreign = {k[len(prefix):]: v for k, v in state_dict.items()
               if k.startswith(prefix) and not k[len(prefix):].startswith(_BODY)}
    if not foreign:
        return out, None
    try:
        converted, fmt = to_project_keys(foreign)
    except CheckpointError:
        return out, None  # not an EfficientFormerV2 layout: the loader reports the keys as they are
    for k in foreign:
        out.pop(prefix + k)
    for k, v in converted.items():
        if not k.startswith(HEAD_PREFIXES + ("norm.",)):
            out[prefix + _BODY + k] = v
    return out, fmt


def _convert_on_load(module: "EfficientFormerV2", state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
                     missing_keys: list, unexpected_keys: list, error_msgs: list) -> None:
    """`load_state_dict` pre-hook (torch's and mmengine's loaders call it before the backbone's
    children read their keys): the backbone's keys converted in place (`to_backbone_keys`), and
    the bias mode and grids taken from the checkpoint's tables (`match_bias_mode`)."""
    converted, fmt = to_backbone_keys(state_dict, prefix)
    if fmt is not None:
        state_dict.clear()
        state_dict.update(converted)
    body = {k[len(prefix + _BODY):]: v for k, v in state_dict.items() if k.startswith(prefix + _BODY)}
    found = checkpoint_bias_mode(body)
    if found is None or found[0] == module.bias_mode and (found[0] == "offset" or found[1] == module.body.img_size):
        return
    if torch.distributed.is_available() and torch.distributed.is_initialized() and \
            torch.distributed.get_world_size() > 1:
        # a distributed wrapper has registered the parameters already: they cannot change shape now
        raise CheckpointError(f"the checkpoint's backbone has {found[0]} attention-bias tables at img_size "
                              f"{found[1]}: set model.backbone.bias_mode='{found[0]}' and "
                              f"model.backbone.img_size={found[1]} in the config")
    note = match_bias_mode(module.body, body)
    if note:
        print_log(f"EfficientFormerV2: {note}", logger="current")


@MODELS.register_module()
class EfficientFormerV2(BaseModule):
    """EfficientFormerV2 backbone returning the stage outputs (strides 4, 8, 16, 32).

    Args:
        arch: variant name ("s0", "s1", "s2", "l" or "efficientformerv2_*") or an architecture
            dict (`backbones.Arch.from_dict`: widths, expansions, attention).
        out_indices: stages whose outputs are returned, in 0..3.
        frozen_stages: -1 trains everything; k >= 0 freezes the stem and the first k stages
            (eval mode, no gradients), as in mmdet's ResNet.
        norm_eval: keep every BatchNorm in eval mode and its affine parameters frozen.
        drop_path_rate: stochastic depth (None: the variant's own rate).
        img_size: the training resolution of the attention-bias tables: in "offset" mode the
            classification resolution of the pretrained weights (224 for ImageNet checkpoints),
            in "dense" mode the dense training resolution (800 for the official COCO weights,
            512 for the ADE20K ones). Inputs of any size work.
        bias_mode: "offset" (default: the project's attention bias, its offset tables resampled
            to each feature map's grid; the choice for training from ImageNet weights) or
            "dense" (the official detection/segmentation backbones' bias: tables of their own at
            the grids of `img_size`, the N x N matrix resized bicubically to each map's token
            counts; `backbones.dense_bias`). Loading a checkpoint with official dense tables
            switches the backbone to "dense" at the checkpoint's resolution by itself, in every
            loading path (init_cfg, load_from, resume, the inferencers' weights).
        with_cp: gradient checkpointing (mmdet's and mmseg's name for it): the blocks of each
            stage keep no activations in training and recompute them in the backward pass
            (`set_grad_checkpointing`); same outputs and gradients, less memory, more time.
        init_cfg: ``dict(type='Pretrained', checkpoint=SPEC[, strict=True])`` loads ImageNet
            weights of the project, the official release, timm, Lightning or mmengine through
            `backbones.load_checkpoint` (classifier dropped); SPEC is a local file or a hub
            spec ``hf-hub:ORG/REPO`` (e.g. ``hf-hub:timm/efficientformerv2_s0.snap_dist_in1k``,
            read from huggingface_hub's cache, fetched when missing). With strict (default)
            any missing, unexpected or mismatched key raises `backbones.CheckpointError`;
            otherwise they are logged as a warning. A whole official detector or segmentor file
            works too (its backbone is taken). In "dense" mode ImageNet tables are not used: the
            dense tables start from zero, as in the official dense training.

    Whatever loads a state dict into a model holding this backbone (mmengine's `load_from`,
    `resume`, `load_checkpoint`, the inferencers) finds the backbone's keys converted under its
    prefix first (`to_backbone_keys`): the official layout (``backbone.patch_embed.*``,
    ``backbone.network.N.*``), timm's and the classification package's.
    """

    def __init__(self, arch: str | Mapping[str, Any] = "s0", out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1, norm_eval: bool = False, drop_path_rate: float | None = None,
                 img_size: int = 224, with_cp: bool = False, bias_mode: str = "offset",
                 init_cfg: dict | None = None) -> None:
        if init_cfg is not None and init_cfg.get("type") == "Pretrained" and not init_cfg.get("checkpoint"):
            raise ConfigError("init_cfg=dict(type='Pretrained') needs checkpoint=PATH (a local file or "
                              "hf-hub:ORG/REPO) to ImageNet weights")
        super().__init__(init_cfg=init_cfg)
        if not -1 <= frozen_stages <= 4:
            raise ConfigError(f"frozen_stages must be in -1..4 (4 = every stage), got {frozen_stages}")
        if bias_mode not in BIAS_MODES:
            raise ConfigError(f"bias_mode must be one of {', '.join(BIAS_MODES)}, not {bias_mode!r}")
        self.body = _EfficientFormerV2(dict(arch) if isinstance(arch, Mapping) else arch, features_only=True,
                                       out_indices=out_indices, drop_path_rate=drop_path_rate, img_size=img_size,
                                       bias_mode=bias_mode)
        self.out_indices = self.body.out_indices
        self.widths = [self.body.feature_info[i]["num_chs"] for i in self.out_indices]
        self.strides = [self.body.feature_info[i]["reduction"] for i in self.out_indices]
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.with_cp = bool(with_cp)
        self.body.set_grad_checkpointing(self.with_cp)
        if norm_eval:
            for m in self.body.modules():
                if isinstance(m, _BatchNorm):
                    for p in m.parameters():
                        p.requires_grad_(False)
        # stages after the last returned one never run: without gradients, or DDP waits for theirs
        for stage in self.body.stages[max(self.out_indices) + 1:]:
            stage.requires_grad_(False)
        self._freeze_stages()
        self.register_load_state_dict_pre_hook(_convert_on_load)

    @property
    def bias_mode(self) -> str:
        """The attention bias in use: "offset" or "dense" (`backbones.dense_bias`)."""
        return bias_mode(self.body)

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.body.stem, *self.body.stages[:self.frozen_stages]]

    def _freeze_stages(self) -> None:
        for m in self._frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)

    def init_weights(self) -> None:
        """Load the Pretrained checkpoint with the project's loader (reports missing keys)."""
        cfg = self.init_cfg
        if isinstance(cfg, Mapping) and cfg.get("type") == "Pretrained":
            strict = bool(cfg.get("strict", True))
            # no fuse() here: it would swap the parameters the optimizer (built before) holds
            report = load_checkpoint(self.body, cfg["checkpoint"], classifier="drop", strict=strict, fuse=False,
                                     keep_dense_bias=True)
            print_log(f"EfficientFormerV2: loaded {cfg['checkpoint']} ({report})", logger="current",
                      level=logging.INFO if report.ok else logging.WARNING)
            self._is_init = True
            return
        super().init_weights()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.body(x))

    def train(self, mode: bool = True) -> "EfficientFormerV2":
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self
