"""What the search reads and writes: the supernet checkpoint, image batches of a data folder, the
classification config (searched.yaml) that trains a sub-network from scratch, and the searched
network itself (`SearchedNetwork`: architecture, image size, classes, distillation head), which
every tool builds through `load_searched` from what the search wrote."""
from __future__ import annotations

import copy
import functools
import json
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from backbones import EfficientFormerV2
from backbones.errors import FileFormatError, NotFoundError
from backbones.supernet import EfficientFormerV2Supernet, SubnetConfig

from .calibration import Batches

__all__ = ["arch_dict", "load_supernet", "image_batches", "read_config", "classification_config",
           "SearchedNetwork", "load_searched"]


def arch_dict(config: SubnetConfig) -> dict[str, Any]:
    """The plain architecture as `Arch.from_dict` (and `model.arch` of the classification CLI) reads it."""
    arch = config.to_arch()
    return {"widths": arch.widths, "depths": arch.depths, "expansions": [list(s.expansions) for s in arch.stages],
            "attention": [s.attention for s in arch.stages], "stem_width": arch.stem_width}


@dataclass(frozen=True)
class SearchedNetwork:
    """A searched network as the search built and counted it: what every tool builds.

    Args:
        arch: the architecture (`arch_dict`, `Arch.from_dict` reads it).
        img_size: the search's (and training's) image size: it sizes the attention-bias tables,
            hence the parameter count. None: not recorded (a bare architecture).
        num_classes: classes of the head. None: not recorded (the data decides).
        distillation: whether it has a distillation head. None: not recorded.
        params: the parameter count the search reported (None: not from a search).
        source: where it was read from (for messages).
    """

    arch: dict[str, Any]
    img_size: int | None = None
    num_classes: int | None = None
    distillation: bool | None = None
    params: int | None = None
    source: str = ""

    @classmethod
    def of_subnet(cls, config: SubnetConfig, supernet: EfficientFormerV2Supernet,
                  params: int | None = None) -> "SearchedNetwork":
        """The plain network of sub-network `config` as the supernet's search counts it (its
        image size, classes and distillation head)."""
        return cls(arch_dict(config), supernet.img_size, supernet.num_classes, supernet.distillation, params)

    def build(self, **overrides: Any) -> EfficientFormerV2:
        """The `EfficientFormerV2` (fresh weights) with the recorded image size, classes and
        distillation head; `overrides` (e.g. num_classes) replace them or fill those not recorded."""
        kwargs = {k: v for k, v in (("img_size", self.img_size), ("num_classes", self.num_classes),
                                    ("distillation", self.distillation)) if v is not None}
        kwargs.update(overrides)
        return EfficientFormerV2(self.arch, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The record search.json keeps under "network" (without `source`)."""
        out = asdict(self)
        out.pop("source")
        return out

    def describe(self) -> str:
        """E.g. "64px, 10 classes, no distillation head" (the recorded fields only)."""
        parts = [f"{self.img_size}px" if self.img_size else "",
                 f"{self.num_classes} classes" if self.num_classes is not None else "",
                 "" if self.distillation is None else ("distillation head" if self.distillation
                                                       else "no distillation head")]
        return ", ".join(p for p in parts if p)


_NETWORK_KEYS = {"arch", "img_size", "num_classes", "distillation", "params"}


def _record(data: Mapping[str, Any], source: str) -> SearchedNetwork:
    unknown = set(data) - _NETWORK_KEYS
    if unknown or not isinstance(data.get("arch"), Mapping):
        raise FileFormatError(f"{source}: not a searched-network record (keys {sorted(data)}; expected "
                              f"{sorted(_NETWORK_KEYS)})")
    return SearchedNetwork(**{k: data.get(k) for k in _NETWORK_KEYS}, source=source)


def _from_search_json(data: Mapping[str, Any], source: str) -> SearchedNetwork:
    if isinstance(data.get("network"), Mapping):
        return _record(data["network"], source)
    # written before the record existed: the architecture, the final step's count, nothing else
    steps = data.get("steps") or [{}]
    return SearchedNetwork(dict(data["arch"]), params=steps[-1].get("params"), source=source)


def _from_classification_config(config: Mapping[str, Any], source: Path) -> SearchedNetwork:
    model = dict(config.get("model") or {})
    data = config.get("data") or {}
    if not isinstance(model.get("arch"), Mapping) and isinstance(model.get("model_name"), str):
        model["arch"] = {"base": model["model_name"].lower().removeprefix("efficientformerv2_")}  # a variant config
    if not isinstance(model.get("arch"), Mapping):
        raise FileFormatError(f"{source} has no model.arch: give the searched.yaml or search.json the search wrote, "
                              "or an architecture dict")
    beside = source.parent / "search.json"   # written with it: the classes and count of the search
    if beside.is_file():
        found = load_searched(beside)
        if found.arch == dict(model["arch"]):
            return SearchedNetwork(found.arch, data.get("img_size", found.img_size), found.num_classes,
                                   model.get("teacher") is not None, found.params, str(source))
    return SearchedNetwork(dict(model["arch"]), data.get("img_size"), None, model.get("teacher") is not None,
                           None, str(source))


def load_searched(spec: str | Path | Mapping[str, Any]) -> SearchedNetwork:
    """The searched network from what the search wrote, or from a bare architecture.

    Args:
        spec: search.json (its "network" record), searched.yaml (its `model.arch`, `data.img_size`
            and, without a teacher, no distillation head; the classes from the search.json beside
            it), a JSON file or inline JSON text holding an architecture dict or a network record,
            or such a dict itself.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: text or a file that holds neither a network nor an architecture (the message
            says what was expected); an architecture `Arch.from_dict` refuses.
    """
    source = "the architecture dict"
    if isinstance(spec, Mapping):
        data: Any = dict(spec)
    else:
        text = str(spec).strip()
        if text.startswith("{"):
            source = "the inline architecture"
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                raise FileFormatError(f"{source} {text!r} is not JSON ({e}): give a dict such as "
                                      '{"base": "s0", "attention": [0, 0, 2, 2]}') from None
        else:
            path = Path(text)
            source = str(path)
            if not path.is_file():
                raise NotFoundError(f"{path} does not exist: give the search's search.json or searched.yaml, "
                                    "an architecture JSON file, or an inline JSON dict")
            if path.suffix in (".yaml", ".yml"):
                data = read_config(path, what="config")   # includes merged, dotted keys nested
                if "model" in data:
                    return _from_classification_config(data, path)
            else:
                try:
                    data = json.loads(path.read_text())
                except json.JSONDecodeError as e:
                    raise FileFormatError(f"{path} is not JSON ({e}): give the search's search.json or searched.yaml, "
                                          'or an architecture dict such as {"base": "s0", "attention": [0, 0, 2, 2]}') \
                        from None
    if not isinstance(data, Mapping):
        raise FileFormatError(f"{source} holds a {type(data).__name__}, not an architecture dict or a searched network")
    if "steps" in data and "arch" in data:          # search.json
        network = _from_search_json(data, source)
    elif isinstance(data.get("arch"), Mapping):     # a network record
        network = _record(data, source)
    else:                                           # a bare architecture
        network = SearchedNetwork(dict(data), source=source)
    from backbones import resolve_arch

    try:
        resolve_arch(network.arch)   # an unknown key or value names itself now
    except (TypeError, ValueError) as e:
        raise FileFormatError(f"{source}: {e}") from None
    return network


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
        raise NotFoundError(f"supernet checkpoint {checkpoint} does not exist (python -m classification.supernet "
                            "fit ... writes checkpoints/last.ckpt)")
    try:
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, KeyError, ValueError, pickle.UnpicklingError) as e:
        # torch.load fails on a file that is not a torch checkpoint with any of these
        raise FileFormatError(f"cannot read supernet checkpoint {checkpoint} (not a torch checkpoint, or one that "
                              f"carries code): {type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise FileFormatError(f"{checkpoint} is not a Lightning checkpoint of classification.supernet.SupernetModule "
                              "(python -m classification.supernet fit ... writes one)")
    hp = ckpt["hyper_parameters"]
    state = {k[len("supernet."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("supernet.")}
    if not state:
        raise FileFormatError(f"{checkpoint} holds no supernet weights (no 'supernet.*' keys)")
    net = EfficientFormerV2Supernet(hp.get("space"), num_classes=hp["num_classes"],
                                    distillation=hp.get("distillation", True), img_size=hp["img_size"])
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise FileFormatError(f"{checkpoint} does not fit the supernet its hyper-parameters describe: missing "
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

    from imagefolder import ImageFolderDataset, collate_skip_bad, scan_split

    from ..data import ImageNetDataModule

    dm = ImageNetDataModule(root, img_size=img_size, batch_size=batch_size, num_workers=num_workers, **data_kwargs)
    dataset = ImageFolderDataset(scan_split(Path(root) / split, dm.class_to_idx), dm.eval_transform(), dm.classes)
    if max_images is not None and max_images < len(dataset):
        step = len(dataset) / max_images
        dataset = Subset(dataset, [int(i * step) for i in range(max_images)])
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_skip_bad)
    return [b for b in loader if b is not None] if cache else loader


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`: mappings merge key by key, anything else (lists too) replaces."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), dict) \
            else copy.deepcopy(value)
    return out


def _nested(data: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys (`model.model_name: s0`, as the CLI reads them) as nested sections, in order."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        value = _nested(value) if isinstance(value, Mapping) else value
        *parents, leaf = str(key).split(".") if "." in str(key) else [key]
        out = _merge(out, functools.reduce(lambda inner, name: {name: inner}, reversed(parents), {leaf: value}))
    return out


def _read_yaml(path: Path, what: str, seen: tuple[Path, ...]) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise NotFoundError(f"{what} {str(path)!r} does not exist"
                            + (f" (included by {str(seen[-1])!r})" if seen else
                               ": pass the path of a classification config (configs/classification/*.yaml "
                               "in the source tree)"))
    if path.resolve() in seen:
        raise FileFormatError(f"{what} {str(path)!r} includes itself")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise FileFormatError(f"{what} {str(path)!r} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise FileFormatError(f"{what} {str(path)!r} is not a YAML mapping of sections")
    out: dict[str, Any] = {}
    for key, value in data.items():   # in order: an included config is overridden by the keys after it
        if key == "config":
            for include in value if isinstance(value, list) else [value]:
                out = _merge(out, _read_yaml(path.parent / str(include), what, seen + (path.resolve(),)))
        else:
            out = _merge(out, _nested({key: value}))
    return out


def read_config(config: str | Path | Mapping[str, Any], what: str = "base config") -> dict[str, Any]:
    """A classification config as one self-contained dict of nested sections: read from a path
    (the configs it includes with `config:` merged in, relative to it, and dotted keys such as
    `model.model_name` nested, as the CLI reads them; a missing file is an error saying so), or a
    copy of a mapping."""
    if isinstance(config, Mapping):
        return _nested(copy.deepcopy(dict(config)))
    return _read_yaml(Path(config), what, ())


def classification_config(result: Any, base_config: str | Path | Mapping[str, Any] | None = None,
                          run_dir: str | Path | None = None, img_size: int | None = None) -> dict[str, Any]:
    """A `python -m classification fit` config that trains a sub-network from scratch.

    Args:
        result: a `SubnetConfig`, or a `SearchResult` (its searched sub-network).
        base_config: a classification config (path or dict) to start from; `model.arch` is set to
            the sub-network's architecture, replacing `model.model_name`. None: only `model.arch`.
        run_dir: where its logs and checkpoints go (not into the base config's run folder, whose
            checkpoints they would overwrite).
        img_size: the training size (`data.img_size`): the search's, which sized the attention
            biases it counted. None: the base config's.
    """
    config = read_config(base_config) if base_config is not None else {}
    model = config.setdefault("model", {}) or {}
    config["model"] = model
    subnet = result if isinstance(result, SubnetConfig) else result.config
    model.pop("model_name", None)
    model["arch"] = arch_dict(subnet)
    if img_size is not None:
        data = config.setdefault("data", {}) or {}
        config["data"] = data
        data["img_size"] = int(img_size)
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
