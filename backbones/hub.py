"""Weights by name from the Hugging Face Hub (`hf-hub:ORG/REPO` or `hf-hub:ORG/REPO@REVISION`),
or from a local folder in the Hub's layout (`local-dir:PATH`).

    from backbones import create_model, load_checkpoint
    model = create_model("efficientformerv2_s0")
    load_checkpoint(model, "hf-hub:timm/efficientformerv2_s0.snap_dist_in1k")

The file is fetched with `huggingface_hub.hf_hub_download` into huggingface_hub's own cache
(`HF_HUB_CACHE`, by default ~/.cache/huggingface/hub), safetensors first (`model.safetensors`,
then `pytorch_model.bin`), and read by `backbones.checkpoint.read_state_dict` like any local
file (safely, checked). `HF_HUB_OFFLINE=1` and a machine without network are honoured: a cached
file is used, and without one `hub_file` raises a one-line `CheckpointError` that names the
file to fetch (its URL) and where it goes (the cache folder, or pass the local file instead).
A cached file whose blob is named by its SHA-256 (how the hub stores weights) is checked
against that name, so a file damaged in the cache is refused rather than loaded.

`local-dir:PATH` names a folder in timm's Hub format (`config.json` beside `model.safetensors` or
`pytorch_model.bin`, what `tools/export.py --format hub` writes and `timm.create_model(
"local-dir:PATH", pretrained=True)` reads); it is a checkpoint spec wherever `hf-hub:` is. Both
kinds also name a whole model: `create_model("hf-hub:ORG/REPO")` or `create_model("local-dir:PATH")`
builds the architecture, class count and distillation head that config.json records
(`source_model_kwargs`) and loads the weights strictly.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from pathlib import Path

from .errors import CheckpointError

__all__ = ["HUB_PREFIX", "LOCAL_PREFIX", "WEIGHT_FILES", "CONFIG_FILE", "is_hub_spec", "is_local_dir_spec",
           "is_source_spec", "parse_hub_spec", "hub_file", "hub_offline", "local_dir_file", "source_file",
           "source_config", "source_model_kwargs", "quiet_retries"]

HUB_PREFIX = "hf-hub:"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # in the order they are tried
_REPO = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_verified: dict[tuple[str, int, int], bool] = {}


def is_hub_spec(spec: object) -> bool:
    """Whether `spec` names hub weights (`hf-hub:...`) rather than a local file."""
    return isinstance(spec, str) and spec.startswith(HUB_PREFIX)


def parse_hub_spec(spec: str) -> tuple[str, str | None]:
    """(repo id, revision or None) of `hf-hub:ORG/REPO[@REVISION]`; CheckpointError if malformed."""
    body = spec[len(HUB_PREFIX):] if is_hub_spec(spec) else ""
    repo_id, _, revision = body.partition("@")
    if not _REPO.fullmatch(repo_id) or ".." in repo_id or (revision == "" and "@" in body):
        raise CheckpointError(f"{spec!r} is not a hub spec: expected hf-hub:ORG/REPO or hf-hub:ORG/REPO@REVISION "
                              "(e.g. hf-hub:timm/efficientformerv2_s0.snap_dist_in1k)")
    return repo_id, revision or None


def hub_offline() -> bool:
    """Whether huggingface_hub must not reach the network: its `HF_HUB_OFFLINE` setting (read at
    import) or the environment variable as it is now."""
    from huggingface_hub import constants
    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
    return bool(constants.HF_HUB_OFFLINE) or env


def hub_file(spec: str, filenames: tuple[str, ...] = WEIGHT_FILES) -> Path:
    """Local path of the weights `spec` names: the first of `filenames` the repository has,
    from huggingface_hub's cache (downloaded there first when the hub can be reached)."""
    repo_id, revision = parse_hub_spec(spec)
    try:
        from huggingface_hub import constants, errors, hf_hub_download, hf_hub_url
    except ImportError as e:
        raise CheckpointError(f"{spec}: weights from the hub need the huggingface_hub package "
                              "(pip install huggingface_hub), or pass a local file") from e
    offline = hub_offline()
    unreachable = False  # the hub did not answer: the other files are looked for in the cache only
    not_cached: list[str] = []
    for filename in filenames:
        try:
            with quiet_retries():
                path = hf_hub_download(repo_id, filename, revision=revision,
                                       local_files_only=offline or unreachable)
        except errors.LocalEntryNotFoundError:  # not in the cache, and the hub is off or unreachable
            not_cached.append(filename)
            unreachable = True
            continue
        except errors.EntryNotFoundError:  # the repository has no such file: try the next
            continue
        except errors.RevisionNotFoundError as e:
            raise CheckpointError(f"{spec}: the repository {repo_id} has no revision {revision!r} on the "
                                  "Hugging Face Hub") from e
        except errors.RepositoryNotFoundError as e:  # also gated and private repositories
            raise CheckpointError(f"{spec}: no repository {repo_id} on the Hugging Face Hub that this machine "
                                  "may read (a typo, or private or gated: log in with `hf auth login`)") from e
        except (errors.HfHubHTTPError, OSError) as e:
            raise CheckpointError(f"{spec}: fetching {filename} from the Hugging Face Hub failed ({e}); "
                                  "try again, or pass a local file") from e
        _verify_blob(Path(path), spec, filename)
        return Path(path)
    if not not_cached:
        raise CheckpointError(f"{spec}: the repository {repo_id} holds none of {', '.join(filenames)}: "
                              "it has no weights this project reads")
    filename = not_cached[0]
    cache = Path(constants.HF_HUB_CACHE)
    why = "HF_HUB_OFFLINE is set" if offline else "no network"
    url = hf_hub_url(repo_id, filename, revision=revision)
    folder = cache / ("models--" + repo_id.replace("/", "--"))
    fetch = f"hf download {repo_id} {filename}" + (f" --revision {revision}" if revision else "")
    raise CheckpointError(f"{spec}: {filename} is not in the Hugging Face cache {cache} and the hub cannot be "
                          f"reached ({why}): fetch {url} (e.g. `{fetch}` on a connected machine) and pass the "
                          f"downloaded file's path instead of {spec}, or copy that machine's cache folder "
                          f"{folder.name} into {cache}")


class _RetryNoise(logging.Filter):
    """Drops huggingface_hub's per-attempt warnings while it retries an unreachable hub: the
    outcome is one error line of ours."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("thrown while requesting" in message or message.startswith("Retrying in "))


@contextlib.contextmanager
def quiet_retries():
    """Within the block, huggingface_hub's per-attempt retry warnings are not shown."""
    loggers = [logging.getLogger(name) for name in ("huggingface_hub.utils._http", "huggingface_hub.file_download")]
    noise = _RetryNoise()
    for logger in loggers:
        logger.addFilter(noise)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(noise)


def _verify_blob(path: Path, spec: str, filename: str) -> None:
    """The hub names the blob of a weights file (a Git LFS object) by its SHA-256: a cached file
    whose bytes no longer match was damaged after the download."""
    real = path.resolve()
    if real.parent.name != "blobs" or not _SHA256.fullmatch(real.name):
        return  # a small file stored by Git hash, or a cache without symlinks: nothing to compare
    stat = real.stat()
    key = (str(real), stat.st_size, stat.st_mtime_ns)
    if _verified.get(key):
        return
    h = hashlib.sha256()
    with real.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    if h.hexdigest() != real.name:
        raise CheckpointError(f"{spec}: damaged: the cached {filename} ({real}) does not match the SHA-256 the hub "
                              f"published for it ({real.name[:16]}..., the file has {h.hexdigest()[:16]}...): "
                              "delete it and fetch it again")
    _verified[key] = True


# --------------------------------------------------------------------------------------------
# Folders in timm's Hub format: `local-dir:PATH`, and the config.json of either kind of spec
# --------------------------------------------------------------------------------------------
LOCAL_PREFIX = "local-dir:"
CONFIG_FILE = "config.json"
_HUB_FOLDER = ("a folder in timm's Hub format (config.json and model.safetensors, as "
               "`python tools/export.py --format hub` writes it)")


def is_local_dir_spec(spec: object) -> bool:
    """Whether `spec` names a local folder in the Hub's layout (`local-dir:PATH`)."""
    return isinstance(spec, str) and spec.startswith(LOCAL_PREFIX)


def is_source_spec(spec: object) -> bool:
    """Whether `spec` names weights with a config.json beside them: `hf-hub:` or `local-dir:`."""
    return is_hub_spec(spec) or is_local_dir_spec(spec)


def local_dir_file(spec: str, filenames: tuple[str, ...] = WEIGHT_FILES) -> Path:
    """The first of `filenames` in the folder `local-dir:PATH` names. A folder without
    config.json or without any of the files is a one-line `CheckpointError`."""
    folder = Path(spec[len(LOCAL_PREFIX):]).expanduser()
    if not folder.is_dir():
        raise CheckpointError(f"{spec}: {folder} is not a folder: pass {_HUB_FOLDER}")
    if not (folder / CONFIG_FILE).is_file():
        raise CheckpointError(f"{spec}: {folder} has no {CONFIG_FILE}: pass {_HUB_FOLDER}")
    for name in filenames:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"{spec}: {folder} holds none of {', '.join(filenames)}: pass {_HUB_FOLDER}")


def source_file(spec: str, filenames: tuple[str, ...] = WEIGHT_FILES) -> Path:
    """Local path of a file of a `hf-hub:` repository (`hub_file`) or a `local-dir:` folder."""
    return local_dir_file(spec, filenames) if is_local_dir_spec(spec) else hub_file(spec, filenames)


def source_config(spec: str) -> dict:
    """The config.json of a `hf-hub:` repository or `local-dir:` folder (timm's layout:
    `architecture`, `num_classes`, `label_names`, `model_args`, `pretrained_cfg`)."""
    import json
    if is_local_dir_spec(spec):
        local_dir_file(spec)  # config.json and weights both there, or one line saying what is missing
        path = Path(spec[len(LOCAL_PREFIX):]).expanduser() / CONFIG_FILE
    else:
        path = hub_file(spec, (CONFIG_FILE,))
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{spec}: {CONFIG_FILE} is not readable JSON ({e})") from e
    if not isinstance(config, dict) or not isinstance(config.get("architecture"), str):
        raise CheckpointError(f"{spec}: {CONFIG_FILE} names no architecture: pass {_HUB_FOLDER}")
    return config


def source_model_kwargs(spec: str, accepted: tuple[str, ...] = ("num_classes", "distillation", "img_size")
                        ) -> tuple[str, dict]:
    """(architecture name, the `create_model` arguments of `accepted` that config.json records)
    of a `hf-hub:` or `local-dir:` spec: what rebuilds the network its weights are for."""
    config = source_config(spec)
    args = dict(config.get("model_args") or {})
    if "num_classes" in config:
        args.setdefault("num_classes", config["num_classes"])
    if args.get("in_chans", 3) != 3:
        raise CheckpointError(f"{spec}: the model takes {args['in_chans']} input channels; only RGB models are read")
    size = args.get("img_size")
    if isinstance(size, (list, tuple)):  # timm records (height, width); the bias tables here are square
        if len(set(size)) != 1:
            raise CheckpointError(f"{spec}: the model was built for {size[0]}x{size[1]} images; only square "
                                  "training sizes are read")
        args["img_size"] = int(size[0])
    return config["architecture"], {k: v for k, v in args.items() if k in accepted}
