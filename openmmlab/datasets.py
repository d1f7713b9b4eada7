"""Where a config's data is and which classes it has, for MMDetection and MMSegmentation configs.

- `set_data_root`: one data root for every loader (train, val, test; wrapped datasets included)
  and the evaluators' annotation files (``val_evaluator.ann_file``, ``test_evaluator.ann_file``
  follow their loader's dataset), as ``--data-root`` of tools/mm_train.py and tools/mm_test.py.
- `check_cfg_options`: ``--cfg-options`` keys that set a variable of the config file
  (``data_root``, ``metainfo``, ``max_epochs``, ...) are refused: the file reads them only while
  it is parsed, so setting them afterwards would change nothing, silently.
- `check_data_files`: a missing annotation file or image folder named with its config key.
- `apply_classes_from_data`: class names taken from the data (a COCO annotation file's
  ``categories``; an ADE-format folder's ``classes.txt``) into every loader's
  ``metainfo.classes``, and the heads' ``num_classes`` set to their count.
- `check_classes`, `empty_dataset_message`, `check_built_datasets`: a dataset whose class names
  match nothing of the data is one clear error naming ``metainfo.classes`` and
  ``--classes-from-data``, not mmengine's ``need at least one array to concatenate``.

Works on the mmengine `Config` before the run is built and imports neither mmdet nor mmseg: a
dataset type's own class names are looked up in the registry of the config's ``default_scope``.
"""
from __future__ import annotations

import colorsys
import importlib
import inspect
import json
import logging
import os
from typing import Any, Iterable, Mapping, Sequence

from mmengine.logging import print_log

from backbones.errors import EfficientFormerV2Error, NotFoundError

__all__ = ["LOADERS", "EVALUATORS", "CLASSES_FILE", "ConfigError", "leaf_datasets", "set_data_root",
           "check_cfg_options", "check_data_files", "coco_category_names", "data_classes", "config_classes",
           "apply_classes_from_data", "check_classes", "empty_dataset_message", "check_built_datasets",
           "init_checkpoints"]

LOADERS = ("train_dataloader", "val_dataloader", "test_dataloader")
EVALUATORS = {"val_evaluator": "val_dataloader", "test_evaluator": "test_dataloader"}
RUN_LOADERS = {"train": ("train_dataloader", "val_dataloader"), "test": ("test_dataloader",)}
RUN_EVALUATORS = {"train": ("val_evaluator",), "test": ("test_evaluator",)}
# the file of an ADE-format folder that names its classes, one per line, in label order
CLASSES_FILE = "classes.txt"
class ConfigError(EfficientFormerV2Error, ValueError):
    """A config that cannot be run as written (the message names the file or key and the problem)."""


def _preview(names: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(map(str, list(names)[:n]))
    return shown + (f", ... ({len(names)} in all)" if len(names) > n else "")


def _is_remote(path: Any) -> bool:
    return "://" in str(path)


def _join(root: Any, path: Any) -> str:
    """A dataset path as mmengine's BaseDataset resolves it: relative paths under data_root."""
    path = "" if path is None else str(path)
    if not root or os.path.isabs(path):
        return path
    return os.path.join(str(root), path)


def leaf_datasets(cfg: Mapping[str, Any], loader: str) -> list[tuple[str, Any]]:
    """The dataset configs of a loader that read data (``(dotted key, config)``), through the
    wrappers: ``dataset=`` (RepeatDataset, ClassBalancedDataset, MultiImageMixDataset) and
    ``datasets=[...]`` (ConcatDataset)."""
    loader_cfg = cfg.get(loader)
    if not isinstance(loader_cfg, Mapping) or not isinstance(loader_cfg.get("dataset"), Mapping):
        return []
    found: list[tuple[str, Any]] = []

    def walk(key: str, ds: Any) -> None:
        if isinstance(ds.get("datasets"), (list, tuple)):
            for i, sub in enumerate(ds["datasets"]):
                if isinstance(sub, Mapping):
                    walk(f"{key}.datasets.{i}", sub)
        elif isinstance(ds.get("dataset"), Mapping) and "data_root" not in ds:
            walk(f"{key}.dataset", ds["dataset"])
        else:
            found.append((key, ds))

    walk(f"{loader}.dataset", loader_cfg["dataset"])
    return found


def _evaluators(cfg: Mapping[str, Any], name: str) -> list[Any]:
    ev = cfg.get(name)
    if isinstance(ev, Mapping):
        return [ev]
    if isinstance(ev, (list, tuple)):
        return [e for e in ev if isinstance(e, Mapping)]
    return []


def set_data_root(cfg: Any, root: str | os.PathLike, keep: Iterable[str] = ()) -> None:
    """Point every loader's dataset at `root`, and each evaluator's ``ann_file`` at its loader's
    annotation file under `root` (``val_evaluator`` follows ``val_dataloader``, ``test_evaluator``
    ``test_dataloader``). Keys in `keep` (e.g. ``val_evaluator.ann_file`` set by the user) are
    left as they are.

    Raises:
        NotFoundError: `root` is not a folder.
    """
    keep = set(keep)
    if not _is_remote(root) and not os.path.isdir(root):
        raise NotFoundError(f"--data-root {str(root)!r} is not a folder: give the dataset folder (COCO: the "
                            "one holding annotations/ and train2017/; ADE20K: the one holding images/ and "
                            "annotations/)")
    root = str(root)
    for loader in LOADERS:
        for _, ds in leaf_datasets(cfg, loader):
            ds["data_root"] = root
    for evaluator, loader in EVALUATORS.items():
        if f"{evaluator}.ann_file" in keep:
            continue
        anns = [_join(root, ds["ann_file"]) for _, ds in leaf_datasets(cfg, loader) if ds.get("ann_file")]
        for ev in _evaluators(cfg, evaluator):
            if ev.get("ann_file") and len(set(anns)) == 1:
                ev["ann_file"] = anns[0]


def check_cfg_options(cfg_options: Mapping[str, Any], cfg: Mapping[str, Any], run_keys: Iterable[str]) -> None:
    """Refuse ``--cfg-options`` keys that set a variable of the config file: a top-level key the
    file defines that is not one the run reads (`run_keys`, the Runner's parameters) and whose
    value the file copied into the run's keys (``max_epochs`` into ``train_cfg.max_epochs``), or
    ``data_root`` / ``metainfo``. The file uses its variables only while it is parsed, so setting
    one would change nothing. A key the file does not define is the run's to read (``strategy``,
    ``tta_model``, ``compile``, ...) and is taken."""
    run_keys = set(run_keys)
    for key, value in cfg_options.items():
        top = str(key).split(".", 1)[0]
        if top in run_keys or top not in cfg:
            continue
        if top == "data_root":
            hint = "pass --data-root DIR (every loader and evaluator follows it)"
        elif top == "metainfo":
            hint = ("set train_dataloader.dataset.metainfo.classes (and val_dataloader's, test_dataloader's and the "
                    "heads' num_classes), or pass --classes-from-data to take the names from the data")
        else:
            users = _keys_holding(cfg, top)
            if not users:
                continue  # not copied anywhere: a key something else of the run may read
            named = [k for k in users if k.rsplit(".", 1)[-1] == top]  # max_epochs: train_cfg.max_epochs
            if named:
                hint = f"set the keys that use it instead (e.g. {', '.join(named[:3])})"
            elif len(users) <= 6:
                hint = f"set the keys that use it instead ({', '.join(users)})"
            else:
                hint = "set the keys that use it instead (see the config file)"
        raise ConfigError(f"--cfg-options {key}={value}: {top!r} is a variable of the config file, read only while "
                          f"the file is parsed, so setting it would change nothing; {hint}")


def _keys_holding(cfg: Mapping[str, Any], name: str) -> list[str]:
    """Dotted keys, under the config's other top-level keys, whose value equals that of the
    top-level key `name` (where the file copied it; none for bools and None)."""
    value = cfg[name]
    if value is None or isinstance(value, bool):
        return []
    found: list[str] = []

    def walk(key: str, node: Any) -> None:
        if node == value and type(node) is type(value):
            found.append(key)
            return
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(f"{key}.{k}", v)
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                walk(f"{key}.{i}", v)

    for top in sorted(cfg):
        if top != name:
            walk(top, cfg[top])
    return found


def check_data_files(cfg: Mapping[str, Any], mode: str) -> None:
    """Raise NotFoundError, naming the config key and the path, when a dataset of the run
    (train and val loaders for "train", the test loader for "test") has a missing annotation
    file (``ann_file``) or folder (``data_prefix``), or an evaluator of the run a missing
    ``ann_file``. Remote paths and datasets with ``backend_args`` are left to their backends."""
    for loader in RUN_LOADERS[mode]:
        for key, ds in leaf_datasets(cfg, loader):
            root = ds.get("data_root")
            if _is_remote(root) or ds.get("backend_args"):
                continue
            ann = ds.get("ann_file")
            if ann and not _is_remote(ann):
                path = _join(root, ann)
                if not os.path.isfile(path):
                    where = (f"pass --data-root DIR, the folder holding {ann}" if root and not os.path.isabs(str(ann))
                             else f"set {key}.ann_file")
                    raise NotFoundError(f"annotation file {path!r} of {key}.ann_file not found: {where}")
            prefixes = ds.get("data_prefix") or {}
            for name, prefix in (prefixes.items() if isinstance(prefixes, Mapping) else ()):
                if not isinstance(prefix, str) or not prefix or _is_remote(prefix):
                    continue
                path = _join(root, prefix)
                if not os.path.isdir(path):
                    raise NotFoundError(f"folder {path!r} of {key}.data_prefix.{name} not found: pass --data-root "
                                        f"DIR, the folder holding {prefix}, or set {key}.data_prefix.{name}")
    for name in RUN_EVALUATORS[mode]:
        for ev in _evaluators(cfg, name):
            ann = ev.get("ann_file")
            if ann and not _is_remote(ann) and not ev.get("backend_args") and not os.path.isfile(str(ann)):
                raise NotFoundError(f"annotation file {str(ann)!r} of {name}.ann_file not found: pass --data-root "
                                    f"DIR (the evaluator follows its loader's dataset), or set {name}.ann_file")


# --------------------------------------------------------------------------------------------
# class names
# --------------------------------------------------------------------------------------------
def coco_category_names(path: str | os.PathLike) -> list[str]:
    """The category names of a COCO annotation file, in the order of their ids."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the COCO annotation file {str(path)!r}: {exc}") from exc
    cats = doc.get("categories") if isinstance(doc, dict) else None
    if not cats:
        raise ConfigError(f"{str(path)!r} has no categories: a COCO annotation file lists them under "
                          "\"categories\" ({\"id\": 1, \"name\": ...})")
    names = [str(c["name"]) for c in sorted(cats, key=lambda c: c["id"])]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"{str(path)!r}: category names repeat ({_preview(repeated)}); mmdet maps categories to "
                          "labels by name, so each needs its own")
    return names


def _classes_file(root: Any) -> str:
    return os.path.join(str(root or ""), CLASSES_FILE)


def _read_classes_file(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    if not names:
        raise ConfigError(f"{path!r} names no class: write one class name per line, label 1 first")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"{path!r}: class names repeat ({_preview(repeated)})")
    return names


def data_classes(cfg: Mapping[str, Any], loader: str) -> tuple[list[str], str]:
    """The class names the data of `loader` declares, and where they come from: a COCO-format
    dataset's annotation file (``categories``, in id order), or an ADE-format folder's
    ``classes.txt`` (one name per line, in label order: with ADE20K's 0 = ignore, label 1 first)."""
    leaves = leaf_datasets(cfg, loader)
    if not leaves:
        raise ConfigError(f"--classes-from-data: the config has no {loader}.dataset")
    key, ds = leaves[0]
    root, ann = ds.get("data_root"), ds.get("ann_file")
    if ann and str(ann).endswith(".json"):
        path = _join(root, ann)
        return coco_category_names(path), path
    path = _classes_file(root)
    if not os.path.isfile(path):
        raise ConfigError(f"--classes-from-data: {key} has no COCO annotation file and {path!r} does not exist: "
                          "an ADE-format folder names its classes there, one per line in label order (label 1 "
                          "first, 0 being ignore)")
    return _read_classes_file(path), path


def _dataset_class(cfg: Mapping[str, Any], ds: Mapping[str, Any]) -> Any:
    """The registered class of a dataset config (None when the scope's registry is not there)."""
    kind = ds.get("type")
    if isinstance(kind, type):
        return kind
    scope = str(kind).split(".", 1)[0] if "." in str(kind) else cfg.get("default_scope")
    try:
        registry = importlib.import_module(f"{scope}.registry").DATASETS
        return registry.get(kind)
    except (ImportError, KeyError, AttributeError, TypeError):
        return None


def config_classes(cfg: Mapping[str, Any], ds: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The class names a dataset config will use: its ``metainfo.classes``, else its type's."""
    meta = ds.get("metainfo")
    if isinstance(meta, Mapping) and meta.get("classes") is not None:
        return tuple(meta["classes"])
    cls = _dataset_class(cfg, ds)
    classes = getattr(cls, "METAINFO", {}).get("classes") if cls is not None else None
    return tuple(classes) if classes is not None else None


def _fixed_label_order(cls: Any) -> bool:
    """An mmseg dataset whose pixel labels follow its own METAINFO order (ADE20KDataset, ...):
    other class names are remapped to that order (or refused), not taken as the data's labels."""
    return cls is not None and hasattr(cls, "get_label_map") and bool(getattr(cls, "METAINFO", {}).get("classes"))


def _palette(n: int) -> list[tuple[int, int, int]]:
    """`n` distinct colours (hues around the circle), the same for the same `n`."""
    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 0.95)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return out


def _set_num_classes(node: Any, old: int, new: int, key: str = "model") -> list[str]:
    changed = []
    if isinstance(node, Mapping):
        for k in list(node.keys()):
            v = node[k]
            if k == "num_classes" and v == old and not isinstance(v, bool):
                node[k] = new
                changed.append(f"{key}.{k}")
            else:
                changed += _set_num_classes(v, old, new, f"{key}.{k}")
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            changed += _set_num_classes(v, old, new, f"{key}.{i}")
    return changed


def apply_classes_from_data(cfg: Any, mode: str) -> str:
    """Take the class names of the data (`data_classes` of the train loader, or of the test loader
    for "test") into every loader's ``metainfo.classes`` (with a palette of as many colours), and
    set each head's ``num_classes`` that held the config's class count to the new count. An mmseg
    dataset type with a fixed label order (ADE20KDataset) becomes ``BaseSegDataset`` with the
    same suffixes and ``reduce_zero_label``, so the data's label ids are its own classes.

    Returns a one-line summary (also logged).
    """
    loader = "train_dataloader" if mode == "train" else "test_dataloader"
    names, source = data_classes(cfg, loader)
    _, first = leaf_datasets(cfg, loader)[0]
    old = config_classes(cfg, first)
    if old is not None and list(old) == names:
        return f"classes from {source}: {len(names)}, as in the config"
    palette = _palette(len(names))
    for name in LOADERS:
        for _, ds in leaf_datasets(cfg, name):
            cls = _dataset_class(cfg, ds)
            meta = dict(ds.get("metainfo") or {})
            meta.update(classes=tuple(names), palette=palette)
            ds["metainfo"] = meta
            if _fixed_label_order(cls):
                defaults = inspect.signature(cls.__init__).parameters
                for arg in ("img_suffix", "seg_map_suffix", "reduce_zero_label"):
                    if arg not in ds and arg in defaults and defaults[arg].default is not inspect.Parameter.empty:
                        ds[arg] = defaults[arg].default
                kind = str(ds.get("type"))
                ds["type"] = (kind.rsplit(".", 1)[0] + "." if "." in kind else "") + "BaseSegDataset"
    if old is None:
        raise ConfigError(f"--classes-from-data: {loader}.dataset has no class names to replace (no "
                          "metainfo.classes, and its type defines none)")
    changed = _set_num_classes(cfg["model"], len(old), len(names))
    if not changed:
        raise ConfigError(f"--classes-from-data: no head of the model has num_classes={len(old)} (the config's "
                          f"{len(old)} classes) to set to {len(names)}; set the heads' num_classes yourself")
    summary = (f"classes from {source}: {len(names)} ({_preview(names)}) in metainfo.classes of every loader; "
               f"{', '.join(changed)} {len(old)} -> {len(names)}")
    print_log(summary, logger="current", level=logging.INFO)
    return summary


def check_classes(cfg: Mapping[str, Any], mode: str) -> None:
    """Before the datasets are built: an ADE-format folder whose ``classes.txt`` names other
    classes than the config's, and an mmseg dataset type with a fixed label order given class
    names it does not have, are a `ConfigError` naming ``metainfo.classes`` and the way out."""
    for loader in RUN_LOADERS[mode]:
        for key, ds in leaf_datasets(cfg, loader):
            cls = _dataset_class(cfg, ds)
            classes = config_classes(cfg, ds)
            meta = ds.get("metainfo")
            given = meta.get("classes") if isinstance(meta, Mapping) else None
            if _fixed_label_order(cls) and given is not None and not set(given) <= set(cls.METAINFO["classes"]):
                raise ConfigError(
                    f"{key}.metainfo.classes ({_preview(list(given))}) are not classes of {ds.get('type')}, whose label "
                    f"ids follow its own {len(cls.METAINFO['classes'])} classes: for a folder with its own classes "
                    "set type='BaseSegDataset' (with img_suffix, seg_map_suffix, reduce_zero_label), or pass "
                    f"--classes-from-data with the names in {CLASSES_FILE}")
            root = ds.get("data_root")
            path = _classes_file(root)
            if (ds.get("ann_file") or not root or _is_remote(root) or classes is None
                    or not os.path.isfile(path)):
                continue
            names = _read_classes_file(path)
            if names != list(classes):
                raise ConfigError(
                    f"{path!r} names {len(names)} classes ({_preview(names)}) but {key} has {len(classes)} "
                    f"metainfo.classes ({_preview(list(classes))}): pass --classes-from-data to train on the "
                    f"folder's classes, or set metainfo.classes of every loader's dataset and the heads' num_classes")


def empty_dataset_message(cfg: Mapping[str, Any], loader: str) -> str | None:
    """Why a dataset of `loader` came out empty (mmengine then fails with ``need at least one
    array to concatenate``), in words that name the config key; None when no cause is found."""
    for key, ds in leaf_datasets(cfg, loader):
        root, ann = ds.get("data_root"), ds.get("ann_file")
        if ann and str(ann).endswith(".json") and not _is_remote(root) and os.path.isfile(_join(root, ann)):
            path = _join(root, ann)
            names = coco_category_names(path)
            classes = config_classes(cfg, ds)
            if classes is not None and not set(names) & set(classes):
                return (f"{key}: none of the {len(names)} categories of {path} ({_preview(names)}) is one of its "
                        f"{len(classes)} metainfo.classes ({_preview(list(classes))}), so it holds no image: pass "
                        "--classes-from-data to take the file's classes (and set the heads' num_classes), or set "
                        "metainfo.classes of every loader's dataset")
            return (f"{key} is empty: no image of {path} has an annotation of its metainfo.classes that passes "
                    f"filter_cfg={dict(ds.get('filter_cfg') or {})}")
        prefixes = ds.get("data_prefix") or {}
        img = prefixes.get("img_path", prefixes.get("img")) if isinstance(prefixes, Mapping) else None
        if img is not None:
            suffix = ds.get("img_suffix")
            what = f"no image file{f' ending in {suffix}' if suffix else ''}"
            name = "img_path" if "img_path" in prefixes else "img"
            return f"{key} is empty: {what} in {_join(root, img)!r} ({key}.data_prefix.{name})"
    return None


def _unwrap(dataset: Any) -> list[Any]:
    """The datasets inside mmengine's wrappers (ConcatDataset, RepeatDataset, ...)."""
    if hasattr(dataset, "datasets"):
        return [d for sub in dataset.datasets for d in _unwrap(sub)]
    if hasattr(dataset, "dataset"):
        return _unwrap(dataset.dataset)
    return [dataset]


def check_built_datasets(datasets: Mapping[str, Any]) -> None:
    """After the datasets are built (``{loader: dataset}``): a COCO-format dataset none of whose
    metainfo.classes is a category of its file is a `ConfigError`; one with only some of them is
    a warning (the others are never seen, e.g. a paper config's 80 COCO classes on one's own data
    that shares a few names)."""
    for loader, dataset in datasets.items():
        for ds in _unwrap(dataset):
            cat_ids = getattr(ds, "cat_ids", None)
            classes = getattr(ds, "metainfo", {}).get("classes")
            if cat_ids is None or not classes:
                continue
            ann = getattr(ds, "ann_file", "")
            if not cat_ids:
                raise ConfigError(f"{loader}.dataset: none of its {len(classes)} metainfo.classes "
                                  f"({_preview(list(classes))}) is a category of {ann}: pass --classes-from-data "
                                  "to take the file's classes, or set metainfo.classes of every loader's dataset")
            if len(cat_ids) < len(classes):
                print_log(f"{loader}.dataset: only {len(cat_ids)} of its {len(classes)} metainfo.classes are "
                          f"categories of {ann}; the others are never seen (--classes-from-data takes the file's "
                          "own classes)", logger="current", level=logging.WARNING)


def init_checkpoints(node: Any, key: str = "model") -> list[tuple[str, str]]:
    """``(dotted key, checkpoint)`` of every ``init_cfg=dict(type='Pretrained', checkpoint=...)``
    in a model config."""
    found = []
    if isinstance(node, Mapping):
        if node.get("type") == "Pretrained" and node.get("checkpoint"):
            found.append((f"{key}.checkpoint", str(node["checkpoint"])))
        for k, v in node.items():
            found += init_checkpoints(v, f"{key}.{k}")
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            found += init_checkpoints(v, f"{key}.{i}")
    return found
