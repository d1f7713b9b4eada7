"""Safe checkpoint reading and loading for EfficientFormerV2.

Reads the project's own checkpoints (safetensors or a state dict), Lightning checkpoints of
the classification package, mmengine checkpoints, the official snap-research release
(`{"model": state_dict}` with its own key names) and timm checkpoints, from a local file or by
name from the Hugging Face Hub (`hf-hub:ORG/REPO[@REVISION]`, see `backbones.hub`). Files are
untrusted: they are read with `torch.load(weights_only=True)` or safetensors, never unpickled
freely, and checked before anything is loaded:

- a file the project writes (`save_checkpoint`, the classification package's Lightning
  checkpoints) records a SHA-256 digest of its tensors (`state_dict_sha256`: safetensors
  metadata, or an entry beside the state dict), verified on reading;
- a zip archive (what `torch.save` writes) must pass its CRC checks;
- every floating-point tensor must be finite (no NaN or Inf);
- on loading into a model, no integer tensor may fill a floating-point parameter (or the
  reverse), and shapes must match (attention-bias tables of another training grid are resampled).

A damaged file is one `CheckpointError` that names what is wrong.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .arch import VARIANTS, Arch, StageArch
from .dense_bias import DENSE_TABLE, bias_mode, match_bias_mode
from .errors import ArchitectureMismatchError, CheckpointError, ClassCountMismatchError

__all__ = ["CheckpointError", "ArchitectureMismatchError", "ClassCountMismatchError", "LoadReport",
           "read_state_dict", "read_checkpoint", "unwrap_state_dict", "to_project_keys", "infer_arch", "is_deploy_state_dict",
           "load_checkpoint", "save_checkpoint", "describe_arch", "tensor_digest", "check_finite",
           "check_dtypes", "check_checkpoint", "resample_attention_biases", "model_metadata", "DIGEST_KEY"]

HEAD_PREFIXES = ("head.", "head_dist.")
_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors")
DIGEST_KEY = "state_dict_sha256"  # safetensors metadata key, or the entry beside a saved state dict
# what read_checkpoint returns beside the tensors (Lightning's run facts included, for model cards)
_EXTRA_ENTRIES = ("metadata", "hyper_parameters", "class_names", "fit_config", "datamodule_hyper_parameters",
                  "callbacks", "epoch", "global_step")


@dataclass
class LoadReport:
    """What `load_checkpoint` did: key names that were missing, unexpected, of the wrong shape,
    or deliberately skipped (classifier dropped, heads a features-only model has no use for)."""

    source_format: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    resampled: list[str] = field(default_factory=list)  # attention-bias tables moved to the model's grid
    fused: bool = False  # the model was turned into its deploy form to take deploy-form weights

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        parts = [f"format={self.source_format}"]
        for name in ("missing", "unexpected", "mismatched", "skipped", "resampled"):
            keys = getattr(self, name)
            if keys:
                shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
                parts.append(f"{name}: {shown}")
        return "; ".join(parts)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint, unwrapped from the usual containers, safely loaded and checked.

    `path` is a local file, a hub spec `hf-hub:ORG/REPO[@REVISION]` (fetched into, or read
    from, huggingface_hub's cache: `backbones.hub.hub_file`) or a folder in the Hub's layout,
    `local-dir:PATH` (`backbones.hub.local_dir_file`). Raises `CheckpointError` for a file
    that is missing, unreadable, damaged (digest, zip CRC) or holds NaN/Inf values.
    """
    return read_checkpoint(path)[0]


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """`read_state_dict(path)` and what the file says about its model: a safetensors file's
    metadata as {"metadata": {...}}, or the entries `_EXTRA_ENTRIES` of a `torch.save`d mapping
    (a project file's and a Lightning checkpoint's `metadata`, a Lightning checkpoint's
    `hyper_parameters`, `class_names` and `fit_config`). Same checks and errors."""
    if isinstance(path, str) and path.startswith(("hf-hub:", "local-dir:")):
        from .hub import source_file
        path = source_file(path)
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist (or is not a file)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty (0 bytes): the download or save "
                              "was interrupted; fetch or write it again")
    if path.suffix == ".safetensors":
        sd, extra = _read_safetensors(path)
    else:
        obj = _read_torch(path)
        sd = unwrap_state_dict(obj, str(path))
        extra = {k: obj[k] for k in _EXTRA_ENTRIES if k in obj} if isinstance(obj, Mapping) else {}
    check_finite(sd, str(path))
    return sd, extra


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file, damaged or truncated ({e}); "
                              "fetch or write it again") from e
    _verify_digest(sd, metadata.get(DIGEST_KEY), str(path))
    return sd, {"metadata": metadata}


def _read_torch(path: Path) -> Any:
    with path.open("rb") as f:
        head = f.read(64)
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save writes a zip archive (legacy: a pickle)
        text = head.decode("utf-8", "ignore")
        kind = "a text file" if b"\0" not in head and all(c.isprintable() or c.isspace() for c in text) \
            else "of an unknown binary format"
        raise CheckpointError(f"{path}: not a checkpoint: the file is {kind} (it starts with {head[:20]!r}); "
                              f"expected a file written by torch.save or a .safetensors file")
    if head.startswith(b"PK\x03\x04"):
        _check_zip(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused to load. The file holds Python objects other than tensors and plain "
            f"containers, which could run code when unpickled ({str(e).splitlines()[0]}). Only "
            "weights are accepted: if you trust the file, re-save just its state dict "
            "(torch.save(model.state_dict(), ...)) or convert it with tools/convert_checkpoint.py.") from e
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({e}); is the file "
                              f"truncated or of another kind? Expected one of {', '.join(_SUFFIXES)}") from e


def _check_zip(path: Path) -> None:
    """The archive `torch.save` wrote is complete and every member passes its CRC check."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError) as e:
        raise CheckpointError(f"{path}: damaged: not a readable PyTorch checkpoint, its zip archive is "
                              f"incomplete or overwritten ({e}); the file is truncated or its bytes changed: "
                              "fetch or write it again") from e
    if bad is not None:
        raise CheckpointError(f"{path}: damaged: the archive member {bad!r} fails its CRC check (bytes "
                              "changed since it was written); fetch or write it again")


def unwrap_state_dict(obj: Any, where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint object (`model`, `state_dict`, `model_ema`, ... keys).

    Where the container records a digest of the state dict (`DIGEST_KEY`, written by
    `save_checkpoint` and the classification package's Lightning checkpoints), it is verified.
    """
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_ema", "state_dict_ema"):
            if key in obj and isinstance(obj[key], Mapping):
                sd = unwrap_state_dict(obj[key], where)
                if key == "state_dict":
                    _verify_digest(sd, obj.get(DIGEST_KEY), where)
                return sd
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise CheckpointError(f"{where}: no state dict found (expected a mapping of tensors, or one "
                          "under 'state_dict' or 'model')")


# --------------------------------------------------------------------------------------------
# Integrity
# --------------------------------------------------------------------------------------------
def tensor_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (hex) of a state dict's tensors: names, dtypes, shapes and bytes, in name order.
    The same for a tensor whichever file format or device holds it."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        v = state_dict[key]
        if not isinstance(v, torch.Tensor):
            continue
        v = v.detach().to("cpu").contiguous()
        h.update(f"{key}\0{str(v.dtype).removeprefix('torch.')}\0{tuple(v.shape)}\0".encode())
        if v.numel():
            h.update(v.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def _verify_digest(state_dict: Mapping[str, torch.Tensor], recorded: Any, where: str) -> None:
    if recorded is None:
        return
    actual = tensor_digest(state_dict)
    if not isinstance(recorded, str) or recorded.lower() != actual:
        raise CheckpointError(f"{where}: damaged: its tensors do not match the digest recorded when it was "
                              f"saved ({DIGEST_KEY} {str(recorded)[:16]}..., now {actual[:16]}...): the file was "
                              "changed or corrupted since; fetch or write it again")


def check_finite(state_dict: Mapping[str, torch.Tensor], where: str = "checkpoint") -> None:
    """Raise `CheckpointError` naming the tensors that hold NaN or Inf."""
    bad = [k for k, v in state_dict.items()
           if isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex()) and v.numel()
           and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise CheckpointError(f"{where}: damaged: NaN or Inf values in {', '.join(bad[:3])}{more} (a corrupted "
                              "file, or weights saved from a diverged run); fetch or write it again")


def check_dtypes(state_dict: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor],
                 where: str = "checkpoint") -> None:
    """Raise `CheckpointError` where a tensor would fill a model tensor of another kind: integer
    (or boolean) values into a floating-point parameter, or the reverse. Other precisions of the
    same kind (float16 or bfloat16 weights into a float32 model) are fine."""
    bad = []
    for k, v in state_dict.items():
        ref = reference.get(k)
        if isinstance(v, torch.Tensor) and isinstance(ref, torch.Tensor) and \
                v.is_floating_point() != ref.is_floating_point():
            bad.append(f"{k} is {str(v.dtype).removeprefix('torch.')} but the model's is "
                       f"{str(ref.dtype).removeprefix('torch.')}")
    if bad:
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise CheckpointError(f"{where}: damaged or not this model's weights: {'; '.join(bad[:3])}{more}; "
                              "values of another kind are not cast")


def check_checkpoint(path: str | Path) -> None:
    """Check a checkpoint file (or hub spec) before another library reads it (e.g. Lightning's
    `--ckpt_path` resume): readable safely, digest, zip CRCs, finite values. Raises
    `CheckpointError` saying what is wrong; returns None for a sound file."""
    read_state_dict(path)


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
    if rest.endswith(("attention_bias_idxs", "attention_bias_idxs_seg")):
        return None  # derived buffers, recomputed here
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
    # timm and the official code keep the attention bias tables on the attention module itself
    sd = {re.sub(r"(token_mixer|attn)\.attention_biases(_seg)?$", r"\1.pos_bias.attention_biases\2", k): v
          for k, v in sd.items()}
    # the official dense backbones keep the ImageNet tables in a buffer they never read
    sd = {k: v for k, v in sd.items() if not (k.endswith(".attention_biases") and k + "_seg" in sd)}
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
                    strict: bool = True, fuse: bool = True, keep_dense_bias: bool = False) -> LoadReport:
    """Load weights into an `EfficientFormerV2` from a file or a state dict.

    Args:
        model: the model to fill (classifier or features_only backbone).
        path: .pth/.pt/.ckpt/.bin/.safetensors file (project, Lightning, mmengine, official, timm
            layout), a hub spec `hf-hub:ORG/REPO[@REVISION]` (see `backbones.hub`) or an
            in-memory state dict.
        classifier: "load" the heads (the class count must match), "drop" them (the model keeps
            its freshly initialised heads), or "resize": copy the rows of the classes both have
            and keep fresh rows for the rest.
        strict: raise `CheckpointError` naming every missing, unexpected or mismatched key
            (otherwise they are only reported).
        fuse: deploy-form weights (BatchNorm folded) turn a training-form model into the deploy
            form to take them; False refuses them (a model that is to be trained further).
        keep_dense_bias: a model in the official dense bias mode (`backbones.dense_bias`) given
            offset (ImageNet) tables keeps its dense tables at their initial zeros and skips the
            checkpoint's, as the official dense training starts; otherwise the model takes the
            bias mode of the checkpoint's tables (official dense tables switch it to "dense").

    Returns:
        a `LoadReport`. A checkpoint of another architecture fails with the variant it looks like
        (`ArchitectureMismatchError`), one of another class count with "load" with
        `ClassCountMismatchError`. Attention-bias tables made for another training grid (the
        model's `img_size` differs from the checkpoint's) are resampled to the model's grid
        (`resample_attention_biases`, listed in `LoadReport.resampled`).
    """
    if classifier not in ("load", "drop", "resize"):
        raise ValueError(f"classifier must be 'load', 'drop' or 'resize', not {classifier!r}")
    if isinstance(path, (str, Path)):
        raw = read_state_dict(path)
    else:
        raw = unwrap_state_dict(path)
        check_finite(raw, "state dict")
    where = str(path) if isinstance(path, (str, Path)) else "state dict"
    sd, fmt = to_project_keys(raw)
    report = LoadReport(fmt)
    if _is_network(model) and is_deploy_state_dict(sd) != model.is_fused:
        if model.is_fused:
            raise CheckpointError("the model is in deploy form (fuse()d) but the checkpoint holds training-form "
                                  "weights (with BatchNorm): load the checkpoint first, then call fuse()")
        if not fuse:
            raise CheckpointError("the checkpoint holds deploy-form weights (BatchNorm folded by fuse()), which "
                                  "cannot be fine-tuned: pass the training-form checkpoint")
        model.fuse()  # deploy-form weights (BatchNorm folded): build the deploy form, then fill it
        report.fused = True
    keep_dense = keep_dense_bias and _is_network(model) and bias_mode(model) == "dense"
    if _is_network(model) and not model.is_fused:
        match_bias_mode(model, sd, keep_dense=keep_dense)
    if keep_dense and not any(k.endswith(DENSE_TABLE) for k in sd):
        report.skipped += [k for k in sd if k.endswith(".pos_bias.attention_biases")]
        sd = {k: v for k, v in sd.items() if not k.endswith(".pos_bias.attention_biases")}
        sd.update({k: v for k, v in model.state_dict().items() if k.endswith(DENSE_TABLE)})  # their zeros
    own = model.state_dict()

    if _is_network(model):
        backbone_keys = [k for k in sd if k.startswith(("stem.", "stages."))]
        try:
            ckpt_arch = infer_arch({k: sd[k] for k in backbone_keys})
        except (CheckpointError, KeyError):
            ckpt_arch = None
        if ckpt_arch is not None and _shape_signature(ckpt_arch) != _shape_signature(model.arch):
            name = describe_arch(ckpt_arch)
            build = f"create_model('{name}')" if name in _variant_names() else \
                "EfficientFormerV2(infer_arch(to_project_keys(read_state_dict(path))[0]))"
            model_name = describe_arch(model.arch)
            raise ArchitectureMismatchError(f"the checkpoint is {name}, but the model is {model_name}: "
                                            f"build the model that matches the checkpoint, e.g. {build}",
                                            name, model_name, ckpt_arch)

    for k, v in list(sd.items()):  # bias tables of another training grid: to the model's grid
        if k.endswith("attention_biases") and k in own and v.shape != own[k].shape \
                and v.dim() == own[k].dim() == 2 and v.shape[0] == own[k].shape[0]:
            try:
                sd[k] = resample_attention_biases(v, own[k].shape[1])
            except ValueError:
                continue  # not square grids: reported as a mismatch below
            report.resampled.append(k)
    check_dtypes(sd, own, where)

    to_load: dict[str, torch.Tensor] = {}
    head_mismatch: tuple[int, int] | None = None
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
            hint = ""
            if k.startswith(HEAD_PREFIXES):
                hint = " (class count differs: pass classifier='drop' or 'resize')"
                head_mismatch = (int(v.shape[0]), int(own[k].shape[0]))
            report.mismatched.append(f"{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}{hint}")
        else:
            to_load[k] = v
    dropped_head = classifier == "drop"
    report.missing = [k for k in own if k not in sd and not (dropped_head and k.startswith(HEAD_PREFIXES))]
    if strict and not report.ok:
        grid = any(".attention_biases " in m for m in report.mismatched)
        message = f"checkpoint does not fit the model: {report}" + (
            "; the attention-bias tables are of another grid: build the model with the img_size the checkpoint "
            "was trained at (e.g. img_size=224; any input size still works at run time)" if grid else "")
        if report.missing and all(k.startswith("head_dist.") for k in report.missing):
            message += ("; the checkpoint has no distillation head: build the model with distillation=False "
                        "(backbones.model_from_checkpoint(path) reads this from the file)")
        if head_mismatch is not None:
            raise ClassCountMismatchError(message, *head_mismatch)
        raise CheckpointError(message)
    model.load_state_dict(to_load, strict=False)
    return report


def _is_network(model: nn.Module) -> bool:
    """Whether `model` is a plain EfficientFormerV2 network (built from an `Arch`, with a deploy
    form), told by its attributes so that this module needs only the architecture description."""
    return isinstance(getattr(model, "arch", None), Arch) and hasattr(model, "is_fused")


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


def resample_attention_biases(table: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    """An attention-bias table (heads, R*R) of an R x R training grid moved to an S x S grid
    (heads, S*S = `size`).

    The table is indexed by the absolute offset (|dy|, |dx|) (`backbones.layers.OffsetAttentionBias`);
    it is interpolated over offsets with corners aligned, so offset 0 and the largest offset keep
    their values: with `mode="bilinear"` (default) the result is the table the model itself
    computes when it runs at that grid, so a checkpoint loaded into a model built for another
    `img_size` gives the same outputs as the checkpoint's own model at that input size.
    "bicubic" is the choice timm makes for position embeddings. The same grid returns `table`.

    Raises:
        ValueError: `table` is not 2-D or either grid is not square.
    """
    if table.dim() != 2:
        raise ValueError(f"expected a (heads, R*R) table, got shape {tuple(table.shape)}")
    heads, n = table.shape
    r, s = math.isqrt(n), math.isqrt(size)
    if r * r != n or s * s != size or r == 0 or s == 0:
        raise ValueError(f"attention-bias grids must be square: {n} -> {size} entries")
    if r == s:
        return table
    grid = table.detach().to(torch.float64 if table.dtype == torch.float64 else torch.float32).reshape(1, heads, r, r)
    if r == 1:  # one offset only: the same value at every offset
        out = grid.expand(1, heads, s, s)
    else:
        out = F.interpolate(grid, size=(s, s), mode=mode, align_corners=True)
    return out.reshape(heads, s * s).to(table.dtype).contiguous()


def model_metadata(model: nn.Module, names: Sequence[str] | None = None) -> dict[str, str]:
    """The description a checkpoint of `model` carries (string values, as safetensors metadata
    holds them): model_name, arch (JSON), num_classes, distillation, img_size, class_names (JSON;
    `names`, else the model's `pretrained_cfg["label_names"]`)."""
    if not _is_network(model):
        return {}
    meta = {"model_name": describe_arch(model.arch), "arch": json.dumps(model.arch.to_dict()),
            "img_size": str(model.img_size)}
    if not model.features_only:
        meta.update(num_classes=str(model.num_classes), distillation=str(bool(model.distillation)).lower())
        names = names if names is not None else (model.pretrained_cfg or {}).get("label_names")
        if names is not None:
            meta["class_names"] = json.dumps(list(names))
    return meta


def save_checkpoint(model: nn.Module | Mapping[str, torch.Tensor], path: str | Path,
                    metadata: Mapping[str, str] | None = None) -> Path:
    """Write weights in the project's format, with a digest of the tensors that `read_state_dict`
    verifies, and, for an `EfficientFormerV2`, the description of the model that
    `backbones.model_from_checkpoint` builds it from (`model_metadata`; `metadata` adds to it): safetensors (`.safetensors`, the digest and `metadata` in its metadata) or, for any
    other suffix, a `torch.save`d `{"state_dict": ..., "state_dict_sha256": ..., "metadata": {...}}`.
    The file is written beside its destination and then moved into place, with the permissions
    the umask gives a new file (not only the owner's)."""
    described = model_metadata(model) if isinstance(model, nn.Module) else {}
    sd = model.state_dict() if isinstance(model, nn.Module) else dict(model)
    sd = {k: v.detach().contiguous().cpu() for k, v in sd.items()}
    digest = tensor_digest(sd)
    meta = {str(k): str(v) for k, v in {**described, **(metadata or {})}.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        with partial.open("wb") as f:  # open(): mode 0666 & ~umask, as any new file
            if path.suffix == ".safetensors":
                from safetensors.torch import save
                f.write(save(sd, metadata={**meta, DIGEST_KEY: digest}))
            else:
                torch.save({"state_dict": sd, DIGEST_KEY: digest, "metadata": meta}, f)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path
