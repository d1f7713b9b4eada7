"""Weights by name (`hf-hub:ORG/REPO`), offline, through huggingface_hub's real code path.

No machine here reaches the hub: each test lays out huggingface_hub's own cache in a temporary
folder (`models--ORG--REPO/{blobs,refs,snapshots}` with the weights' blob named by its SHA-256,
as the hub stores LFS files) and points huggingface_hub at it, offline. `hf_hub_download` is not
mocked: it resolves the reference, finds the snapshot and returns the cached file.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save as safetensors_bytes

from backbones import CheckpointError, create_model, load_checkpoint, read_state_dict
from backbones.hub import hub_file, parse_hub_spec

S0_REPO = "timm/efficientformerv2_s0.snap_dist_in1k"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def lay_out_repo(cache: Path, repo: str, files: dict[str, bytes], revision: str = "main",
                 commit: str = COMMIT) -> Path:
    """Put `files` into huggingface_hub's cache layout as a download of `repo` at `revision` would."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / revision).write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (folder / "blobs").mkdir(exist_ok=True)
    for name, data in files.items():
        sha = hashlib.sha256(data).hexdigest()
        (folder / "blobs" / sha).write_bytes(data)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", sha))
    return snapshot


def state_dict_bytes(sd: dict[str, torch.Tensor], fmt: str = "safetensors") -> bytes:
    sd = {k: v.detach().contiguous().clone() for k, v in sd.items()}
    if fmt == "safetensors":
        return safetensors_bytes(sd)
    buffer = io.BytesIO()
    torch.save(sd, buffer)
    return buffer.getvalue()


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty huggingface_hub cache, offline. huggingface_hub reads its environment at import,
    so its constants are set as well as the variables."""
    from huggingface_hub import constants
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def timm_s0(randomize_):
    return randomize_(timm.create_model("efficientformerv2_s0")).eval()


def logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


def test_hub_spec_loads_from_the_cache_offline_and_matches_timm(hub_cache, timm_s0):
    lay_out_repo(hub_cache, S0_REPO, {"model.safetensors": state_dict_bytes(timm_s0.state_dict()),
                                      "config.json": b'{"architecture": "efficientformerv2_s0"}'})
    model = create_model("efficientformerv2_s0")
    report = load_checkpoint(model, "hf-hub:" + S0_REPO)
    assert report.ok and report.source_format == "timm"
    x = torch.randn(2, 3, 224, 224)
    assert (logits(model, x) - logits(timm_s0, x)).abs().max() < 1e-5
    path = hub_file("hf-hub:" + S0_REPO)
    assert path.name == "model.safetensors" and str(path).startswith(str(hub_cache))


def test_pretrained_true_takes_the_variants_hub_weights(hub_cache, timm_s0):
    lay_out_repo(hub_cache, S0_REPO, {"model.safetensors": state_dict_bytes(timm_s0.state_dict())})
    model = create_model("efficientformerv2_s0", pretrained=True)
    assert model.pretrained_cfg["hf_hub_id"] == S0_REPO
    x = torch.randn(1, 3, 224, 224)
    assert (logits(model, x) - logits(timm_s0, x)).abs().max() < 1e-5


def test_pytorch_model_bin_when_the_repo_has_no_safetensors(hub_cache, timm_s0):
    lay_out_repo(hub_cache, S0_REPO, {"pytorch_model.bin": state_dict_bytes(timm_s0.state_dict(), "torch")})
    assert hub_file("hf-hub:" + S0_REPO).name == "pytorch_model.bin"
    model = create_model("efficientformerv2_s0")
    load_checkpoint(model, "hf-hub:" + S0_REPO)
    assert torch.equal(model.stem.conv1.conv.weight, timm_s0.stem.conv1.conv.weight)


def test_a_revision_after_the_at_sign(hub_cache, timm_s0):
    other = "fedcba9876543210fedcba9876543210fedcba98"
    lay_out_repo(hub_cache, S0_REPO, {"model.safetensors": state_dict_bytes(timm_s0.state_dict())},
                 revision="v1", commit=other)
    assert other in str(hub_file(f"hf-hub:{S0_REPO}@v1"))
    assert other in str(hub_file(f"hf-hub:{S0_REPO}@{other}"))  # a commit hash needs no reference
    with pytest.raises(CheckpointError, match="is not in the Hugging Face cache"):
        hub_file("hf-hub:" + S0_REPO)  # main was never fetched


def test_offline_without_a_cached_file_is_one_line_saying_what_to_fetch_and_where(hub_cache):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(create_model("efficientformerv2_s0"), "hf-hub:" + S0_REPO)
    message = str(info.value)
    assert "\n" not in message
    assert f"https://huggingface.co/{S0_REPO}/resolve/main/model.safetensors" in message
    assert str(hub_cache) in message and "HF_HUB_OFFLINE" in message
    assert "pass the downloaded file's path" in message


def test_hub_repo_of_another_variant_names_the_variant(hub_cache, randomize_):
    s1_repo = "timm/efficientformerv2_s1.snap_dist_in1k"
    s1 = randomize_(timm.create_model("efficientformerv2_s1"))
    lay_out_repo(hub_cache, s1_repo, {"model.safetensors": state_dict_bytes(s1.state_dict())})
    with pytest.raises(CheckpointError, match="the checkpoint is efficientformerv2_s1, but the model is "
                                              "efficientformerv2_s0"):
        load_checkpoint(create_model("efficientformerv2_s0"), "hf-hub:" + s1_repo)


def test_a_damaged_file_in_the_cache_is_refused(hub_cache, timm_s0):
    snapshot = lay_out_repo(hub_cache, S0_REPO, {"model.safetensors": state_dict_bytes(timm_s0.state_dict())})
    blob = (snapshot / "model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[-100] ^= 0xFF  # a weight's byte: the file still parses
    blob.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="damaged: the cached model.safetensors .* does not match the SHA-256"):
        read_state_dict("hf-hub:" + S0_REPO)


@pytest.mark.parametrize("spec", ["hf-hub:", "hf-hub:timm", "hf-hub:a/b/c", "hf-hub:timm/x@", "hf-hub:../x"])
def test_malformed_specs(spec):
    with pytest.raises(CheckpointError, match="is not a hub spec: expected hf-hub:ORG/REPO"):
        parse_hub_spec(spec)


def test_timm_teacher_from_the_hub(hub_cache):
    """The teacher takes the same spec; a timm teacher goes through the same cache and checks."""
    from classification.module import ImageClassifier, build_teacher

    torch.manual_seed(2)
    reference = timm.create_model("test_resnet", num_classes=10).eval()
    repo = "timm/test_resnet.r160_in1k"
    lay_out_repo(hub_cache, repo, {"model.safetensors": state_dict_bytes(reference.state_dict())})
    config = {"name": "test_resnet", "checkpoint": "hf-hub:" + repo}
    teacher = build_teacher(config, num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(teacher(x), logits(reference, x))
    assert ImageClassifier(num_classes=10, img_size=32, teacher=config).teacher is None  # built for fit only
    with pytest.raises(CheckpointError, match="does not fit timm's 'test_resnet' with 5 classes"):
        build_teacher(config, num_classes=5)
    with pytest.raises(ValueError, match="not a hub spec"):
        ImageClassifier(num_classes=10, teacher={"name": "test_resnet", "checkpoint": "hf-hub:nothing"})


def test_model_pretrained_takes_a_hub_spec(hub_cache, timm_s0):
    from classification.module import ImageClassifier

    lay_out_repo(hub_cache, S0_REPO, {"model.safetensors": state_dict_bytes(timm_s0.state_dict())})
    m = ImageClassifier(num_classes=1000, img_size=64, pretrained="hf-hub:" + S0_REPO)
    assert torch.equal(m.model.stem.conv1.conv.weight, timm_s0.stem.conv1.conv.weight)
    x = torch.randn(1, 3, 64, 64)
    assert torch.isfinite(logits(m.model, x)).all()  # bias tables resampled from 224 to 64
