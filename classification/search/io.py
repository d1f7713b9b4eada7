"""What the search reads and writes: the supernet checkpoint, image batches of a data folder, and
the classification config (searched.yaml) that trains a sub-network from scratch."""
from __future__ import annotations

import copy
import pickle
from pathlib import Path
from typing import Any, Mapping

import torch

from backbones.supernet import EfficientFormerV2Supernet, SubnetConfig

from .calibration import Batches

__all__ = ["arch_dict", "load_supernet", "image_batches", "read_config", "classification_config"]


def arch_dict(config: SubnetConfig) -> dict[str, Any]:
    """The plain architecture as `Arch.from_dict` (and `model.arch` of the classification CLI) reads it."""
    arch = config.to_arch()
    return {"widths": arch.widths, "depths": arch.depths, "expansions": [list(s.expansions) for s in arch.stages],
            "attention": [s.attention for s in arch.stages], "stem_width": arch.stem_width}


def load_supernet(checkpoint: str | Path) -> EfficientFormerV2Supernet:
    """The supernet of a `SupernetModule` Lightning checkpoint (read with weights_only=True).

    Args:
        checkpoint: path of the checkpoint (`python -m classification.supernet fit` writes
            checkpoints/last.ckpt).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a torch checkpoint, not one of a SupernetModule, or weights that do not
            fit the supernet its hyper-parameters describe.
    """
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"supernet checkpoint {checkpoint} does not exist (python -m classification.supernet "
                                "fit ... writes checkpoints/last.ckpt)")
    try:
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, KeyError, ValueError, pickle.UnpicklingError) as e:
        # torch.load fails on a file that is not a torch checkpoint with any of these
        raise ValueError(f"cannot read supernet checkpoint {checkpoint} (not a torch checkpoint, or one that "
                         f"carries code): {type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise ValueError(f"{checkpoint} is not a Lightning checkpoint of classification.supernet.SupernetModule "
                         "(python -m classification.supernet fit ... writes one)")
    hp = ckpt["hyper_parameters"]
    state = {k[len("supernet."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("supernet.")}
    if not state:
        raise ValueError(f"{checkpoint} holds no supernet weights (no 'supernet.*' keys)")
    net = EfficientFormerV2Supernet(hp.get("space"), num_classes=hp["num_classes"],
                                    distillation=hp.get("distillation", True), img_size=hp["img_size"])
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{checkpoint} does not fit the supernet its hyper-parameters describe: missing "
                         f"{missing[:5]}, unexpected {unexpected[:5]}")
    return net.eval()


def image_batches(root: str | Path, split: str, img_size: int, batch_size: int, max_images: int | None = None,
                  cache: bool = True, num_workers: int = 0, **data_kwargs: Any) -> Batches:
    """Evaluation-transformed batches of one split of an ImageNet-layout folder (the classification
    DataModule's transforms and reader).

    Args:
        root: data root with train/<class>/ (the class list) and `split`/<class>/.
        split: the split folder read.
        img_size, batch_size, num_workers, data_kwargs: as the classification DataModule's.
        max_images: take this many evenly spaced images (every class keeps its share); None: all.
        cache: hold the batches in memory (small splits evaluated many times).
    """
    from torch.utils.data import DataLoader, Subset

    from ..data import ImageFolderDataset, ImageNetDataModule, collate_skip_bad, scan_split

    dm = ImageNetDataModule(root, img_size=img_size, batch_size=batch_size, num_workers=num_workers, **data_kwargs)
    dataset = ImageFolderDataset(scan_split(Path(root) / split, dm.class_to_idx), dm.eval_transform(), dm.classes)
    if max_images is not None and max_images < len(dataset):
        step = len(dataset) / max_images
        dataset = Subset(dataset, [int(i * step) for i in range(max_images)])
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_skip_bad)
    return [b for b in loader if b is not None] if cache else loader


def read_config(config: str | Path | Mapping[str, Any], what: str = "base config") -> dict[str, Any]:
    """A YAML config as a dict: read from a path (a missing file is an error saying so), or a
    copy of a mapping."""
    import yaml

    if isinstance(config, Mapping):
        return copy.deepcopy(dict(config))
    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist: pass the path of a classification config "
                                "(configs/classification/*.yaml in the source tree)")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{what} {str(path)!r} is not a YAML mapping of sections")
    return data


def classification_config(result: Any, base_config: str | Path | Mapping[str, Any] | None = None,
                          run_dir: str | Path | None = None) -> dict[str, Any]:
    """A `python -m classification fit` config that trains a sub-network from scratch.

    Args:
        result: a `SubnetConfig`, or a `SearchResult` (its searched sub-network).
        base_config: a classification config (path or dict) to start from; `model.arch` is set to
            the sub-network's architecture, replacing `model.model_name`. None: only `model.arch`.
        run_dir: where its logs and checkpoints go (not into the base config's run folder, whose
            checkpoints they would overwrite).
    """
    config = read_config(base_config) if base_config is not None else {}
    model = config.setdefault("model", {}) or {}
    config["model"] = model
    subnet = result if isinstance(result, SubnetConfig) else result.config
    model.pop("model_name", None)
    model["arch"] = arch_dict(subnet)
    if run_dir is not None:
        run_dir = str(run_dir)
        trainer = config.setdefault("trainer", {}) or {}
        config["trainer"] = trainer
        trainer["default_root_dir"] = run_dir
        loggers = trainer.get("logger")
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            if isinstance(logger, dict) and "save_dir" in (logger.get("init_args") or {}):
                logger["init_args"]["save_dir"] = run_dir
        config["checkpoint"] = {**(config.get("checkpoint") or {}), "dirpath": f"{run_dir}/checkpoints"}
    return config
