"""Safe checkpoint reading and loading for EfficientFormerV2.

Reads the project's own checkpoints (safetensors or a plain state dict), Lightning checkpoints of
the classification package, mmengine checkpoints, the official snap-research release
(`{"model": state_dict}` with its own key names) and timm checkpoints. Files are untrusted: they
are read with `torch.load(weights_only=True)` or safetensors, never unpickled freely.
"""
from __future__ import annotations

import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import torch
from torch import nn

from .efficientformer_v2 import VARIANTS, Arch, EfficientFormerV2, StageArch

__all__ = ["CheckpointError", "LoadReport", "read_state_dict", "to_project_keys", "infer_arch",
           "is_deploy_state_dict", "load_checkpoint", "save_checkpoint", "describe_arch"]

HEAD_PREFIXES = ("head.", "head_dist.")
_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model; the message says what to do."""


@dataclass
class LoadReport:
    """What `load_checkpoint` did: key names that were missing, unexpected, of the wrong shape,
    or deliberately skipped (classifier dropped, heads a features-only model has no use for)."""

    source_format: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    fused: bool = False  # the model was turned into its deploy form to take deploy-form weights

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        parts = [f"format={self.source_format}"]
        for name in ("missing", "unexpected", "mismatched", "skipped"):
            keys = getattr(self, name)
            if keys:
                shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
                parts.append(f"{name}: {shown}")
        return "; ".join(parts)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, unwrapped from the usual containers, safely loaded."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist (or is not a file)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty (0 bytes): the download or save "
                              "was interrupted; fetch or write it again")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    with path.open("rb") as f:
        head = f.read(64)
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save writes a zip archive (legacy: a pickle)
        text = head.decode("utf-8", "ignore")
        kind = "a text file" if b"\0" not in head and all(c.isprintable() or c.isspace() for c in text) \
            else "of an unknown binary format"
        raise CheckpointError(f"{path}: not a checkpoint: the file is {kind} (it starts with {head[:20]!r}); "
                              f"expected a file written by torch.save or a .safetensors file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused to load. The file holds Python objects other than tensors and plain "
            f"containers, which could run code when unpickled ({str(e).splitlines()[0]}). Only "
            "weights are accepted: if you trust the file, re-save just its state dict "
            "(torch.save(model.state_dict(), ...)) or convert it with tools/convert_checkpoint.py.") from e
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({e}); is the file "
                              f"truncated or of another kind? Expected one of {', '.join(_SUFFIXES)}") from e
    return unwrap_state_dict(obj, str(path))


def unwrap_state_dict(obj: Any, where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint object (`model`, `state_dict`, `model_ema`, ... keys)."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_ema", "state_dict_ema"):
            if key in obj and isinstance(obj[key], Mapping):
                return unwrap_state_dict(obj[key], where)
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise CheckpointError(f"{where}: no state dict found (expected a mapping of tensors, or one "
                          "under 'state_dict' or 'model')")


# --------------------------------------------------------------------------------------------
# Key conversion: official snap-research layout -> project (= timm) layout
# --------------------------------------------------------------------------------------------
_OFFICIAL_STEM = {"patch_embed.0.": "stem.conv1.conv.", "patch_embed.1.": "stem.conv1.bn.",
                  "patch_embed.3.": "stem.conv2.conv.", "patch_embed.4.": "stem.conv2.bn."}
_OFFICIAL_INNER = [  # (pattern, replacement) inside a block or downsample, applied in order
    (r"q\.local\.0\.", "q.local."), (r"q\.proj\.0\.", "q.proj.conv."), (r"q\.proj\.1\.", "q.proj.bn."),
    (r"mlp\.fc1\.", "mlp.fc1.conv."), (r"mlp\.norm1\.", "mlp.fc1.bn."),
    (r"mlp\.mid\.", "mlp.mid.conv."), (r"mlp\.mid_norm\.", "mlp.mid.bn."),
    (r"mlp\.fc2\.", "mlp.fc2.conv."), (r"mlp\.norm2\.", "mlp.fc2.bn."),
    (r"\b(q|k|v|v_local|stride_conv)\.0\.", r"\1.conv."), (r"\b(q|k|v|v_local|stride_conv)\.1\.", r"\1.bn."),
    (r"proj\.1\.", "proj.conv."), (r"proj\.2\.", "proj.bn."),
    (r"layer_scale_1$", "ls1.gamma"), (r"layer_scale_2$", "ls2.gamma"),
]


def _official_key(key: str) -> str | None:
    for old, new in _OFFICIAL_STEM.items():
        if key.startswith(old):
            return new + key[len(old):]
    if key.startswith("dist_head."):
        return "head_dist." + key[len("dist_head."):]
    m = re.match(r"network\.(\d+)\.(.*)", key)
    if not m:
        return key
    index, rest = int(m.group(1)), m.group(2)
    if rest.endswith("attention_bias_idxs"):
        return None  # derived buffer, recomputed here
    if index % 2 == 0:  # a stage: network.{2i}.{block}.
        block, rest = rest.split(".", 1)
        prefix = f"stages.{index // 2}.blocks.{block}."
    else:  # downsampling into stage (index + 1) // 2
        prefix = f"stages.{(index + 1) // 2}.downsample."
        rest = re.sub(r"^(proj|conv)\.", "conv.conv.", rest)
        rest = re.sub(r"^(norm|bn)\.", "conv.bn.", rest)
    if not rest.startswith("conv."):
        for pattern, repl in _OFFICIAL_INNER:
            rest = re.sub(pattern, repl, rest)
    return prefix + rest


_ANCHORS = ("stem.conv1.conv.weight", "patch_embed.0.weight")
_PREFERRED_PREFIXES = ("", "model.", "module.", "backbone.", "model.module.", "module.model.")


def _strip_wrapper_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep the network's keys under whatever prefix wraps them ("model." of a LightningModule,
    "backbone." of a detector, "module." of DDP, ...) and drop the wrapper's other members."""
    prefixes = [key[: -len(anchor)] for key in sd for anchor in _ANCHORS if key.endswith(anchor)]
    if prefixes:
        # a Lightning module may hold a teacher network too: the student ("model.") comes first
        prefix = min(prefixes, key=lambda p: (p not in _PREFERRED_PREFIXES, len(p)))
        return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return sd


def to_project_keys(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """Convert a state dict of any supported layout to the project's keys.

    Returns (state dict, detected format: "project", "timm" or "official"). Prefixes added by
    wrappers ("module.", "model.", "backbone.", ...) are stripped and their other members dropped.
    """
    sd = _strip_wrapper_prefix(dict(state_dict))
    if any(k.startswith("patch_embed.") for k in sd):
        out = {}
        for k, v in sd.items():
            new = _official_key(k)
            if new is None:
                continue
            if new.endswith(("ls1.gamma", "ls2.gamma")):
                v = v.reshape(-1)
            out[new] = v
        sd, fmt = out, "official"
    elif any(k.startswith("stem.conv1.") for k in sd):
        fmt = "project" if any(".pos_bias." in k for k in sd) else "timm"
    else:
        raise CheckpointError("the checkpoint is not an EfficientFormerV2 state dict (no stem or "
                              f"patch_embed keys; first keys: {list(sd)[:4]})")
    # timm keeps the attention bias table on the attention module itself
    sd = {re.sub(r"(token_mixer|attn)\.attention_biases$", r"\1.pos_bias.attention_biases", k): v
          for k, v in sd.items()}
    return sd, fmt


# --------------------------------------------------------------------------------------------
# Architecture inference
# --------------------------------------------------------------------------------------------
def infer_arch(state_dict: Mapping[str, torch.Tensor]) -> Arch:
    """The architecture a project-layout state dict (training or deploy form) was saved from,
    design switches included where the keys show them (a switch without any part in the
    network keeps its default)."""
    stages = []
    for i in range(4):
        blocks = sorted({int(m.group(1)) for k in state_dict
                         if (m := re.match(rf"stages\.{i}\.blocks\.(\d+)\.", k))})
        if not blocks:
            raise CheckpointError(f"the checkpoint has no blocks for stage {i + 1}")
        width = state_dict[f"stages.{i}.blocks.0.mlp.fc2.conv.weight"].shape[0]
        ratios = []
        for b in blocks:
            hidden = state_dict[f"stages.{i}.blocks.{b}.mlp.fc1.conv.weight"].shape[0]
            r = hidden / width
            ratios.append(int(r) if r == int(r) else r)
        attention = sum(f"stages.{i}.blocks.{b}.token_mixer.q.conv.weight" in state_dict for b in blocks)
        stages.append(StageArch(int(width), tuple(ratios), attention))
    stem = state_dict["stem.conv1.conv.weight"].shape[0]
    keys = list(state_dict)
    has_attention = any(".token_mixer." in k or ".downsample.attn." in k for k in keys)
    switches: dict[str, Any] = {}
    if has_attention:
        switches["attention_bias"] = any(".pos_bias." in k for k in keys)
        switches["local_v"] = any(".v_local." in k for k in keys)
    if any(".token_mixer." in k for k in keys):
        switches["talking_heads"] = any(".talking_head1." in k for k in keys)
    if stages[2].attention:
        switches["stride_attention"] = any(k.startswith("stages.2.") and ".token_mixer.stride_conv." in k for k in keys)
    conv4 = any(k.startswith("stages.3.downsample.conv.") for k in keys)
    attn4 = any(k.startswith("stages.3.downsample.attn.") for k in keys)
    switches["downsampling"] = "dual" if conv4 and attn4 else "attention" if attn4 else "conv"
    return Arch(tuple(stages), stem_width=int(stem), **switches)


def is_deploy_state_dict(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether a project-layout state dict is of the deploy form (`EfficientFormerV2.fuse()`:
    no BatchNorm statistics left but, without a head to fold it into, the final norm's)."""
    headless = "head.weight" not in state_dict
    return not any(k.endswith("running_mean") and not (headless and k.startswith("norm.")) for k in state_dict)


def describe_arch(arch: Arch) -> str:
    """Variant name of an architecture (e.g. "efficientformerv2_s1"), or its widths and depths,
    with the design switches that differ from the paper's."""
    switched = arch.non_default_switches()
    extra = f" with {', '.join(f'{k}={v!r}' for k, v in switched.items())}" if switched else ""
    for name, variant in VARIANTS.items():
        if (variant.widths, [s.expansions for s in variant.stages], [s.attention for s in variant.stages]) == \
                (arch.widths, [s.expansions for s in arch.stages], [s.attention for s in arch.stages]):
            return f"efficientformerv2_{name}{extra}"
    return f"a custom architecture (widths {arch.widths}, depths {arch.depths}){extra}"


# --------------------------------------------------------------------------------------------
# Loading into a model
# --------------------------------------------------------------------------------------------
def load_checkpoint(model: nn.Module, path: str | Path | Mapping[str, torch.Tensor], *,
                    classifier: Literal["load", "drop", "resize"] = "load",
                    strict: bool = True, fuse: bool = True) -> LoadReport:
    """Load weights into an `EfficientFormerV2` from a file or a state dict.

    Args:
        model: the model to fill (classifier or features_only backbone).
        path: .pth/.pt/.ckpt/.safetensors file (project, Lightning, mmengine, official, timm
            layout) or an in-memory state dict.
        classifier: "load" the heads (the class count must match), "drop" them (the model keeps
            its freshly initialised heads), or "resize": copy the rows of the classes both have
            and keep fresh rows for the rest.
        strict: raise `CheckpointError` naming every missing, unexpected or mismatched key
            (otherwise they are only reported).
        fuse: deploy-form weights (BatchNorm folded) turn a training-form model into the deploy
            form to take them; False refuses them (a model that is to be trained further).

    Returns:
        a `LoadReport`. A checkpoint of another architecture fails with the variant it looks like.
    """
    if classifier not in ("load", "drop", "resize"):
        raise ValueError(f"classifier must be 'load', 'drop' or 'resize', not {classifier!r}")
    raw = read_state_dict(path) if isinstance(path, (str, Path)) else unwrap_state_dict(path)
    sd, fmt = to_project_keys(raw)
    report = LoadReport(fmt)
    if isinstance(model, EfficientFormerV2) and is_deploy_state_dict(sd) != model.is_fused:
        if model.is_fused:
            raise CheckpointError("the model is in deploy form (fuse()d) but the checkpoint holds training-form "
                                  "weights (with BatchNorm): load the checkpoint first, then call fuse()")
        if not fuse:
            raise CheckpointError("the checkpoint holds deploy-form weights (BatchNorm folded by fuse()), which "
                                  "cannot be fine-tuned: pass the training-form checkpoint")
        model.fuse()  # deploy-form weights (BatchNorm folded): build the deploy form, then fill it
        report.fused = True
    own = model.state_dict()

    if isinstance(model, EfficientFormerV2):
        backbone_keys = [k for k in sd if k.startswith(("stem.", "stages."))]
        try:
            ckpt_arch = infer_arch({k: sd[k] for k in backbone_keys})
        except (CheckpointError, KeyError):
            ckpt_arch = None
        if ckpt_arch is not None and _shape_signature(ckpt_arch) != _shape_signature(model.arch):
            name = describe_arch(ckpt_arch)
            build = f"create_model('{name}')" if name in _variant_names() else \
                "EfficientFormerV2(infer_arch(to_project_keys(read_state_dict(path))[0]))"
            raise CheckpointError(f"the checkpoint is {name}, but the model is {describe_arch(model.arch)}: "
                                  f"build the model that matches the checkpoint, e.g. {build}")

    to_load: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.startswith(HEAD_PREFIXES) or k.startswith("norm."):
            if k not in own:  # features-only backbone, or a model without distillation head
                report.skipped.append(k)
                continue
            if k.startswith(HEAD_PREFIXES) and classifier == "drop":
                report.skipped.append(k)
                continue
            if k.startswith(HEAD_PREFIXES) and classifier == "resize" and v.shape != own[k].shape:
                merged = own[k].clone()
                n = min(v.shape[0], merged.shape[0])
                merged[:n] = v[:n]
                to_load[k] = merged
                continue
        if k not in own:
            report.unexpected.append(k)
        elif v.shape != own[k].shape:
            hint = " (class count differs: pass classifier='drop' or 'resize')" if k.startswith(HEAD_PREFIXES) else ""
            report.mismatched.append(f"{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}{hint}")
        else:
            to_load[k] = v
    dropped_head = classifier == "drop"
    report.missing = [k for k in own if k not in sd and not (dropped_head and k.startswith(HEAD_PREFIXES))]
    if strict and not report.ok:
        grid = any(".attention_biases " in m for m in report.mismatched)
        raise CheckpointError(f"checkpoint does not fit the model: {report}" + (
            "; the attention-bias tables are of another grid: build the model with the img_size the checkpoint "
            "was trained at (e.g. img_size=224; any input size still works at run time)" if grid else ""))
    model.load_state_dict(to_load, strict=False)
    return report


def _variant_names() -> set[str]:
    """The names `create_model` takes."""
    return {f"efficientformerv2_{name}" for name in VARIANTS}


def _shape_signature(arch: Arch) -> tuple:
    """What decides the parameter shapes of an architecture: widths, expansions, attention
    blocks, stem, and the switches that have a part in it."""
    has_mhsa = any(s.attention for s in arch.stages)
    has_attention = has_mhsa or arch.downsampling != "conv"
    relevant = {"downsampling": arch.downsampling}
    if has_attention:
        relevant.update(attention_bias=arch.attention_bias, local_v=arch.local_v)
    if has_mhsa:
        relevant["talking_heads"] = arch.talking_heads
    if arch.stages[2].attention:
        relevant["stride_attention"] = arch.stride_attention
    return (tuple(arch.widths), tuple(tuple(s.expansions) for s in arch.stages),
            tuple(s.attention for s in arch.stages), arch.stem_width, tuple(sorted(relevant.items())))


def save_checkpoint(model: nn.Module | Mapping[str, torch.Tensor], path: str | Path,
                    metadata: Mapping[str, str] | None = None) -> Path:
    """Write weights in the project's format: safetensors (`.safetensors`) or a plain state dict."""
    sd = model.state_dict() if isinstance(model, nn.Module) else dict(model)
    sd = {k: v.detach().contiguous().cpu() for k, v in sd.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(sd, str(path), metadata=dict(metadata or {}))
    else:
        torch.save(sd, path)
    return path
