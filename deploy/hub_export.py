"""Share a fine-tuned model in timm's own Hub format: a folder that plain timm loads.

    from deploy.hub_export import export_hub, push_folder
    result = export_hub("efficientformerv2_s0", "runs/ft/checkpoints/best-004.ckpt", "share/s0_flowers")
    push_folder(result.path, "ORG/REPO")          # optional: upload with huggingface_hub

    import timm                                    # anyone, without this project:
    model = timm.create_model("local-dir:share/s0_flowers", pretrained=True)   # or "hf-hub:ORG/REPO"

The weights of the project's network are timm's layout (timm keeps the attention-bias table on the
attention module itself: the only renamed key). The checkpoint's network is copied into timm's own
`efficientformerv2_*` model, built with the checkpoint's class count, distillation head and
training size, and timm writes the folder itself (`timm.models.save_for_hf`): `config.json`
(architecture, `num_classes`, `label_names`, `model_args`, and `pretrained_cfg` holding the run's
evaluation transform: input size, crop fraction, interpolation, mean and std) and
`model.safetensors`; `README.md` is timm's model card (`generate_readme`) with what the model was
fine-tuned from, its classes, the run's validation top-1 and the command that made the folder.

What a Lightning checkpoint of the classification package says about its run is read by
`run_facts` (the data's evaluation transform, the starting weights, the monitored validation
top-1); the class names are the checkpoint's own (`backbones.checkpoint_info`). The folder is written beside its destination
and moved there only after `timm.create_model("local-dir:...", pretrained=True)` has loaded it and
given the same logits as the project's model (max abs difference within 1e-4): a failed check
leaves nothing behind, and an existing non-empty folder is never overwritten.
"""
from __future__ import annotations

import importlib
import shlex
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from backbones import CheckpointError, EfficientFormerV2, list_models, read_checkpoint
from backbones.checkpoint import describe_arch
from backbones.errors import NetworkError, UsageError

from .models import build_model
from .runtimes.base import FP32_ATOL

__all__ = ["HUB_FORMAT", "HubExport", "run_facts", "timm_twin",
           "export_hub", "push_folder", "command_line"]

HUB_FORMAT = "hub"  # tools/export.py --format name
_TIMM_KEY = (".pos_bias.attention_biases", ".attention_biases")  # project name -> timm's name


@dataclass
class HubExport:
    """A folder in timm's Hub format and how it was checked."""

    path: Path
    seconds: float
    max_abs_diff: float          # timm's loaded model vs the project's, on random images
    num_classes: int
    label_names: list[str] | None
    top1: float | None           # the run's validation top-1 (percent), where the checkpoint records it
    facts: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        names = f"{len(self.label_names)} class names" if self.label_names else "no class names"
        return (f"hub: {self.path} in {self.seconds:.1f} s ({self.num_classes} classes, {names}); "
                f"timm.create_model('local-dir:...', pretrained=True) vs PyTorch: max abs diff "
                f"{self.max_abs_diff:.3g} (bound {FP32_ATOL}): ok")


# --------------------------------------------------------------------------------------------
# What a checkpoint says about its run
# --------------------------------------------------------------------------------------------
def run_facts(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """What a Lightning checkpoint of the classification package records about its run:
    `data_config` (the evaluation transform for timm: input size, crop fraction, interpolation,
    mean, std), `pretrained` (the weights it was fine-tuned from), `top1` (the monitored
    validation top-1 of these weights, percent), `epoch`, `global_step`, `data` (the data source).
    Keys it does not record are left out."""
    facts: dict[str, Any] = {}
    data = ckpt.get("datamodule_hyper_parameters") or {}
    model = ckpt.get("hyper_parameters") or {}
    size = data.get("img_size", model.get("img_size"))
    config: dict[str, Any] = {}
    if isinstance(size, int):
        config["input_size"] = (3, size, size)
    for key in ("crop_pct", "interpolation", "mean", "std"):
        if data.get(key) is not None:
            config[key] = tuple(data[key]) if key in ("mean", "std") else data[key]
    if config:
        config["crop_mode"] = "center"
        facts["data_config"] = config
    if model.get("pretrained"):
        facts["pretrained"] = str(model["pretrained"])
    for state in (ckpt.get("callbacks") or {}).values():
        if isinstance(state, Mapping) and state.get("monitor") == "val/top1" and state.get("current_score") is not None:
            facts["top1"] = 100.0 * float(state["current_score"])
            break
    for key in ("epoch", "global_step"):
        if isinstance(ckpt.get(key), int):
            facts[key] = ckpt[key]
    source = data.get("source") if data.get("source") not in (None, "folder") else data.get("root")
    if source:
        facts["data"] = str(source)
    return facts


# --------------------------------------------------------------------------------------------
# The project's network in timm's model
# --------------------------------------------------------------------------------------------
def timm_twin(model: EfficientFormerV2) -> nn.Module:
    """timm's own `efficientformerv2_*` with the weights of `model` (a released variant in
    training form), eval mode. Raises UsageError for an architecture timm does not have."""
    import timm
    name = describe_arch(model.arch)
    if name not in list_models() or model.is_fused or model.features_only:
        raise UsageError(f"timm's Hub format needs one of timm's architectures ({', '.join(list_models())}) as a "
                         f"classifier in training form; the checkpoint holds {name}")
    twin = timm.create_model(name, pretrained=False, num_classes=model.num_classes,
                             distillation=model.head_dist is not None, img_size=model.img_size)
    state = {k.replace(*_TIMM_KEY): v for k, v in model.state_dict().items()}
    twin.load_state_dict(state, strict=True)  # a mismatch is a bug here: both are timm's layout
    return twin.eval()


def _max_diff(a: nn.Module, b: nn.Module, size: int, seed: int = 0) -> float:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return float((a.eval()(x) - b.eval()(x)).abs().max())


def _model_card(name: str, facts: Mapping[str, Any], label_names: Sequence[str] | None, num_classes: int,
                command: str | None, repo_hint: str) -> dict[str, Any]:
    """timm's model card fields (`timm.models._hub.generate_readme`)."""
    top1 = facts.get("top1")
    details: dict[str, Any] = {
        "Model Type": "Image classification / feature backbone",
        "Architecture": f"{name} (EfficientFormerV2, \"Rethinking Vision Transformers for MobileNet Size and "
                        "Speed\")",
        "Fine-tuned from": facts.get("pretrained") or "not recorded in the checkpoint (trained from scratch?)",
        "Classes": f"{num_classes}: {', '.join(label_names[:20])}{', ...' if len(label_names) > 20 else ''}"
        if label_names else f"{num_classes} (names not recorded in the checkpoint)",
        "Validation top-1": f"{top1:.2f}%" if top1 is not None else "not recorded in the checkpoint",
    }
    if facts.get("data"):
        details["Data"] = facts["data"]
    if "epoch" in facts:
        details["Training"] = f"{facts['epoch'] + 1} epochs, {facts.get('global_step', '?')} steps"
    size = (facts.get("data_config") or {}).get("input_size", (3, 224, 224))[-1]
    details["Image size"] = f"{size} x {size}"
    if command:
        details["Made with"] = f"`{command}`"
    usage = ("```python\nimport timm, torch\nfrom PIL import Image\n\n"
             f"model = timm.create_model(\"{repo_hint}\", pretrained=True).eval()\n"
             "config = timm.data.resolve_model_data_config(model)\n"
             "transform = timm.data.create_transform(**config, is_training=False)\n"
             "logits = model(transform(Image.open(\"image.jpg\").convert(\"RGB\")).unsqueeze(0))\n"
             "names = model.pretrained_cfg.get(\"label_names\")\n```\n")
    return {"details": details, "usage": usage, "license": "apache-2.0",
            "description": f"EfficientFormerV2 ({name}) fine-tuned for {num_classes}-class image classification."}


# --------------------------------------------------------------------------------------------
# The export
# --------------------------------------------------------------------------------------------
def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"cannot write the folder {out}: a file of that name is in the way")
    if out.is_dir() and any(out.iterdir()):
        raise UsageError(f"{out} exists and is not empty: pass a new folder for the hub export (nothing was written)")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"cannot write {out}: {parent} is a file, not a folder")


def export_hub(name: str, checkpoint: str | Path, out: str | Path, command: str | None = None,
               repo_id: str | None = None) -> HubExport:
    """Write a fine-tuned checkpoint as a folder in timm's Hub format and check it with timm.

    Args:
        name: the variant (efficientformerv2_s0, ...): the checkpoint must hold that network.
        checkpoint: a Lightning checkpoint of the classification package (class names, evaluation
            transform, validation top-1 and starting weights are read from it) or any weights file
            the project reads (then the class names are absent and the transform is the model's default).
        out: the folder to create (must not exist, or be empty).
        command: the command line recorded in the model card.
        repo_id: the Hub repository the folder goes to (`push_folder`), named in the card's usage.
    Raises:
        UsageError: not a released variant, a features-only checkpoint, an occupied `out`.
        backbones.CheckpointError: the checkpoint is unreadable, damaged, or of another network.
        AssertionError: timm's loaded model differs from the project's (nothing is written).
    """
    from timm.models import save_for_hf
    from timm.models._hub import generate_readme

    out = Path(out)
    if name not in list_models():
        raise UsageError(f"--format {HUB_FORMAT} is for {', '.join(list_models())} (timm's architectures), not {name}")
    _check_out(out)
    start = time.perf_counter()
    _, ckpt = read_checkpoint(checkpoint)
    model = build_model(name, checkpoint)  # class count, heads, size and class names from the file
    if not isinstance(model, EfficientFormerV2) or model.features_only:
        raise CheckpointError(f"{checkpoint} holds no classifier: a hub export needs the fine-tuned head")
    twin = timm_twin(model)
    facts = run_facts(ckpt)
    names = model.pretrained_cfg.get("label_names")  # the checkpoint's own, for this head only
    names = list(names) if names else None
    diff = _max_diff(model, twin, model.img_size)
    if not diff <= FP32_ATOL:
        raise AssertionError(f"timm's model with these weights differs from the project's by {diff:.3g} > {FP32_ATOL}")
    data_config = dict(facts.get("data_config") or {})
    data_config["input_size"] = (3, model.img_size, model.img_size)  # timm's model is built for that size
    # this model's own heads; the variant's ImageNet tag does not describe these weights
    twin.pretrained_cfg = {k: v for k, v in twin.pretrained_cfg.items() if k not in ("tag", "hf_hub_id")}
    heads = "head" if model.head_dist is None else ("head", "head_dist")
    model_config: dict[str, Any] = {"pretrained_cfg": {"classifier": heads}}
    if names:
        model_config["label_names"] = names
    card = _model_card(name, facts, names, model.num_classes, command,
                       f"hf-hub:{repo_id}" if repo_id else f"local-dir:{out}")

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        folder = staging / "hub"
        save_for_hf(twin, str(folder), model_config=model_config, data_config=data_config, safe_serialization=True)
        (folder / "README.md").write_text(generate_readme(card, out.name), encoding="utf-8")
        # the check a user's plain timm makes: the folder alone rebuilds the model and its logits
        import timm
        loaded = timm.create_model(f"local-dir:{folder}", pretrained=True)
        diff = max(diff, _max_diff(model, loaded, model.img_size, seed=1))
        if not diff <= FP32_ATOL or loaded.num_classes != model.num_classes:
            raise AssertionError(f"timm.create_model('local-dir:...', pretrained=True) differs from the project's "
                                 f"model by {diff:.3g} (bound {FP32_ATOL}; {loaded.num_classes} classes)")
        if out.is_dir():
            out.rmdir()  # empty, checked above
        folder.replace(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return HubExport(out, time.perf_counter() - start, diff, model.num_classes, names, facts.get("top1"), facts)


def push_folder(folder: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload a hub export folder to the Hugging Face Hub repository `repo_id` (created if
    needed) with huggingface_hub; returns the commit's URL. No network or no login is a NetworkError
    whose message says so and that the folder is kept."""
    from backbones.hub import hub_offline
    folder = Path(folder)
    kept = f"the folder {folder} is kept: upload it later with `hf upload {repo_id} {folder}`"
    if hub_offline():
        raise NetworkError(f"no network for --push (HF_HUB_OFFLINE is set): {kept}")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError
    failures: tuple[type[BaseException], ...] = (OSError, ConnectionError, TimeoutError)
    for client in ("httpx", "httpx2"):  # huggingface_hub's HTTP client: its transport errors are no OSError
        try:
            failures += (importlib.import_module(client).TransportError,)
        except (ImportError, AttributeError):
            pass
    try:
        api = HfApi(library_name="timm")
        repo = api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo.repo_id, folder_path=str(folder),
                                   commit_message="Add EfficientFormerV2 model (timm format)")
    except failures as e:
        if isinstance(e, (HfHubHTTPError, LocalTokenNotFoundError)):  # the hub answered, or no login here
            raise NetworkError(f"--push {repo_id} failed ({' '.join(str(e).split())[:300]}); log in with `hf auth login` "
                               f"if needed: {kept}") from e
        raise NetworkError(f"no network: the Hugging Face Hub cannot be reached for --push ({type(e).__name__}): "
                           f"{kept}") from e
    return str(getattr(commit, "commit_url", commit))


def command_line(argv: Sequence[str]) -> str:
    """`argv` as one shell command line (for the model card)."""
    return " ".join(shlex.quote(str(a)) for a in argv)
