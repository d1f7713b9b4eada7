"""Weights by name from the Hugging Face Hub: `hf-hub:ORG/REPO` or `hf-hub:ORG/REPO@REVISION`.

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
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from pathlib import Path

from .checkpoint import CheckpointError

__all__ = ["HUB_PREFIX", "WEIGHT_FILES", "is_hub_spec", "parse_hub_spec", "hub_file", "hub_offline"]

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
            with _quiet_retries():
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
def _quiet_retries():
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
