"""Sharing a fine-tuned model in timm's own Hub format (`tools/export.py --format hub`), checked with
timm itself: plain `timm.create_model("local-dir:DIR", pretrained=True)` gives the fine-tuned head and
the same logits; our `create_model` and checkpoint specs read such folders too (`local-dir:`,
`hf-hub:` through huggingface_hub's offline cache). Offline: `--push` says there is no network."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch

from backbones import CheckpointError, create_model, load_checkpoint
from backbones.checkpoint import DIGEST_KEY, tensor_digest
from deploy.models import build_model
from test_hub import hub_cache, lay_out_repo  # noqa: F401  (the offline-cache fixture)
from tool_runner import assert_one_line_error, run_tool

CLASSES = ["daisy", "rose", "tulip"]
SIDE = 64  # the run's training size: timm's model is built for it
DATA = {"root": "data/flowers", "img_size": SIDE, "crop_pct": 0.9, "interpolation": "bilinear",
        "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
PRETRAINED = "hf-hub:timm/efficientformerv2_s0.snap_dist_in1k"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, randomize_) -> Path:
    """A fine-tuned S0 of 3 classes (no distillation head) as the classification module saves it:
    a Lightning checkpoint with the digest, hyper-parameters, class names and the checkpoint
    callback's monitored val/top1."""
    torch.manual_seed(0)
    model = randomize_(create_model("efficientformerv2_s0", num_classes=3, distillation=False, img_size=SIDE))
    sd = {f"model.{k}": v for k, v in model.state_dict().items()}
    ckpt = {"state_dict": sd, DIGEST_KEY: tensor_digest(sd), "epoch": 4, "global_step": 40,
            "hyper_parameters": {"model_name": "efficientformerv2_s0", "pretrained": PRETRAINED, "num_classes": 3,
                                 "img_size": SIDE},
            "datamodule_hyper_parameters": DATA, "class_names": CLASSES,
            "callbacks": {"EpochCheckpoint{'monitor': 'val/top1', 'mode': 'max'}": {
                "monitor": "val/top1", "current_score": torch.tensor(0.8125), "best_model_score": torch.tensor(0.9)}}}
    path = tmp_path_factory.mktemp("run") / "best-004.ckpt"
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def hub_dir(finetuned, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("share") / "s0_flowers"
    result = run_tool("export", "--model", "efficientformerv2_s0", "--checkpoint", finetuned, "--format", "hub",
                      "--out", out)
    assert result.returncode == 0, result.stderr
    assert "max abs diff" in result.stdout and ": ok" in result.stdout
    return out


def _x(seed: int = 3) -> torch.Tensor:
    return torch.randn(2, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(seed))


def _logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


def test_plain_timm_loads_the_folder_with_the_fine_tuned_head(hub_dir, finetuned):
    assert sorted(p.name for p in hub_dir.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    ours = build_model("efficientformerv2_s0", finetuned)
    theirs = timm.create_model(f"local-dir:{hub_dir}", pretrained=True)
    assert type(theirs).__module__.startswith("timm.") and theirs.num_classes == 3
    x = _x()
    want = _logits(ours, x)
    assert want.shape == (2, 3)
    assert (_logits(theirs, x) - want).abs().max().item() <= 1e-5
    cfg = theirs.pretrained_cfg
    assert cfg["label_names"] == CLASSES and cfg["num_classes"] == 3 and cfg["classifier"] == "head"
    # the run's evaluation transform, as timm resolves it for its users
    data = timm.data.resolve_model_data_config(theirs)
    assert data["input_size"] == (3, SIDE, SIDE) and data["crop_pct"] == 0.9
    assert data["interpolation"] == "bilinear" and tuple(data["mean"]) == DATA["mean"] and tuple(data["std"]) == DATA["std"]
    config = json.loads((hub_dir / "config.json").read_text())
    assert config["architecture"] == "efficientformerv2_s0" and config["num_classes"] == 3
    assert config["model_args"]["distillation"] is False


def test_model_card_says_where_it_came_from(hub_dir, finetuned):
    card = (hub_dir / "README.md").read_text()
    assert "library_name: timm" in card
    assert f"**Fine-tuned from:** {PRETRAINED}" in card
    assert "3: daisy, rose, tulip" in card
    assert "**Validation top-1:** 81.25%" in card
    assert f"python tools/export.py --model efficientformerv2_s0 --checkpoint {finetuned} --format hub" in card
    assert f'timm.create_model("local-dir:{hub_dir}", pretrained=True)' in card


def test_our_create_model_and_checkpoint_specs_read_the_folder(hub_dir, finetuned):
    x = _x(4)
    want = _logits(build_model("efficientformerv2_s0", finetuned), x)
    ours = create_model(f"local-dir:{hub_dir}", pretrained=True)
    assert ours.num_classes == 3 and ours.head_dist is None and ours.img_size == SIDE
    assert (_logits(ours, x) - want).abs().max().item() <= 1e-6
    # the folder as a checkpoint spec, like a file or hf-hub:
    model = create_model("efficientformerv2_s0", num_classes=3, distillation=False, img_size=SIDE)
    assert load_checkpoint(model, f"local-dir:{hub_dir}").ok
    assert torch.equal(_logits(model, x), _logits(ours, x))
    # as in timm, without pretrained=True the network is built and not filled
    assert not torch.allclose(_logits(create_model(f"local-dir:{hub_dir}"), x), want)


def test_a_pushed_repo_loads_by_name_from_the_hub_cache(hub_dir, hub_cache):  # noqa: F811
    files = {name: (hub_dir / name).read_bytes() for name in ("config.json", "model.safetensors", "README.md")}
    lay_out_repo(hub_cache, "me/s0-flowers", files)
    x = _x(5)
    ours = create_model("hf-hub:me/s0-flowers", pretrained=True)
    theirs = timm.create_model("hf-hub:me/s0-flowers", pretrained=True)
    assert ours.num_classes == theirs.num_classes == 3
    assert (_logits(ours, x) - _logits(theirs, x)).abs().max().item() <= 1e-5


def test_push_without_network_is_one_line_and_keeps_the_folder(finetuned, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "pushed"
    result = run_tool("export", "--model", "efficientformerv2_s0", "--checkpoint", finetuned, "--format", "hub",
                      "--out", out, "--push", "me/s0-flowers")
    assert_one_line_error(result, "export", "no network", f"{out} is kept")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert 'create_model("hf-hub:me/s0-flowers", pretrained=True)' in (out / "README.md").read_text()


def test_local_dir_without_config_or_weights_is_one_line(hub_dir, tmp_path):
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    (no_config / "model.safetensors").write_bytes((hub_dir / "model.safetensors").read_bytes())
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((hub_dir / "config.json").read_text())
    for folder, what in ((no_config, "has no config.json"), (no_weights, "holds none of model.safetensors")):
        with pytest.raises(CheckpointError, match=what):
            create_model(f"local-dir:{folder}", pretrained=True)
        result = run_tool("export", "--model", "efficientformerv2_s0", "--checkpoint", f"local-dir:{folder}",
                          "--format", "hub", "--out", tmp_path / "never")
        assert_one_line_error(result, "export", f"local-dir:{folder}", what)
        assert not (tmp_path / "never").exists()


def test_hub_export_bad_input_writes_nothing(finetuned, hub_dir, tmp_path):
    before = sorted((p.name, p.stat().st_mtime_ns) for p in hub_dir.iterdir())
    occupied = run_tool("export", "--model", "efficientformerv2_s0", "--checkpoint", finetuned, "--format", "hub",
                        "--out", hub_dir)
    assert_one_line_error(occupied, "export", "exists and is not empty")
    assert sorted((p.name, p.stat().st_mtime_ns) for p in hub_dir.iterdir()) == before
    other = run_tool("export", "--model", "efficientformerv2_s1", "--checkpoint", finetuned, "--format", "hub",
                     "--out", tmp_path / "s1")
    assert_one_line_error(other, "export", "efficientformerv2_s0")
    no_ckpt = run_tool("export", "--model", "efficientformerv2_s0", "--format", "hub", "--out", tmp_path / "x")
    assert_one_line_error(no_ckpt, "export", "needs --checkpoint")
    assert not (tmp_path / "s1").exists() and not (tmp_path / "x").exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_the_tools_hub_literal_is_the_packages():
    from deploy.hub_export import HUB_FORMAT
    from tool_runner import load_tool
    assert load_tool("export").HUB == HUB_FORMAT


def test_push_uploads_the_folder_and_names_what_failed(tmp_path, monkeypatch):
    """`push_folder` with huggingface_hub's client stood in: the upload, an unreachable Hub, a
    refusal from the Hub (no login): the last two one NetworkError that says the folder is kept."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalTokenNotFoundError

    from backbones.errors import NetworkError
    from deploy.hub_export import push_folder

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    calls = []

    class FakeApi:
        failure: BaseException | None = None

        def __init__(self, library_name):
            calls.append(("api", library_name))

        def create_repo(self, repo_id, private, exist_ok):
            if FakeApi.failure is not None:
                raise FakeApi.failure
            calls.append(("create", repo_id, private, exist_ok))
            return type("Repo", (), {"repo_id": repo_id})()

        def upload_folder(self, repo_id, folder_path, commit_message):
            calls.append(("upload", repo_id, folder_path))
            return type("Commit", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    folder = tmp_path / "out"
    folder.mkdir()
    assert push_folder(folder, "me/s0", private=True) == "https://huggingface.co/me/s0/commit/1"
    assert calls == [("api", "timm"), ("create", "me/s0", True, True), ("upload", "me/s0", str(folder))]
    FakeApi.failure = ConnectionError("name resolution failed")
    unreachable = r"no network: the Hugging Face Hub cannot be reached .*\(ConnectionError\).* is kept"
    with pytest.raises(NetworkError, match=unreachable):
        push_folder(folder, "me/s0")
    FakeApi.failure = LocalTokenNotFoundError("no token")
    with pytest.raises(NetworkError, match=r"--push me/s0 failed \(no token\); log in with `hf auth login`.* is kept"):
        push_folder(folder, "me/s0")
