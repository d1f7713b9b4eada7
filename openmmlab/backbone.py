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

from backbones import EfficientFormerV2 as _EfficientFormerV2
from backbones import load_checkpoint

from .datasets import ConfigError

__all__ = ["EfficientFormerV2"]


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
        img_size: the classification resolution of the pretrained weights; it sets the grid of
            the attention-bias tables (224 for ImageNet checkpoints). Inputs of any size work.
        with_cp: gradient checkpointing (mmdet's and mmseg's name for it): the blocks of each
            stage keep no activations in training and recompute them in the backward pass
            (`set_grad_checkpointing`); same outputs and gradients, less memory, more time.
        init_cfg: ``dict(type='Pretrained', checkpoint=SPEC[, strict=True])`` loads ImageNet
            weights of the project, the official release, timm, Lightning or mmengine through
            `backbones.load_checkpoint` (classifier dropped); SPEC is a local file or a hub
            spec ``hf-hub:ORG/REPO`` (e.g. ``hf-hub:timm/efficientformerv2_s0.snap_dist_in1k``,
            read from huggingface_hub's cache, fetched when missing). With strict (default)
            any missing, unexpected or mismatched key raises `backbones.CheckpointError`;
            otherwise they are logged as a warning.
    """

    def __init__(self, arch: str | Mapping[str, Any] = "s0", out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1, norm_eval: bool = False, drop_path_rate: float | None = None,
                 img_size: int = 224, with_cp: bool = False, init_cfg: dict | None = None) -> None:
        if init_cfg is not None and init_cfg.get("type") == "Pretrained" and not init_cfg.get("checkpoint"):
            raise ConfigError("init_cfg=dict(type='Pretrained') needs checkpoint=PATH (a local file or "
                              "hf-hub:ORG/REPO) to ImageNet weights")
        super().__init__(init_cfg=init_cfg)
        if not -1 <= frozen_stages <= 4:
            raise ConfigError(f"frozen_stages must be in -1..4 (4 = every stage), got {frozen_stages}")
        self.body = _EfficientFormerV2(dict(arch) if isinstance(arch, Mapping) else arch, features_only=True,
                                       out_indices=out_indices, drop_path_rate=drop_path_rate, img_size=img_size)
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
            report = load_checkpoint(self.body, cfg["checkpoint"], classifier="drop", strict=strict, fuse=False)
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
